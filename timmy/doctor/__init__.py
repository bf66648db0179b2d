"""`timmy.doctor()` and ``timmy doctor``: what works on this machine, and the fix for the rest,
as a `Report` of `Check` rows; nothing on the machine is changed by a check. This package is
callable (``timmy.doctor()`` runs `doctor`); the checks live in `timmy.doctor.packages`,
`timmy.doctor.database` and `timmy.doctor.system`, the table in `timmy.doctor.report`.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Iterable

from timmy.doctor import database, packages, system
from timmy.doctor.packages import CORE, EXTRAS
from timmy.doctor.report import MISSING, OK, WARN, Check, Finding, Report
from timmy.doctor.system import OLLAMA_HOST, OLLAMA_MODEL, ollama_url, probe_ollama
from timmy.errors import ConfigError

__all__ = ["CORE", "DEFAULT_DB", "EXTRAS", "MISSING", "OK", "OLLAMA_HOST", "OLLAMA_MODEL",
           "REQUIRABLE", "SERVICE_PORT", "VOILA_PORT", "WARN", "Check", "Finding", "Report",
           "doctor", "ollama_url", "probe_ollama"]

# Groups that `require` can make required (core always is).
REQUIRABLE = (*EXTRAS, "dashboard", "audio", "ports")

DEFAULT_DB = "sqlite:///data/timmy.db"   # engine.swarm's, without importing it
SERVICE_PORT = 7341             # timmy serve (timmy.service.wire.DEFAULT_PORT)
VOILA_PORT = 8866               # Voilà's default


def doctor(db: str = DEFAULT_DB, *, require: Iterable[str] = (), ollama_host: str | None = None,
           service_port: int = SERVICE_PORT, voila_port: int = VOILA_PORT,
           imports: bool = False, timeout: float = 2.0) -> Report:
    """Check this machine for timmy; returns a `Report` (a table).

    ``db``: the database to probe (a path or an SQLAlchemy URL). ``require``: optional
    groups that count as required here (`REQUIRABLE`, or "all"). ``ollama_host``: default
    ``OLLAMA_HOST``, else http://127.0.0.1:11434. ``imports``: import every module of every
    extra in a child process (seconds), instead of only finding them.

        >>> timmy.doctor()                     # a table in a notebook, plain text elsewhere
        >>> timmy.doctor(require=["voice"])    # voice problems count as missing, not warnings

    A check's status is ``ok``; ``missing`` when something *required* fails; ``warn``
    when an optional thing does. Required: Python >= 3.11, the core dependencies, and a
    database that can be opened for writing. Everything else (the extras, espeak-ng and
    speech, an audio device, an Ollama server with a model, Chromium and Playwright for
    the dashboard tests, Voilà, free ports for ``timmy serve`` and Voilà) is optional
    unless named in ``require``. ``timmy doctor`` exits with 1 when something required
    is missing. Nothing is changed: the database is probed (a write lock taken and
    rolled back; a file created and removed where a new one would go), ports are bound
    and released, speech is synthesised into a temporary directory.
    """
    required = _required_groups(require)
    findings = [
        packages.python(),
        packages.core(),
        database.check(db, timeout),
        *packages.extras(imports),
        system.espeak(),
        system.speech(),
        system.audio(),
        system.ollama(ollama_host, timeout),
        system.chromium(),
        system.playwright(),
        system.voila(),
        system.port_free(service_port, "timmy serve", f"stop what holds it, or use another: "
                         f"timmy serve --port {service_port + 1}"),
        system.port_free(voila_port, "Voilà", f"stop what holds it, or use another: "
                         f"voila --port={voila_port + 1}"),
    ]
    checks = []
    for name, group, passed, detail, fix in findings:
        needed = group == "core" or group in required
        status = OK if passed else MISSING if needed else WARN
        checks.append(Check(name, group, status, " ".join(detail.split()),
                            "" if passed else fix))
    return Report(checks)


def _required_groups(require: Iterable[str]) -> set[str]:
    names = {r.strip() for r in ([require] if isinstance(require, str) else require)}
    names.discard("")
    if "all" in names:
        return set(REQUIRABLE)
    unknown = names - set(REQUIRABLE)
    if unknown:
        raise ConfigError(f"unknown group to require: {', '.join(sorted(unknown))}",
                          hint=f"use some of: {', '.join(REQUIRABLE)}, or all")
    return names


# `timmy.doctor` is this package; calling it runs `doctor`.
class _CallableModule(types.ModuleType):
    """``timmy.doctor`` is this package *and* the function, so ``timmy.doctor()`` works
    whichever of ``import timmy.doctor`` or ``timmy.doctor`` happened first (an import would
    otherwise replace a function of that name on the package with the module)."""

    def __call__(self, *args, **kwargs) -> Report:
        return doctor(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
