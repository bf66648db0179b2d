"""Secrets and data for the owner only: no token on any command line (every local user reads
``/proc/PID/cmdline``, i.e. ``ps``), and the database, its WAL/SHM and the exports
created 0600 in directories created 0700, whatever the umask.

Real ``timmy serve`` / ``timmy dashboards`` (with Voilà and its kernels) processes, a real
swarm with runner processes on a real SQLite file, a real export.
"""

from __future__ import annotations

import os
import re
import secrets
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

import timmy
from timmy.ops.launcher import kernel_processes, read_state, state_file

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def command_lines_with(*needles: str) -> list[str]:
    """The command lines of live processes that contain any of ``needles``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if any(n.encode() in cmdline for n in needles):
            shown = cmdline.replace(b"\0", b" ").decode(errors="replace")
            found.append(f"{entry.name}: {shown}")
    return found


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def mode(path: Path) -> str:
    return oct(stat.S_IMODE(path.stat().st_mode))


@pytest.mark.timeout(300)
def test_no_token_on_any_command_line_of_the_dashboards(tmp_path):
    """`timmy dashboards`: the service, its runners, Voilà and Voilà's (pre-heated) kernels
    run, and neither Voilà's token nor the service's is in any process's command line;
    Voilà still refuses a page without its token."""
    db = tmp_path / "data" / "timmy.db"
    proc = subprocess.Popen(
        [sys.executable, "-m", "timmy", "dashboards", "--db", str(db), "--create", "--port", "0",
         "--voila-port", str(free_port()), "--notebooks", str(ROOT / "dashboards")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
        preexec_fn=lambda: os.umask(0o022))   # files 0644 unless made otherwise
    path = state_file(f"sqlite:///{db}")
    try:
        deadline = time.monotonic() + 120
        while read_state(path) is None and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        running = read_state(path)
        assert running is not None, "timmy dashboards did not start"
        voila_token = re.search(r"token=([^&\s]+)", running.desktop_url).group(1)
        service_token = Path(f"{db}.token").read_text().strip()
        while len(kernel_processes(running.voila_pid)) < 1 and time.monotonic() < deadline:
            time.sleep(0.5)   # a kernel's command line counts too
        assert len(kernel_processes(running.voila_pid)) >= 1
        assert command_lines_with(voila_token, service_token) == []
        log = db.parent / "voila.log"
        assert voila_token not in log.read_text(errors="replace")
        assert {p.name: mode(p) for p in (path, log, db, Path(f"{db}.token"))} == \
            {p.name: "0o600" for p in (path, log, db, Path(f"{db}.token"))}
        assert mode(db.parent) == "0o700"
        with urllib.request.urlopen(running.desktop_url, timeout=60) as resp:
            assert resp.status == 200
        bare = running.desktop_url.split("?", 1)[0]
        try:
            with urllib.request.build_opener(NoRedirect).open(bare, timeout=60) as resp:
                pytest.fail(f"Voilà served the page without its token ({resp.status})")
        except urllib.error.HTTPError as refused:   # 403, or 302 to the login form
            assert refused.code in (302, 401, 403)
            assert refused.code != 302 or "/login" in refused.headers["Location"]
    finally:
        subprocess.run([sys.executable, "-m", "timmy", "dashboards", "--db", str(db), "--stop"],
                       capture_output=True, timeout=90, cwd=tmp_path)
        proc.wait(60)


def serve(tmp_path: Path, args: list[str], env: dict | None = None) -> tuple[subprocess.Popen,
                                                                              str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "timmy", "serve", "--db", str(tmp_path / "s.db"), "--port", "0",
         "--no-spawn", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, **(env or {})})
    for line in proc.stdout:
        if m := re.search(r"listening on (tcp://\S+)", line):
            return proc, m.group(1)
    raise AssertionError(f"timmy serve did not start (code {proc.wait()})")


@pytest.mark.parametrize("how", ["--token-file", "TIMMY_TOKEN"])
def test_serve_and_clients_take_the_token_from_a_file_or_the_environment(tmp_path, how):
    token = secrets.token_urlsafe(24)
    file = tmp_path / "token"
    file.write_text(token + "\n")
    file.chmod(0o600)
    args, env = (["--token-file", str(file)], {}) if how == "--token-file" else \
        ([], {"TIMMY_TOKEN": token})
    proc, url = serve(tmp_path, args, env)
    try:
        assert command_lines_with(token) == []
        status = subprocess.run([sys.executable, "-m", "timmy", "status", "--url", url,
                                 "--token-file", str(file)], capture_output=True, text=True,
                                timeout=60, env={**os.environ, "COLUMNS": "200"})
        assert status.returncode == 0, status.stderr
        assert "warning" not in status.stderr
        with timmy.Swarm.attach(url, token=token) as swarm:
            assert swarm.status()["tasks"] is not None
    finally:
        proc.terminate()
        proc.wait(60)


def test_a_token_in_argv_still_works_with_a_warning(tmp_path):
    proc, url = serve(tmp_path, ["--token", "argv-token"])
    try:
        out = subprocess.run([sys.executable, "-m", "timmy", "status", "--url", url, "--token",
                              "argv-token"], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert "visible to every local user" in out.stderr
    finally:
        proc.terminate()
        proc.wait(60)


def test_database_wal_shm_and_exports_are_owner_only(tmp_path):
    """umask 022 (files 0644 by default): a swarm run with real runners on a database in a
    new directory, then an export into a new directory and into an existing 0755 one."""
    old = os.umask(0o022)
    try:
        db = tmp_path / "new" / "swarm.db"
        with timmy.Swarm(db=str(db), seed=1, task_seconds=0.0, auction_window=1.0) as swarm:
            swarm.spawn_all(["forge", "quill"])
            swarm.run(["fix the parser bug", "write the release notes"], timeout=60)
            wal, shm = Path(f"{db}-wal"), Path(f"{db}-shm")
            assert wal.exists() and shm.exists()
            assert {p.name: mode(p) for p in (db, wal, shm)} == \
                {p.name: "0o600" for p in (db, wal, shm)}
            assert mode(db.parent) == "0o700"
            out = tmp_path / "exports" / "run1"
            files = swarm.export(out)
            shared = tmp_path / "shared"
            shared.mkdir(mode=0o755)
            csvs = swarm.export(shared, "csv")
        assert mode(out) == mode(out.parent) == "0o700"
        assert {p.name: mode(p) for p in [*files.values(), *csvs.values()]} == \
            {p.name: "0o600" for p in [*files.values(), *csvs.values()]}
        assert mode(shared) == "0o755", "an existing directory is left as it was"
    finally:
        os.umask(old)
