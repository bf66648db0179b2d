"""Verification: which results earn payment. Pure rules (no I/O, no clock): parsing a
``verify`` spec, the checks of the built-in verifiers on a result's text, the registry of
user verifiers (`register_verifier`), and the wording of a verdict. Running a command or a
registered callable (with a timeout) is the engine's (`timmy.engine.verifiers`); what a
failed verification does to a task is `timmy.market.lifecycle.after_verification_failure`.

A spec is a string, stored with its task so a restarted swarm still verifies:

    nonempty              the result has a non-blank character
    regex:PATTERN         ``re.search(PATTERN, result)`` finds a match
    json-schema:PATH      the result is JSON that the JSON Schema in file PATH accepts
    command:CMD           CMD (a shell command) exits 0 with the result on its stdin
    NAME                  a callable registered with ``timmy.register_verifier(NAME, fn)``
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from timmy.errors import ConfigError, require

NONEMPTY, REGEX, JSON_SCHEMA, COMMAND, REGISTERED = (
    "nonempty", "regex", "json-schema", "command", "registered")
BUILTIN = (NONEMPTY, REGEX, JSON_SCHEMA, COMMAND)
MAX_SPEC = 4096          # characters of a spec (it is stored with its task)
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")
_HINT = ('use "nonempty", "regex:PATTERN", "json-schema:PATH", "command:CMD" or the name '
         "of a verifier registered with timmy.register_verifier(name, fn)")

#: Verifiers registered by name: ``fn(result: str)`` returns True/False, a (ok, reason)
#: pair or a `Verdict`; raising counts as failing.
_REGISTRY: dict[str, Callable[[str], Any]] = {}


@dataclass(frozen=True, slots=True)
class Spec:
    """A parsed verify spec: ``text`` as given (what is stored), its ``kind`` and ``arg``
    (the pattern, path, command, or registered name)."""

    text: str
    kind: str
    arg: str


@dataclass(frozen=True, slots=True)
class Verdict:
    """A verification's outcome; ``reason`` says why it failed ("" when it passed)."""

    ok: bool
    reason: str = ""


PASSED = Verdict(True)


def register_verifier(name: str, fn: Callable[[str], Any]) -> None:
    """Make ``fn`` a verifier named ``name``: ``post(..., verify=name)`` then pays a result
    only if ``fn(result)`` is true (or returns ``(True, ...)``). Registering a name again
    replaces it. It runs in a worker thread with the swarm's ``verify_timeout``."""
    if not isinstance(name, str) or not _NAME.match(name) or name in BUILTIN:
        raise ConfigError(f"bad verifier name {name!r}",
                          hint="a name of letters, digits, '_', '.', '-' (up to 64), "
                               f"not one of the built-ins ({', '.join(BUILTIN)})")
    if not callable(fn):
        raise ConfigError(f"verifier {name!r} is not callable ({type(fn).__name__})",
                          hint="register a function fn(result: str) -> bool")
    _REGISTRY[name] = fn


def unregister_verifier(name: str) -> None:
    """Forget a registered verifier (tasks posted with it then fail verification)."""
    _REGISTRY.pop(name, None)


def registered(name: str) -> Callable[[str], Any] | None:
    return _REGISTRY.get(name)


def registered_names() -> list[str]:
    return sorted(_REGISTRY)


def parse(spec: str) -> Spec:
    """Parse a verify spec, or raise `ConfigError` saying what is wrong (at post time, so a
    bad spec is refused before the task is stored)."""
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"verify must be a non-empty string, got {spec!r}", hint=_HINT)
    if len(spec) > MAX_SPEC or "\x00" in spec:
        raise ConfigError(f"verify spec is too long or holds a NUL ({len(spec)} characters)",
                          hint=f"keep it under {MAX_SPEC} characters; " + _HINT)
    kind, sep, arg = spec.partition(":")
    if not sep:
        if spec == NONEMPTY:
            return Spec(spec, NONEMPTY, "")
        if spec in BUILTIN:
            raise ConfigError(f"verifier {spec!r} needs an argument ({spec}:...)", hint=_HINT)
        if spec not in _REGISTRY:
            known = registered_names()
            raise ConfigError(
                f"unknown verifier {spec!r}",
                hint=_HINT + (f" (registered: {', '.join(known)})" if known else
                              " (none registered in this process)"))
        return Spec(spec, REGISTERED, spec)
    if kind not in (REGEX, JSON_SCHEMA, COMMAND):
        raise ConfigError(f"unknown verifier {kind!r} in {spec!r}", hint=_HINT)
    if not arg.strip():
        raise ConfigError(f"verifier {kind!r} needs an argument after the colon", hint=_HINT)
    if kind == REGEX:
        compiled(arg)
    return Spec(spec, kind, arg)


_PATTERNS: dict[str, re.Pattern] = {}


def compiled(pattern: str) -> re.Pattern:
    """A regex verifier's pattern, compiled once; `ConfigError` if it is not a regex."""
    got = _PATTERNS.get(pattern)
    if got is None:
        try:
            got = re.compile(pattern)
        except re.error as exc:
            raise ConfigError(f"bad regex in verify spec {pattern!r}: {exc}",
                              hint="regex:PATTERN takes a Python regular expression") from None
        if len(_PATTERNS) < 10_000:
            _PATTERNS[pattern] = got
    return got


def check_nonempty(text: str | None) -> Verdict:
    if text is not None and text.strip():
        return PASSED
    return Verdict(False, "the result is empty")


def check_regex(pattern: str, text: str | None) -> Verdict:
    if text is not None and compiled(pattern).search(text):
        return PASSED
    return Verdict(False, f"the result does not match regex {pattern!r}")


def check_schema(schema: dict, text: str | None, where: str = "the schema") -> Verdict:
    """The result parsed as JSON, checked against ``schema`` (a JSON Schema, as a dict)."""
    jsonschema = require("jsonschema", "verify")

    try:
        value = json.loads(text or "")
    except ValueError as exc:
        return Verdict(False, f"the result is not JSON ({exc})")
    try:
        jsonschema.validate(value, schema)
    except jsonschema.ValidationError as exc:
        return Verdict(False, f"the result does not fit {where}: {exc.message[:200]}")
    except jsonschema.SchemaError as exc:
        return Verdict(False, f"{where} is not a valid JSON Schema: {exc.message[:200]}")
    return PASSED


def check_pure(spec: Spec, text: str | None) -> Verdict | None:
    """The verdict of a verifier that needs nothing but the text (nonempty, regex); None
    for those that must read a file or run something (json-schema, command, registered)."""
    if spec.kind == NONEMPTY:
        return check_nonempty(text)
    if spec.kind == REGEX:
        return check_regex(spec.arg, text)
    return None


def interpret(value: Any, name: str) -> Verdict:
    """What a registered verifier returned, as a `Verdict`."""
    if isinstance(value, Verdict):
        return value
    if isinstance(value, tuple) and len(value) == 2:
        ok, why = value
        return PASSED if ok else Verdict(False, str(why) or f"verifier {name!r} said no")
    return PASSED if value else Verdict(False, f"verifier {name!r} returned {value!r}")
