"""Ollama for timmy: where the server and the model come from, probing a server, model names and
the persona's prompt, with the standard library only (the executor that sends a won task to the
server is `timmy.engine.ollama.OllamaExecutor`, which imports ``ollama``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from timmy.errors import ConfigError, ExecutorUnavailable
from timmy.market.personas import Persona

DEFAULT_HOST = "http://127.0.0.1:11434"
DEFAULT_MODEL = "llama3.2"
DEFAULT_TIMEOUT = 120.0   # seconds the server may stay silent; a first request loads the model
PROBE_TIMEOUT = 2.0
HOST_ENV = "OLLAMA_HOST"
MODEL_ENV = "TIMMY_OLLAMA_MODEL"
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,199}")
CLIP = 120   # characters of a server's error text kept in a reason


# -- configuration ---------------------------------------------------------------------


def base_url(host: str | None = None) -> str:
    """The server's URL from ``host``, else OLLAMA_HOST, else `DEFAULT_HOST`.

    Read like the ``ollama`` client and CLI read OLLAMA_HOST: "example.com", ":11435",
    "10.0.0.5:11434" and "https://example.com/ollama" all work; without a scheme the
    port defaults to 11434. A bind-all address ("0.0.0.0", what a server is often told to
    listen on) means the server on this machine: 127.0.0.1. The one reading of an Ollama
    address: the executor calls it and `timmy.doctor` probes it.
    """
    where = "ollama_host" if host else HOST_ENV
    raw = (host or os.environ.get(HOST_ENV) or "").strip()
    if not raw:
        return DEFAULT_HOST
    scheme, sep, rest = raw.partition("://")
    if not sep:
        scheme, rest, port = "http", raw, 11434
    elif scheme in ("http", "https"):
        port = 80 if scheme == "http" else 443
    else:
        raise ConfigError(f"{where} {raw!r} is not an http(s) address",
                          hint="e.g. http://127.0.0.1:11434")
    try:
        split = urlsplit(f"{scheme}://{rest}")
        port = split.port or port
    except ValueError as exc:
        raise ConfigError(f"{where} {raw!r} is not a valid address: {exc}",
                          hint="e.g. http://127.0.0.1:11434") from None
    name = split.hostname or "127.0.0.1"
    if name == "0.0.0.0":   # a bind-all address: the server is on loopback
        name = "127.0.0.1"
    if ":" in name:
        name = f"[{name}]"
    path = split.path.strip("/")
    return f"{scheme}://{name}:{port}" + (f"/{path}" if path else "")


def check_model(name: object, where: str = "model") -> str:
    """Return ``name`` if it can name an Ollama model ("llama3.2", "qwen2.5-coder:7b")."""
    if not isinstance(name, str) or not _MODEL_NAME.fullmatch(name):
        raise ConfigError(f"{where} {name!r} is not an Ollama model name",
                          hint="e.g. llama3.2 or qwen2.5-coder:7b (see `ollama list`)")
    return name


def check_models(model: object, personas: Iterable[str]) -> None:
    """Validate a swarm's ``model``: None, one name for all, or {persona id: name}."""
    if model is None or isinstance(model, str):
        if model is not None:
            check_model(model)
        return
    if not isinstance(model, Mapping):
        raise ConfigError(f"model must be a name or a {{persona: name}} mapping, got "
                          f"{type(model).__name__}",
                          hint='e.g. model="llama3.2" or model={"forge": "qwen2.5-coder"}')
    known = set(personas)
    for persona_id, name in model.items():
        if persona_id not in known:
            raise ConfigError(f"model names a persona {persona_id!r} this swarm does not have",
                              hint=f"personas: {', '.join(sorted(known))}")
        check_model(name, f"model for {persona_id}")


def model_for(persona_id: str, model: str | Mapping[str, str] | None = None) -> str:
    """The model a persona's runner asks for; the first one set wins: the persona's entry in
    ``model={"forge": "qwen2.5-coder", ...}``, else ``model="llama3.2"`` for everyone
    (``timmy run --model``), else ``TIMMY_OLLAMA_MODEL``, else `DEFAULT_MODEL`."""
    if isinstance(model, Mapping):
        model = model.get(persona_id)
    if model:
        return model
    env = os.environ.get(MODEL_ENV, "").strip()
    return check_model(env, MODEL_ENV) if env else DEFAULT_MODEL


def system_prompt(persona: Persona, on_spec: bool = True) -> str:
    """The system message a persona answers under: who it is, what it is good at, how to reply."""
    lines = [f"You are {persona.name}, the {persona.role} of timmy, a swarm of agents that "
             "win work in sealed-bid auctions."]
    if persona.description:
        lines.append(persona.description)
    if persona.capabilities:
        lines.append(f"Your strengths: {', '.join(persona.capabilities)}.")
    lines.append("You won the task in the next message. Do it now and answer with the "
                 "finished work itself: no preamble, no questions back.")
    if not on_spec:
        lines.append("The task lies outside your speciality: do what you can, and say "
                     "plainly what you are unsure of.")
    return "\n".join(lines)


def ollama_command(host: str, args: str) -> str:
    """The exact ``ollama`` command line for ``host`` (OLLAMA_HOST set when not the default)."""
    return f"ollama {args}" if host == DEFAULT_HOST else f"OLLAMA_HOST={host} ollama {args}"


def serve_hint(host: str) -> str:
    """What to run so that a server answers at ``host``."""
    name = urlsplit(host).hostname or ""
    if host == DEFAULT_HOST or name in ("127.0.0.1", "localhost", "::1"):
        return ollama_command(host, "serve")
    return f"start `ollama serve` on {name}, or set {HOST_ENV} to a server that runs"


def unreachable(host: str, why: str) -> ExecutorUnavailable:
    return ExecutorUnavailable(f"cannot reach the Ollama server at {host} ({why})",
                               hint=serve_hint(host))


def model_missing(host: str, model: str) -> ExecutorUnavailable:
    return ExecutorUnavailable(f'model "{model}" is not on the Ollama server at {host}',
                               hint=ollama_command(host, f"pull {model}"))


def client_missing() -> ExecutorUnavailable:
    return ExecutorUnavailable("the ollama Python client is not installed",
                               hint='pip install "timmy[llm]"')


def one_line(error: ExecutorUnavailable) -> str:
    """An error as a task reason: message and hint on one line."""
    return f"{error.message}; hint: {error.hint}" if error.hint else error.message


def _has(name: str, models: Iterable[str]) -> bool:
    """Whether ``name`` is among a server's models ("llama3.2" is "llama3.2:latest")."""
    models = set(models)
    return name in models or (":" not in name and f"{name}:latest" in models)


# -- probing -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Probe:
    """What an Ollama server said when asked (see `probe`).

    ``problem`` says what stands in the way of using it ("" when nothing does) and
    ``hint`` the command that fixes it.
    """

    host: str
    reachable: bool = False
    version: str | None = None
    models: tuple[str, ...] = ()
    model: str | None = None
    has_model: bool = False
    client_installed: bool = False
    problem: str = ""
    hint: str = ""

    @property
    def ok(self) -> bool:
        return not self.problem

    def missing(self, names: Iterable[str]) -> list[str]:
        """Those of ``names`` the server does not hold, in order, each once."""
        return [n for n in dict.fromkeys(names) if not _has(n, self.models)]


def _get_json(url: str, timeout: float) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        data = json.loads(response.read(1 << 20))
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    return data


def probe(host: str | None = None, model: str | None = None,
          timeout: float = PROBE_TIMEOUT) -> Probe:
    """Ask the server at ``host`` (see `base_url`) for its version and models.

    Never raises for a server that is down or odd: the answer says so, with a hint. With
    ``model``, ``has_model`` says whether the server holds it (and a missing one is the
    ``problem``).
    """
    url = base_url(host)
    installed = importlib.util.find_spec("ollama") is not None
    try:
        version = _get_json(f"{url}/api/version", timeout).get("version")
        tags = _get_json(f"{url}/api/tags", timeout).get("models") or []
        models = tuple(str(m.get("name") or m.get("model")) for m in tags
                       if isinstance(m, dict) and (m.get("name") or m.get("model")))
    except urllib.error.HTTPError as exc:
        error = unreachable(url, f"HTTP {exc.code} from {exc.url}: is it an Ollama server?")
        return Probe(url, client_installed=installed, problem=error.message, hint=error.hint)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, TimeoutError):   # socket.timeout is TimeoutError
            why = f"no answer within {timeout:g}s"
        elif isinstance(reason, ConnectionRefusedError):
            why = "connection refused"
        elif isinstance(exc, ValueError):
            why = f"its answer is not Ollama's: {exc}"
        else:
            why = str(getattr(reason, "strerror", None) or reason)
        error = unreachable(url, why)
        return Probe(url, client_installed=installed, problem=error.message, hint=error.hint)
    has_model = model is not None and _has(model, models)
    problem = hint = ""
    if model is not None and not has_model:
        error = model_missing(url, model)
        problem, hint = error.message, error.hint
    elif not installed:
        error = client_missing()
        problem, hint = error.message, error.hint
    return Probe(url, reachable=True, version=version, models=models, model=model,
                 has_model=has_model, client_installed=installed, problem=problem, hint=hint)


def choose_executor(host: str | None, models: Iterable[str],
                    timeout: float = PROBE_TIMEOUT) -> tuple[str, str]:
    """What ``executor="auto"`` means here: ("ollama" or "simulated", why), from one probe.

    Ollama when the server answers, holds every model in ``models`` and the client is
    installed; simulated otherwise, and ``why`` then carries the fix.
    """
    found = probe(host, timeout=timeout)
    models = list(dict.fromkeys(models))
    if not found.reachable:
        return "simulated", f"{found.problem}; hint: {found.hint}"   # start the server
    missing = found.missing(models)
    if missing:
        error = model_missing(found.host, missing[0])
        more = f" (nor {', '.join(missing[1:])})" if len(missing) > 1 else ""
        pulls = " && ".join(ollama_command(found.host, f"pull {m}") for m in missing)
        return "simulated", f"{error.message}{more}; hint: {pulls}"
    if not found.client_installed:
        return "simulated", one_line(client_missing())
    return "ollama", (f"the Ollama server at {found.host} (version {found.version or '?'}) "
                      f"has {', '.join(models)}")
