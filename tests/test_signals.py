"""Signals only for our own processes: `timmy dashboards --stop` (``make stop``) checks
that each pid in ``dashboards.json`` is still the process it started before signalling it.

Real processes: a ``sleep`` in its own process group stands for the unrelated program that
got a stale file's pid after a crash or a reboot.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from timmy.engine import procid
from timmy.ops.launcher import state_file

MARKER = "TIMMY_DASHBOARDS_ID"   # timmy.ops.launcher.MARKER


def stranger(env: dict | None = None) -> subprocess.Popen:
    """An unrelated process leading its own process group (as a shell job would)."""
    return subprocess.Popen(["sleep", "300"], start_new_session=True,
                            env={**os.environ, **(env or {})})


def stop(db: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "timmy", "dashboards", "--db", str(db),
                           "--stop"], capture_output=True, text=True, timeout=90,
                          cwd=db.parent)


def write_state(db: Path, **fields) -> Path:
    path = state_file(f"sqlite:///{db}")
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"service_url": "tcp://127.0.0.1:7341", "desktop_url": "http://x/desktop",
             "mobile_url": "http://x/mobile", **fields}
    path.write_text(json.dumps(state))
    return path


def survives(proc: subprocess.Popen) -> bool:
    time.sleep(0.5)
    return proc.poll() is None


@pytest.fixture
def sleeper():
    procs: list[subprocess.Popen] = []

    def make(env: dict | None = None) -> subprocess.Popen:
        procs.append(stranger(env))
        return procs[-1]

    yield make
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
        p.wait()


def test_a_stale_file_from_an_older_timmy_signals_nobody(tmp_path, sleeper):
    """The file as today's code writes it (pids only) after a crash: the pids now belong to
    someone else. --stop says it is stale, removes it, and the stranger lives."""
    victim = sleeper()
    db = tmp_path / "timmy.db"
    path = write_state(db, launcher_pid=victim.pid, service_pid=victim.pid,
                       voila_pid=victim.pid)
    out = stop(db)
    assert out.returncode == 0, out.stderr
    assert survives(victim), "--stop signalled a process it did not start"
    assert "stale" in out.stdout
    assert not path.exists()


def test_a_reused_pid_with_another_start_time_is_not_ours(tmp_path, sleeper):
    """A file with identities whose pid now names a process that started at another time
    (after a reboot: another boot id too) is stale."""
    victim = sleeper()
    me = procid.identify(victim.pid)
    db = tmp_path / "timmy.db"
    for boot, start in ((me.boot, me.start - 1), ("another-boot", me.start)):
        path = write_state(db, launcher_pid=victim.pid, service_pid=victim.pid,
                           voila_pid=victim.pid, boot_id=boot, launcher_start=start,
                           service_start=start, voila_start=start, marker="f" * 32)
        out = stop(db)
        assert out.returncode == 0, out.stderr
        assert "stale" in out.stdout
        assert survives(victim)
        assert not path.exists()


def test_what_a_killed_launcher_left_is_found_by_its_marker(tmp_path, sleeper):
    """The launcher was SIGKILLed: its children (here a process carrying its marker) are
    stopped by --stop; a process without the marker, at a pid the file names, is not."""
    orphan = sleeper({MARKER: "a" * 32})
    other = sleeper()
    db = tmp_path / "timmy.db"
    dead = subprocess.Popen(["true"])
    dead.wait()
    write_state(db, launcher_pid=dead.pid, service_pid=other.pid, voila_pid=orphan.pid,
                boot_id=procid.boot_id(), launcher_start=1, service_start=1, voila_start=1,
                marker="a" * 32)
    out = stop(db)
    assert out.returncode == 0, out.stderr
    assert "stopped the dashboards" in out.stdout
    assert orphan.wait(30) == -signal.SIGTERM
    assert survives(other)
