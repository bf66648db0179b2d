"""The Python side of the doctor's checks: the interpreter, the core dependencies and the
modules of each extra of pyproject.toml (found, or imported in a child process), with the
versions installed.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import json
import platform
import subprocess
import sys
import types

from timmy.doctor.report import Finding

CORE = ("anyio", "msgspec", "sqlalchemy", "click", "tqdm", "pyarrow", "rich")
# The modules each extra of pyproject.toml brings (tests keep the two in step).
EXTRAS = {
    "analysis": ("duckdb", "pandas", "matplotlib", "dask", "distributed", "numba", "scipy",
                 "statsmodels"),
    "voice": ("pyttsx3",),
    "llm": ("ollama",),
    "notebooks": ("ipywidgets", "jupyterlab", "voila", "ipykernel", "bqplot"),
    "postgres": ("psycopg",),
    "verify": ("jsonschema",),
    "metrics": ("prometheus_client",),
    "otel": ("opentelemetry.sdk",),
    "dev": ("pytest", "pytest_timeout", "hypothesis", "nbval", "ruff", "psutil", "pyinstrument",
            "mkdocs", "material"),
}


def python() -> Finding:
    """Python 3.11 or newer."""
    good = sys.version_info >= (3, 11)
    return ("python", "core", good, f"{platform.python_version()} ({sys.executable})",
            "install Python 3.11 or newer and create the virtualenv with it")


def core() -> Finding:
    """The core dependencies import (with their versions)."""
    found, broken = [], []
    for module in CORE:
        try:
            mod = importlib.import_module(module)
        except Exception as exc:
            broken.append(f"{module} ({type(exc).__name__}: {exc})")
            continue
        found.append(f"{module} {version_of(module, mod)}".rstrip())
    if broken:
        return ("core dependencies", "core", False, "cannot import " + "; ".join(broken),
                "pip install -e .  (reinstall timmy into this environment)")
    return ("core dependencies", "core", True, ", ".join(found), "")


def version_of(module: str, mod: types.ModuleType | None = None) -> str:
    """The installed version of ``module``'s distribution, or "" when unknown."""
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


def extras(imports: bool) -> list[Finding]:
    """One finding per extra: its modules found (or, with ``imports``, imported)."""
    every = [m for modules in EXTRAS.values() for m in modules]
    if imports:
        errors = import_in_child(every)
    else:
        errors = {m: None if importlib.util.find_spec(m) is not None else "not installed"
                  for m in every}
    findings = []
    for extra, modules in EXTRAS.items():
        bad = {m: errors[m] for m in modules if errors[m]}
        good = [f"{m} {version_of(m)}".rstrip() for m in modules if not errors[m]]
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


def import_in_child(modules: list[str], timeout: float = 120) -> dict[str, str | None]:
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

