"""The layers hold: `lint-imports` keeps its contracts, the market does no I/O, and attaching
to a service loads neither SQLAlchemy nor the engine."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MARKET = ROOT / "timmy" / "market"
# What a pure rule may not import: files, sockets, processes, the clock, the environment.
IO_MODULES = {"os", "io", "socket", "subprocess", "time", "datetime", "pathlib", "shutil",
              "tempfile", "asyncio", "anyio", "threading", "multiprocessing", "select",
              "signal", "urllib", "http", "sqlalchemy", "requests", "httpx"}
IO_NAMES = {"open", "print", "input", "exec", "eval", "__import__"}


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _loaded_after(code: str) -> set[str]:
    """The modules a fresh interpreter holds after running ``code``."""
    script = code + "\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env=_env(), cwd=ROOT, timeout=60, check=True).stdout
    return set(json.loads(out.splitlines()[-1]))


HEAVY = ("sqlalchemy", "timmy.engine.coordinator", "timmy.storage.store",
         "timmy.storage.ownership")


def test_swarm_attach_loads_no_sqlalchemy_nor_the_engine():
    loaded = _loaded_after("import timmy\ntimmy.Swarm.attach")
    assert "timmy.engine.swarm" in loaded          # the check means something
    assert not [m for m in HEAVY if m in loaded], [m for m in HEAVY if m in loaded]


def test_the_client_with_a_token_loads_no_sqlalchemy_nor_the_engine():
    loaded = _loaded_after("import timmy\n"
                           "timmy.Swarm.attach('tcp://127.0.0.1:9', token='t', "
                           "request_timeout=1)")
    assert "timmy.service.client" in loaded
    assert not [m for m in (*HEAVY, "timmy.service.server") if m in loaded]


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
              and node.func.id in IO_NAMES):
            found.add(f"{node.func.id}()")
    return found


def test_the_market_does_no_io():
    modules = sorted(MARKET.glob("*.py"))
    assert len(modules) >= 4
    bad = {p.name: sorted(_imports(p) & (IO_MODULES | {f"{n}()" for n in IO_NAMES}))
           for p in modules}
    assert not {name: found for name, found in bad.items() if found}


def test_the_io_check_can_fail(tmp_path):
    sample = tmp_path / "impure.py"
    sample.write_text("import time\nfrom os import path\nopen('x')\n", encoding="utf-8")
    assert {"time", "os", "open()"} <= _imports(sample)


def test_lint_imports_keeps_every_contract():
    tool = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    if tool is None:
        pytest.skip("import-linter is not installed (pip install -e '.[dev]')")
    done = subprocess.run([tool, "--no-cache"], capture_output=True, text=True, cwd=ROOT,
                          env=_env(), timeout=120)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert ", 0 broken." in done.stdout
