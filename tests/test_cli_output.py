"""What the ``timmy`` command prints cannot be turned against the reader: a description, a
result, a persona's text or an error message with terminal escapes in it (OSC 52 writes
the clipboard, OSC 0 the window title, CSI 8m hides text, a carriage return overwrites a
line, a bidi override reorders it) is printed with those characters shown as escapes, not
acted on. Real subprocesses, a real swarm and service; the output is what a terminal gets."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import duckdb
import pytest
from test_cli import timmy
from test_service import ServiceProcess, wait_until

from timmy.textsafe import clean

OSC52 = "\x1b]52;c;ZWNobyBwd25lZA==\x07"        # put "echo pwned" on the clipboard
OSC0 = "\x1b]0;totally safe\x07"                 # retitle the window
HIDE = "\x1b[8m"                                  # hide what follows
C1_CSI = "\x9b31m"                                # CSI as one C1 character
EVIL = f"fix the api{OSC52}{OSC0} bug{HIDE}hidden\rOVERWRITTEN \u202egnp.exe{C1_CSI}"
RAW = ("\x1b", "\x07", "\x9b", "\u202e")          # none of these may reach the terminal


def assert_inert(output: str) -> None:
    for ch in RAW:
        assert ch not in output, f"{ch!r} printed raw: {output!r}"


def test_clean_shows_controls_as_escapes_and_keeps_ordinary_text():
    assert clean(EVIL) == ("fix the api\\x1b]52;c;ZWNobyBwd25lZA==\\a\\x1b]0;totally safe\\a"
                           " bug\\x1b[8mhidden\\rOVERWRITTEN \\u202egnp.exe\\x9b31m")
    assert clean("naïve café — 日本語 🐝\ttab\nline") == "naïve café — 日本語 🐝\ttab\nline"
    assert clean("a\nb\tc", newlines=False) == "a\\nb\\tc"
    assert clean(42) == "42"


def test_run_prints_descriptions_and_results_inert(tmp_path):
    (tmp_path / "tasks.txt").write_text(f"{EVIL}\nwrite the docs [link=https://evil]x[/link]\n")
    proc = timmy("run", "tasks.txt", "--db", "t.db", "--executor", "echo", "--task-seconds",
                 "0", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert_inert(proc.stdout)
    assert_inert(proc.stderr)
    assert "\r" not in proc.stdout
    assert "\\x1b]52;c;" in proc.stdout and "\\x1b[8m" in proc.stdout
    assert "[link=https://evil]x[/link]" in proc.stdout     # shown as written, not markup


def test_an_error_naming_user_input_is_printed_inert(tmp_path):
    proc = timmy("run", f"tasks{OSC0}.txt", cwd=tmp_path)
    assert proc.returncode == 2
    assert_inert(proc.stderr)
    assert "tasks\\x1b]0;totally safe\\a.txt" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("hint: ")


def test_personas_from_a_file_are_printed_inert(tmp_path):
    (tmp_path / "p.json").write_text(json.dumps([{
        "id": "evil", "role": f"role{OSC52}{HIDE}", "bid_base": 10, "bid_jitter": 2,
        "preferred_keywords": ["api"]}]))
    proc = timmy("personas", "--file", "p.json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert_inert(proc.stdout)
    assert "role\\x1b]52;c;" in proc.stdout


@pytest.fixture
def service(tmp_path):
    svc = ServiceProcess(tmp_path / "swarm.db", 0, "--executor", "echo")
    yield svc
    svc.stop()


def test_post_and_status_print_a_service_s_strings_inert(service):
    env_args = ("--url", service.url, "--token", service.token)
    proc = timmy("post", EVIL, "--wait", *env_args, cwd=service.db.parent)
    assert proc.returncode == 0, proc.stderr
    assert_inert(proc.stdout)
    assert "\r" not in proc.stdout
    assert "\\x1b]0;totally safe\\a" in proc.stdout          # the echoed result
    proc = timmy("status", *env_args, cwd=service.db.parent)
    assert proc.returncode == 0, proc.stderr
    assert_inert(proc.stdout)


def test_the_report_prints_stored_strings_inert(tmp_path):
    """An export from someone else: its agents' personas carry escapes."""
    (tmp_path / "tasks.txt").write_text("fix the api bug\nwrite the docs\n")
    proc = timmy("run", "tasks.txt", "--db", "r.db", "--task-seconds", "0", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert timmy("export", "r.db", "out", cwd=tmp_path).returncode == 0
    agents = (tmp_path / "out" / "agents.parquet").as_posix()
    evil = OSC0.replace("'", "''")
    with duckdb.connect() as con:
        con.execute(f"CREATE TABLE a AS SELECT * REPLACE (persona || '{evil}' AS persona) "
                    f"FROM read_parquet('{agents}')")
        con.execute(f"COPY a TO '{agents}' (FORMAT parquet)")
    proc = timmy("report", "out", "--all", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert_inert(proc.stdout)
    assert "forge\\x1b]0;totally safe\\a" in proc.stdout


def test_a_remote_runner_prints_what_a_service_says_inert(tmp_path):
    """`timmy runner --connect` to a service that refuses it with escapes in the message."""
    import socket
    import subprocess
    import threading

    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def hostile() -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(json.dumps({"id": 1, "ok": False, "error": {
                "type": "PersonaError", "message": f"no such persona{OSC52}",
                "hint": f"ask{HIDE}"}}).encode() + b"\n")

    thread = threading.Thread(target=hostile, daemon=True)
    thread.start()
    proc = subprocess.run([sys.executable, "-m", "timmy", "runner", "--connect",
                           f"tcp://127.0.0.1:{port}", "--token", "t", "--persona", "forge"],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    server.close()
    assert "no such persona" in proc.stdout + proc.stderr
    assert_inert(proc.stdout)
    assert_inert(proc.stderr)


def test_clean_is_what_the_cli_modules_print_through():
    """Every module of the command line imports the one cleaner."""
    root = Path(__file__).resolve().parent.parent / "timmy"
    for name in ("cli/app.py", "cli/service.py", "cli/sim.py", "cli/doctor.py",
                 "service/remote.py"):
        assert "textsafe" in (root / name).read_text(), name


def test_the_service_logs_what_a_runner_sends_inert(tmp_path):
    """A remote runner's bad line is logged by `timmy serve` (stderr) with its escapes shown."""
    import signal
    import socket

    svc = ServiceProcess(tmp_path / "swarm.db", 0, "--no-spawn")
    try:
        sock = socket.create_connection(("127.0.0.1", svc.port), timeout=10)
        sock.sendall(json.dumps({"id": 1, "token": svc.token, "op": "runner", "args": {
            "persona": "forge", "agent_id": "forge-x"}}).encode() + b"\n")
        assert json.loads(sock.makefile("rb").readline())["ok"]
        for msg in ({"type": "hello", "agent_id": "forge-x", "persona": "forge", "pid": 1},
                    {"type": OSC0}):
            sock.sendall(json.dumps(msg).encode() + b"\n")
        with svc.attach() as swarm:
            wait_until(lambda: swarm.status()["protocol_errors"] >= 1)
        sock.close()
    finally:
        svc.proc.send_signal(signal.SIGTERM)
        _, err = svc.proc.communicate(timeout=30)
    assert "sent a bad line" in err
    assert_inert(err)
    assert "\\x1b]0;totally safe\\a" in err
