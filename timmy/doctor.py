"""`timmy.doctor()` and ``timmy doctor``: what works on this machine, and the fix for the rest,
as a `Report` of `Check` rows; nothing on the machine is changed by a check.
"""

from __future__ import annotations

import ctypes.util
import functools
import html
import importlib
import importlib.util
import json
import os
import platform
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import types
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from timmy.errors import ConfigError

OK, WARN, MISSING = "ok", "warn", "missing"

CORE = ("anyio", "msgspec", "sqlalchemy", "click", "tqdm", "pyarrow", "rich")
# The modules each extra of pyproject.toml brings (tests keep the two in step).
EXTRAS = {
    "analysis": ("duckdb", "pandas", "matplotlib", "dask", "distributed", "numba"),
    "voice": ("pyttsx3",),
    "llm": ("ollama",),
    "notebooks": ("ipywidgets", "jupyterlab", "voila", "ipykernel"),
    "postgres": ("psycopg",),
    "dev": ("pytest", "pytest_timeout", "hypothesis", "nbval", "ruff", "psutil", "pyinstrument",
            "mkdocs", "material"),
}
# Groups that `require` can make required (core always is).
REQUIRABLE = (*EXTRAS, "dashboard", "audio", "ports")

DEFAULT_DB = "sqlite:///data/timmy.db"   # engine.swarm's, without importing it
OLLAMA_HOST = "http://127.0.0.1:11434"
OLLAMA_MODEL = "llama3.2"       # what the fix suggests pulling
SERVICE_PORT = 7341             # timmy serve (timmy.service.wire.DEFAULT_PORT)
VOILA_PORT = 8866               # Voilà's default
CHROMIUM = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


@dataclass(frozen=True)
class Check:
    """One row of the report. ``group`` is "core" or a `REQUIRABLE` name."""

    name: str
    group: str
    status: str
    detail: str
    fix: str = ""


class Report:
    """The checks, as a table: plain text in a terminal, HTML in a notebook.

    ``report.ok`` is False when something required is missing; ``report.exit_code`` is
    what ``timmy doctor`` exits with (0 or 1); iterate it for the `Check` rows.
    """

    COLUMNS = ("check", "status", "detail", "fix")

    def __init__(self, checks: Iterable[Check]) -> None:
        self.checks = list(checks)

    def __iter__(self) -> Iterator[Check]:
        return iter(self.checks)

    def __len__(self) -> int:
        return len(self.checks)

    def __getitem__(self, name: str) -> Check:
        """The check called ``name`` (``report["database"]``)."""
        for check in self.checks:
            if check.name == name:
                return check
        raise KeyError(name)

    @property
    def missing(self) -> list[Check]:
        return [c for c in self.checks if c.status == MISSING]

    @property
    def warnings(self) -> list[Check]:
        return [c for c in self.checks if c.status == WARN]

    @property
    def ok(self) -> bool:
        return not self.missing

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 1

    def summary(self) -> str:
        if self.missing:
            names = ", ".join(c.name for c in self.missing)
            return (f"missing (required): {names}; apply the fixes above, then run "
                    "timmy doctor again")
        if self.warnings:
            return (f"timmy can run; {len(self.warnings)} optional "
                    f"{'thing needs' if len(self.warnings) == 1 else 'things need'} "
                    "the fix shown to work")
        return "everything works"

    def rows(self) -> list[tuple[str, str, str, str]]:
        return [(c.name, c.status.upper(), c.detail, c.fix) for c in self.checks]

    def to_json(self) -> str:
        return json.dumps({"ok": self.ok, "checks": [asdict(c) for c in self.checks]}, indent=2)

    def __str__(self) -> str:
        rows = [tuple(h.upper() for h in self.COLUMNS), *self.rows()]
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(r[:3], widths, strict=True))
                 + "  " + r[3] for r in rows]
        return "\n".join(line.rstrip() for line in lines) + "\n" + self.summary()

    def __repr__(self) -> str:
        return str(self)

    def _repr_html_(self) -> str:
        colours = {OK: "#1a7f37", WARN: "#9a6700", MISSING: "#cf222e"}
        head = "".join(f"<th style='text-align:left'>{h}</th>" for h in self.COLUMNS)
        body = "".join(
            f"<tr><td>{html.escape(c.name)}</td>"
            f"<td style='color:{colours[c.status]};font-weight:bold'>{c.status.upper()}</td>"
            f"<td>{html.escape(c.detail)}</td>"
            f"<td>{f'<code>{html.escape(c.fix)}</code>' if c.fix else ''}</td></tr>"
            for c in self.checks)
        return (f"<table class='timmy-doctor'><thead><tr>{head}</tr></thead>"
                f"<tbody>{body}</tbody></table><p>{html.escape(self.summary())}</p>")


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
        _python(),
        _core(),
        _database(db, timeout),
        *_extras(imports),
        _espeak(),
        _speech(),
        _audio(),
        _ollama(ollama_host, timeout),
        _chromium(),
        _playwright(),
        _voila(),
        _port(service_port, "timmy serve", f"stop what holds it, or use another: "
              f"timmy serve --port {service_port + 1}"),
        _port(voila_port, "Voilà", f"stop what holds it, or use another: "
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


# Each check returns (name, group, passed, detail, fix).
Finding = tuple[str, str, bool, str, str]


def _python() -> Finding:
    good = sys.version_info >= (3, 11)
    return ("python", "core", good, f"{platform.python_version()} ({sys.executable})",
            "install Python 3.11 or newer and create the virtualenv with it")


def _core() -> Finding:
    found, broken = [], []
    for module in CORE:
        try:
            mod = importlib.import_module(module)
        except Exception as exc:
            broken.append(f"{module} ({type(exc).__name__}: {exc})")
            continue
        found.append(f"{module} {_version(module, mod)}".rstrip())
    if broken:
        return ("core dependencies", "core", False, "cannot import " + "; ".join(broken),
                "pip install -e .  (reinstall timmy into this environment)")
    return ("core dependencies", "core", True, ", ".join(found), "")


def _version(module: str, mod: types.ModuleType | None = None) -> str:
    import importlib.metadata

    for dist in _distributions().get(module, [module]):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    version = getattr(mod, "__version__", None)   # a module not installed as a distribution
    return version if isinstance(version, str) else ""


@functools.cache
def _distributions() -> dict[str, list[str]]:
    """Top-level module -> the distributions that provide it (scanned once)."""
    import importlib.metadata

    return importlib.metadata.packages_distributions()


def _extras(imports: bool) -> list[Finding]:
    every = [m for modules in EXTRAS.values() for m in modules]
    if imports:
        errors = _import_in_child(every)
    else:
        errors = {m: None if importlib.util.find_spec(m) is not None else "not installed"
                  for m in every}
    findings = []
    for extra, modules in EXTRAS.items():
        bad = {m: errors[m] for m in modules if errors[m]}
        good = [f"{m} {_version(m)}".rstrip() for m in modules if not errors[m]]
        if bad:
            detail = "; ".join(f"{m}: {why}" for m, why in bad.items())
            if good:
                detail += "; found " + ", ".join(good)
        else:
            detail = ", ".join(good) + (" (imported)" if imports else "")
        findings.append((f"extra: {extra}", extra, not bad, detail,
                         f'pip install "timmy[{extra}]"'))
    return findings


_IMPORTER = """\
import importlib, json, sys
out = {}
for module in sys.argv[1:]:
    try:
        importlib.import_module(module)
        out[module] = None
    except BaseException as exc:
        out[module] = f"{type(exc).__name__}: {exc}"
print(json.dumps(out))
"""


def _import_in_child(modules: list[str], timeout: float = 120) -> dict[str, str | None]:
    """Import ``modules`` in a child Python (a broken one cannot hurt this process):
    module -> None if it imported, else why not."""
    try:
        proc = subprocess.run([sys.executable, "-c", _IMPORTER, *modules], capture_output=True,
                              text=True, timeout=timeout)
    except (subprocess.TimeoutExpired, OSError) as exc:
        return dict.fromkeys(modules, f"the import check did not finish ({type(exc).__name__})")
    try:
        answer = json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return dict.fromkeys(modules, f"importing crashed Python (exit code {proc.returncode})")
    return {m: None if e is None else " ".join(e.split())[:200] for m, e in answer.items()}


# -- the database -----------------------------------------------------------------------


def _database(db: str, timeout: float) -> Finding:
    try:
        import sqlalchemy as sa
    except ImportError as exc:
        return ("database", "core", False, f"cannot check it: sqlalchemy does not import ({exc})",
                "pip install -e .  (reinstall timmy into this environment)")
    from timmy.storage.address import DatabaseAddress

    fix = "pass a database you can write to: timmy doctor --db PATH (or db=... in Python)"
    try:
        address = DatabaseAddress.parse(db)
    except ConfigError as exc:
        return ("database", "core", False, f"{db!r} is not a database URL: {exc.message}",
                "pass a file path (data/timmy.db) or an SQLAlchemy URL")
    if address.is_sqlite:
        return _sqlite(address.database or "", fix)
    return _server_database(sa, address, timeout)


def _sqlite(database: str, fix: str) -> Finding:
    if database in ("", ":memory:") or database.startswith("file:"):
        return ("database", "core", True, f"SQLite {database or 'in memory'}: nothing to probe",
                "")
    path = Path(database).expanduser().absolute()
    if path.exists():
        if not path.is_file():
            return ("database", "core", False, f"{path} is not a file", fix)
        problem = _probe_dir(path.parent) or _probe_sqlite(path)
        if problem:
            return ("database", "core", False, f"{path}: {problem}", fix)
        return ("database", "core", True, f"{path} (writable; {_task_count(path)})", "")
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        return ("database", "core", False,
                f"{path} cannot be created: {parent} is a file, not a directory", fix)
    problem = _probe_dir(parent)
    if problem:
        return ("database", "core", False, f"{path} cannot be created: {problem}", fix)
    return ("database", "core", True, f"{path} (not created yet; {parent} is writable)", "")


def _probe_dir(directory: Path) -> str | None:
    """None if a file can be created in ``directory`` (and was removed), else why not.

    A real attempt, not os.access(): root passes os.access() on a read-only filesystem.
    """
    try:
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".timmy-doctor-"):
            pass
    except OSError as exc:
        return f"cannot write in {directory} ({exc.strerror or exc})"
    return None


def _probe_sqlite(path: Path) -> str | None:
    """Take SQLite's write lock and roll back: the file is writable and not locked."""
    try:
        conn = sqlite3.connect(f"{path.as_uri()}?mode=rw", uri=True, timeout=0.5)
    except sqlite3.Error as exc:
        return f"cannot open it for writing ({exc})"
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.rollback()
    except sqlite3.Error as exc:
        return f"cannot write to it ({exc})"
    finally:
        conn.close()
    return None


def _task_count(path: Path) -> str:
    try:
        with sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True) as conn:
            # tasks are never deleted: the newest rowid (task_id) is their number, read off
            # the table's b-tree in one step, where count(*) reads every row
            n = conn.execute("select coalesce(max(rowid), 0) from tasks").fetchone()[0]
        return f"{n:,} tasks"
    except sqlite3.Error:
        return "no timmy tables yet"


def _server_database(sa, address, timeout: float) -> Finding:
    shown = address.display
    connect_args = {"connect_timeout": max(1, round(timeout))} \
        if address.backend == "postgresql" else {}
    try:
        engine = sa.create_engine(address.url, connect_args=connect_args)
    except (ImportError, sa.exc.NoSuchModuleError) as exc:
        return ("database", "core", False, f"{shown}: no driver ({exc})",
                'pip install "timmy[postgres]"')
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("select 1"))
    except Exception as exc:
        return ("database", "core", False, f"{shown}: cannot connect ({_first_line(exc)})",
                "start the database server, or fix the URL / credentials in --db")
    finally:
        engine.dispose()
    return ("database", "core", True,
            f"{shown} (connected; write access is not probed on a server database)", "")


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]


# -- speech -----------------------------------------------------------------------------


def _espeak() -> Finding:
    if not sys.platform.startswith("linux"):
        return ("espeak-ng", "voice", True, "not needed here: pyttsx3 uses the system voice", "")
    library = ctypes.util.find_library("espeak-ng")
    binary = shutil.which("espeak-ng")
    version = ""
    if binary:
        try:
            out = subprocess.run([binary, "--version"], capture_output=True, text=True,
                                 timeout=10).stdout
            version = " ".join(out.split()[3:4])   # "eSpeak NG text-to-speech: 1.51 ..."
        except (OSError, subprocess.TimeoutExpired):
            pass
    if binary:
        command = f"espeak-ng {version} ({binary})" if version else f"espeak-ng ({binary})"
    else:
        command = "no espeak-ng command on PATH"
    if library is None:
        return ("espeak-ng", "voice", False,
                f"libespeak-ng not found (pyttsx3 loads it); {command}",
                "apt-get install espeak-ng")
    return ("espeak-ng", "voice", True, f"lib{library.removeprefix('lib')}; {command}", "")


def _speech() -> Finding:
    from timmy import voice

    try:
        return ("speech synthesis", "voice", True, voice.check(), "")
    except voice.VoiceUnavailable as exc:
        return ("speech synthesis", "voice", False, exc.message, exc.hint)


def _audio() -> Finding:
    from timmy import voice

    try:
        return ("audio output", "audio", True, f"{voice.audio_output()} plays sound", "")
    except voice.VoiceUnavailable as exc:
        return ("audio output", "audio", False,
                f"{exc.message}; speech can still be saved as WAV files",
                "apt-get install alsa-utils, on a machine with a sound card "
                "(or PulseAudio/PipeWire)")


# -- Ollama -----------------------------------------------------------------------------


def _ollama(host: str | None, timeout: float) -> Finding:
    try:
        base = ollama_url(host)
    except ConfigError as exc:
        return ("ollama", "llm", False, exc.message, exc.hint)
    status = probe_ollama(base, timeout)
    if status["error"]:
        return ("ollama", "llm", False, f"no Ollama server at {base}: {status['error']}",
                f"start it: ollama serve (https://ollama.com/download); "
                f"or set OLLAMA_HOST; then ollama pull {OLLAMA_MODEL}")
    models = status["models"]
    if not models:
        return ("ollama", "llm", False, f"Ollama {status['version']} at {base}, but no models",
                f"ollama pull {OLLAMA_MODEL}")
    return ("ollama", "llm", True,
            f"Ollama {status['version']} at {base}; models: {', '.join(models)}", "")


def ollama_url(host: str | None = None) -> str:
    """The Ollama server's URL for ``host``, else OLLAMA_HOST, else the local default: the
    executor's own reading (`timmy.llm.base_url`), so the doctor probes where it will call.
    A bad address is a `ConfigError`."""
    from timmy.llm import base_url

    return base_url(host)


def probe_ollama(base: str, timeout: float = 2.0) -> dict:
    """GET /api/version and /api/tags: ``{"version", "models", "error"}`` (error None if up).

    The same probe ``executor="auto"`` uses (`timmy.llm.probe`, standard library only).
    """
    from timmy.llm import probe

    found = probe(base, timeout=timeout)
    if not found.reachable:
        return {"version": None, "models": [], "error": found.problem}
    return {"version": found.version or "?", "models": list(found.models), "error": None}


# -- dashboards, notebooks, ports -------------------------------------------------------


def _chromium() -> Finding:
    candidates = [Path("/usr/bin/chromium")] + [Path(p) for p in map(shutil.which, CHROMIUM)
                                                 if p]
    binary = next((p for p in candidates if p.is_file() and os.access(p, os.X_OK)), None)
    fix = "apt-get install chromium (dashboard screenshots and tests)"
    if binary is None:
        return ("chromium", "dashboard", False, "no chromium on PATH or at /usr/bin/chromium",
                fix)
    try:
        out = subprocess.run([str(binary), "--version"], capture_output=True, text=True,
                             timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return ("chromium", "dashboard", False, f"{binary} does not start ({exc})", fix)
    if out.returncode != 0:
        said = (out.stderr.strip().splitlines() or [f"exit code {out.returncode}"])[-1]
        return ("chromium", "dashboard", False, f"{binary} --version failed: {said}", fix)
    return ("chromium", "dashboard", True, f"{out.stdout.strip()} ({binary})", "")


def _playwright() -> Finding:
    if importlib.util.find_spec("playwright") is None:
        return ("playwright", "dashboard", False, "the playwright package is not installed",
                "pip install playwright (the browser is the system chromium)")
    return ("playwright", "dashboard", True, f"playwright {_version('playwright')}", "")


def _voila() -> Finding:
    fix = 'pip install "timmy[notebooks]"'
    if importlib.util.find_spec("voila") is None:
        return ("voilà", "notebooks", False, "voila is not installed", fix)
    command = shutil.which("voila") or shutil.which("voila", path=str(Path(sys.executable).parent))
    if command is None:
        return ("voilà", "notebooks", False,
                f"voila {_version('voila')} is installed but there is no voila command on PATH",
                f"run it as {sys.executable} -m voila, or put {Path(sys.executable).parent} "
                "on PATH")
    return ("voilà", "notebooks", True, f"voila {_version('voila')} ({command})", "")


def _port(port: int, who: str, fix: str) -> Finding:
    name = f"port {port} ({who})"
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As asyncio's servers do: a port in TIME_WAIT is free to them, so it is free here.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            return (name, "ports", False, f"127.0.0.1:{port} is in use ({exc.strerror})", fix)
    return (name, "ports", True, f"127.0.0.1:{port} is free", "")


# `timmy.doctor` is this module; calling it runs `doctor`.
class _CallableModule(types.ModuleType):
    """``timmy.doctor`` is this module *and* the function, so ``timmy.doctor()`` works
    whichever of ``import timmy.doctor`` or ``timmy.doctor`` happened first (an import would
    otherwise replace a function of that name on the package with the module)."""

    def __call__(self, *args, **kwargs) -> Report:
        return doctor(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
