"""Running verifiers: the ones that read a file (json-schema), run a command or call a
registered function, each with a timeout, off the coordinator's event loop (`verify`), or
blocking for the simulator (`verify_sync`). The rules themselves (parsing a spec, the
checks on a text) are `timmy.market.verification`'s. A verifier that raises, hangs past
its timeout or cannot run is a failed verification with a reason, never an error.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
from pathlib import Path

import anyio

from timmy.errors import ConfigError, TimmyError, require
from timmy.market.verification import (
    COMMAND,
    JSON_SCHEMA,
    REGISTERED,
    Spec,
    Verdict,
    check_pure,
    check_schema,
    interpret,
    parse,
    registered,
)

DEFAULT_TIMEOUT = 30.0   # seconds a verifier may take (``verify_timeout``)


def check_spec(spec: str | None) -> str | None:
    """At post time: ``spec`` parsed, and a json-schema file read and checked, so a bad
    spec is refused (`ConfigError`) before its task is stored."""
    if spec is None:
        return None
    parsed = parse(spec)
    if parsed.kind == JSON_SCHEMA:
        load_schema(parsed.arg)
    return spec


def load_schema(path: str) -> dict:
    """A JSON Schema file, read and checked; `ConfigError` naming what is wrong."""
    jsonschema = require("jsonschema", "verify")

    try:
        schema = json.loads(Path(path).expanduser().read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read JSON Schema {path!r}: {exc.strerror or exc}",
                          hint="json-schema:PATH names a JSON Schema file the swarm can read "
                               "(a relative path is from the swarm's working directory)") from None
    except ValueError as exc:
        raise ConfigError(f"JSON Schema {path!r} is not JSON: {exc}",
                          hint="fix the schema file") from None
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise ConfigError(f"{path!r} is not a valid JSON Schema: {exc.message[:200]}",
                          hint="fix the schema file") from None
    return schema


def _short(text: bytes) -> str:
    return " ".join(text.decode("utf-8", "replace").split())[:200]


def run_command(cmd: str, text: str, timeout: float) -> Verdict:
    """Run shell command ``cmd`` with ``text`` on its stdin: passes if it exits 0. Past
    ``timeout`` seconds its process group is killed and it fails."""
    try:
        proc = subprocess.Popen(cmd, shell=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True)
    except OSError as exc:
        return Verdict(False, f"command {cmd!r} could not start: {exc}")
    try:
        _out, err = proc.communicate(text.encode("utf-8", "replace"), timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return Verdict(False, f"command {cmd!r} ran past its {timeout:g}s timeout")
    if proc.returncode == 0:
        return Verdict(True)
    said = _short(err)
    return Verdict(False, f"command {cmd!r} exited with code {proc.returncode}"
                          + (f": {said}" if said else ""))


def _call(spec: Spec, text: str) -> Verdict:
    """A registered verifier or a json-schema check, blocking; raising is failing."""
    if spec.kind == JSON_SCHEMA:
        try:
            schema = load_schema(spec.arg)
        except TimmyError as exc:   # unreadable now, or jsonschema not installed
            return Verdict(False, exc.message)
        return check_schema(schema, text, f"the schema in {spec.arg}")
    fn = registered(spec.arg)
    if fn is None:
        return Verdict(False, f"verifier {spec.arg!r} is not registered in this process")
    try:
        return interpret(fn(text), spec.arg)
    except Exception as exc:   # a verifier that raises fails the result, not the swarm
        return Verdict(False, f"verifier {spec.arg!r} raised {type(exc).__name__}: "
                              f"{str(exc)[:200]}")


def _parsed(spec: str) -> Spec | Verdict:
    try:
        return parse(spec)
    except ConfigError as exc:   # e.g. a registered name this process no longer knows
        return Verdict(False, exc.message)


def _hung(spec: Spec, timeout: float) -> Verdict:
    return Verdict(False, f"verifier {spec.arg!r} gave no answer within {timeout:g}s")


def _first_look(spec: str, text: str | None) -> tuple[Spec | Verdict, str]:
    """The parsed spec and the text to check, or already the verdict: a spec that does not
    parse fails, and nonempty/regex need nothing but the text."""
    text = text or ""
    parsed = _parsed(spec)
    if isinstance(parsed, Verdict):
        return parsed, text
    now = check_pure(parsed, text)
    return (parsed if now is None else now), text


def check_now(spec: str, text: str | None) -> Verdict | None:
    """The verdict if it needs nothing but the text (nonempty, regex), else None."""
    parsed = _parsed(spec)
    if isinstance(parsed, Verdict):
        return parsed
    return check_pure(parsed, text)


async def verify(spec: str, text: str | None, timeout: float = DEFAULT_TIMEOUT) -> Verdict:
    """Verify ``text`` against ``spec`` without blocking the event loop: commands and
    callables run in a worker thread; one that hangs past ``timeout`` is abandoned (a
    command's process group is killed) and fails."""
    parsed, text = _first_look(spec, text)
    if isinstance(parsed, Verdict):
        return parsed
    if parsed.kind == COMMAND:
        return await anyio.to_thread.run_sync(run_command, parsed.arg, text, timeout)
    with anyio.move_on_after(timeout):
        return await anyio.to_thread.run_sync(_call, parsed, text, abandon_on_cancel=True)
    return _hung(parsed, timeout)


def verify_sync(spec: str, text: str | None, timeout: float = DEFAULT_TIMEOUT) -> Verdict:
    """`verify`, blocking (the simulator's): the same verdicts."""
    parsed, text = _first_look(spec, text)
    if isinstance(parsed, Verdict):
        return parsed
    if parsed.kind == COMMAND:
        return run_command(parsed.arg, text, timeout)
    if parsed.kind == REGISTERED or parsed.kind == JSON_SCHEMA:
        out: list[Verdict] = []
        worker = threading.Thread(target=lambda: out.append(_call(parsed, text)), daemon=True)
        worker.start()
        worker.join(timeout)
        return out[0] if out else _hung(parsed, timeout)
    return Verdict(False, f"unknown verifier kind {parsed.kind!r}")
