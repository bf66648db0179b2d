"""``timmy doctor`` and ``timmy.doctor()``, run for real.

The command runs as a child process where the environment matters (PATH,
OLLAMA_HOST, a dependency blocked from importing) and through click's
CliRunner elsewhere. Ollama is a tiny HTTP server started here; a taken port
is a socket this test listens on; an unwritable database sits under a regular
file (unwritable even for root) or behind another writer's lock.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import sqlite3
import subprocess
import sys
import textwrap
import threading
import tomllib
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest
from click.testing import CliRunner

import timmy
from timmy.cli.app import cli
from timmy.doctor import EXTRAS, MISSING, OK, WARN, Report, ollama_url, probe_ollama
from timmy.doctor.packages import import_in_child

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ports() -> dict:
    """Ports no one listens on, so the port checks do not depend on this shared machine."""
    return {"service_port": free_port(), "voila_port": free_port()}


def port_args(ports: dict) -> list[str]:
    return ["--service-port", str(ports["service_port"]), "--voila-port", str(ports["voila_port"])]


def timmy_doctor(*args: str, prelude: str = "", env: dict | None = None,
                 cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """``timmy doctor ARGS`` in a child Python (``prelude`` runs first, e.g. an import block).

    400 columns wide, so each row of the table stays on one line.
    """
    code = prelude + "import sys\nfrom timmy.cli.app import main\nsys.argv = ['timmy', 'doctor', " \
        + ", ".join(repr(a) for a in args) + "]\nmain()\n"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=90, cwd=cwd,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "400",
                               **(env or {})})


def checks_of(stdout: str) -> dict[str, dict]:
    return {c["name"]: c for c in json.loads(stdout)["checks"]}


# -- a tiny Ollama ----------------------------------------------------------------------


class FakeOllama(BaseHTTPRequestHandler):
    models: ClassVar[list[dict]] = []
    prefix: ClassVar[str] = ""   # served under this path, as behind a reverse proxy

    def do_GET(self) -> None:
        path = self.path[len(self.prefix):] if self.path.startswith(self.prefix) else ""
        body = {"/api/version": {"version": "0.5.7"},
                "/api/tags": {"models": self.models}}.get(path)
        if body is None:
            self.send_error(404)
            return
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def ollama() -> Iterator[Callable[..., int]]:
    """``ollama(models, prefix="")`` starts a server answering /api/version and /api/tags
    (under ``prefix``); its port."""
    servers = []

    def start(models: list[str], prefix: str = "") -> int:
        handler = type("Handler", (FakeOllama,), {"models": [{"name": m} for m in models],
                                                  "prefix": prefix})
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(server)
        return server.server_address[1]

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


# -- the command ------------------------------------------------------------------------


def test_doctor_prints_every_check_with_its_status(tmp_path, ports):
    result = CliRunner().invoke(cli, ["doctor", "--db", str(tmp_path / "t.db"),
                                      "--ollama-host", f"127.0.0.1:{free_port()}",
                                      *port_args(ports)])
    assert result.exit_code == 0, result.output
    for name in ("python", "core dependencies", "database", "extra: analysis", "extra: voice",
                 "extra: llm", "extra: notebooks", "extra: postgres", "extra: dev",
                 "espeak-ng", "speech synthesis", "audio output", "ollama", "chromium",
                 "playwright", "voilà", f"port {ports['service_port']} (timmy serve)",
                 f"port {ports['voila_port']} (Voilà)"):
        assert name in result.output
    assert "timmy can run" in result.output or "everything works" in result.output


def test_unwritable_database_exits_non_zero_with_the_fix(tmp_path, ports):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    proc = timmy_doctor("--db", str(blocker / "timmy.db"), *port_args(ports))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    line = next(x for x in proc.stdout.splitlines() if "│ database" in x)
    assert "MISSING" in line and "is a file, not a directory" in line
    assert "pass a database you can write to: timmy doctor --db PATH" in line
    assert "missing (required): database" in proc.stdout
    assert not (tmp_path / "a-file").is_dir()   # nothing was created


def test_a_database_locked_by_another_writer_is_missing(tmp_path, ports):
    path = tmp_path / "busy.db"
    other = sqlite3.connect(path)
    other.execute("create table tasks (id integer)")
    other.execute("begin immediate")   # another writer holds the write lock
    try:
        report = timmy.doctor(str(path), **ports)
    finally:
        other.rollback()
        other.close()
    check = report["database"]
    assert check.status == MISSING and "database is locked" in check.detail
    assert report.exit_code == 1
    assert timmy.doctor(f"sqlite:///{path}", **ports)["database"].detail.endswith(
        "(writable; 0 tasks)")


def test_a_taken_port_is_reported(tmp_path, ports):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(cli, ["doctor", "--db", str(tmp_path / "t.db"), "--json",
                                          "--service-port", str(port),
                                          "--voila-port", str(ports["voila_port"])])
        strict = timmy.doctor(str(tmp_path / "t.db"), require=["ports"], service_port=port,
                              voila_port=ports["voila_port"])
    check = checks_of(result.output)[f"port {port} (timmy serve)"]
    assert check["status"] == WARN and "in use" in check["detail"]
    assert check["fix"] == f"stop what holds it, or use another: timmy serve --port {port + 1}"
    assert result.exit_code == 0   # ports are optional...
    assert strict[f"port {port} (timmy serve)"].status == MISSING and strict.exit_code == 1


# -- Ollama -----------------------------------------------------------------------------


def test_ollama_with_a_model_is_ok(ollama, tmp_path, ports):
    port = ollama(["llama3.2:latest", "qwen2.5:0.5b"])
    proc = timmy_doctor("--json", "--db", str(tmp_path / "t.db"), *port_args(ports),
                        env={"OLLAMA_HOST": f"127.0.0.1:{port}"})   # as Ollama writes it
    check = checks_of(proc.stdout)["ollama"]
    assert check["status"] == OK, check
    assert check["detail"] == (f"Ollama 0.5.7 at http://127.0.0.1:{port}; "
                               "models: llama3.2:latest, qwen2.5:0.5b")


@pytest.mark.parametrize("host", [":{port}", "localhost:{port}/ollama",
                                  "http://127.0.0.1:{port}/ollama/"])
def test_the_doctor_probes_the_server_the_executor_calls(ollama, ports, monkeypatch, host):
    """One OLLAMA_HOST, one server: the doctor asks where the llm executor will ask (an
    address without a host is loopback, a path is kept, as behind a reverse proxy)."""
    port = ollama(["llama3.2:latest"], prefix="/ollama" if "ollama" in host else "")
    monkeypatch.setenv("OLLAMA_HOST", host.format(port=port))
    from timmy.llm import base_url

    check = timmy.doctor(**ports)["ollama"]
    assert check.status == OK, check
    assert check.detail.startswith(f"Ollama 0.5.7 at {base_url()}; models: llama3.2:latest")


@pytest.mark.parametrize("host", ["https://gpu.example.com/ollama", "http://gpu-box/ollama/",
                                  "https://ollama.example.com", ":11435", "gpu-box/ollama",
                                  "0.0.0.0", "[::1]:9000"])
def test_the_doctor_and_the_executor_read_ollama_host_alike(host):
    from timmy.llm import base_url

    assert ollama_url(host) == base_url(host)


def test_a_bad_ollama_host_is_a_failed_check_not_a_crash(ports, monkeypatch):
    monkeypatch.setenv("OLLAMA_HOST", "ftp://gpu-box")
    check = timmy.doctor(**ports)["ollama"]
    assert check.status == WARN
    assert "OLLAMA_HOST 'ftp://gpu-box' is not an http(s) address" in check.detail
    assert check.fix.startswith("e.g. http://127.0.0.1:11434")


def test_ollama_without_models_says_what_to_pull(ollama, ports):
    port = ollama([])
    report = timmy.doctor(ollama_host=f"http://127.0.0.1:{port}", require=["llm"], **ports)
    check = report["ollama"]
    assert check.status == MISSING and "but no models" in check.detail
    assert check.fix == "ollama pull llama3.2"
    assert report.exit_code == 1


def test_ollama_on_a_closed_port_says_to_start_it(ports):
    port = free_port()
    check = timmy.doctor(ollama_host=f"http://127.0.0.1:{port}", **ports)["ollama"]
    assert check.status == WARN
    assert f"no Ollama server at http://127.0.0.1:{port}" in check.detail
    assert "refused" in check.detail.lower()
    assert check.fix.startswith("start it: ollama serve")


def test_ollama_that_never_answers_times_out(ports):
    with socket.socket() as silent:   # accepts connections (backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        base = f"http://127.0.0.1:{silent.getsockname()[1]}"
        status = probe_ollama(base, timeout=0.3)
    assert status["version"] is None and "no answer within 0.3s" in status["error"]


@pytest.mark.parametrize("host, url", [
    ("127.0.0.1", "http://127.0.0.1:11434"),
    ("0.0.0.0:11500", "http://127.0.0.1:11500"),
    ("http://gpu-box:11434/", "http://gpu-box:11434"),
    ("https://ollama.example.com:443", "https://ollama.example.com:443"),
    ("[::1]", "http://[::1]:11434"),
])
def test_ollama_host_is_read_as_ollama_reads_it(host, url):
    assert ollama_url(host) == url


# -- missing pieces ---------------------------------------------------------------------


def test_missing_pyttsx3_is_a_warning_unless_voice_is_required(tmp_path, ports):
    args = ("--json", "--db", str(tmp_path / "t.db"), *port_args(ports))
    block = "import sys; sys.modules['pyttsx3'] = None\n"
    relaxed = timmy_doctor(*args, prelude=block)
    strict = timmy_doctor(*args, "--require", "voice", prelude=block)
    assert relaxed.returncode == 0 and strict.returncode == 1, relaxed.stderr + strict.stderr
    for proc, status in ((relaxed, WARN), (strict, MISSING)):
        checks = checks_of(proc.stdout)
        for name in ("extra: voice", "speech synthesis"):
            assert checks[name]["status"] == status
            assert checks[name]["fix"] == 'pip install "timmy[voice]"'
        assert "pyttsx3: not installed" in checks["extra: voice"]["detail"]


def test_espeak_ng_that_cannot_load_says_to_install_it(tmp_path, ports):
    if importlib.util.find_spec("pyttsx3") is None:
        pytest.skip("pyttsx3 is not installed: the speech row reports that instead")
    proc = timmy_doctor("--json", "--db", str(tmp_path / "t.db"), *port_args(ports),
                        prelude="import sys; sys.modules['pyttsx3.drivers._espeak'] = None\n")
    check = checks_of(proc.stdout)["speech synthesis"]
    assert check["status"] == WARN and "cannot load espeak-ng" in check["detail"]
    assert "apt-get install espeak-ng" in check["fix"]


def test_import_check_names_a_module_that_fails_to_import(tmp_path, monkeypatch):
    (tmp_path / "broken_mod.py").write_text("raise RuntimeError('built for another numpy')\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    errors = import_in_child(["json", "broken_mod", "no_such_mod_xyz"])
    assert errors["json"] is None
    assert errors["broken_mod"] == "RuntimeError: built for another numpy"
    assert errors["no_such_mod_xyz"].startswith("ModuleNotFoundError")


# -- in a notebook ----------------------------------------------------------------------


def test_report_html_escapes_what_it_shows(tmp_path, ports):
    report = timmy.doctor(str(tmp_path / "<b>x&y</b>.db"), **ports)
    assert isinstance(report, Report)
    page = report._repr_html_()
    assert "&lt;b&gt;x&amp;y&lt;/b&gt;.db" in page and "<b>x&y</b>" not in page
    assert page.startswith("<table class='timmy-doctor'>")
    text = repr(report)
    assert text.splitlines()[0].split() == ["CHECK", "STATUS", "DETAIL", "FIX"]
    assert "<b>x&y</b>.db" in text


def test_timmy_doctor_is_callable_however_it_was_imported(tmp_path):
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        import timmy.doctor                      # binds the module on the package first
        from timmy.doctor import Report
        report = timmy.doctor({str(tmp_path / 't.db')!r})
        assert isinstance(report, Report) and report is not None
        assert timmy.doctor.doctor is not None and callable(timmy.doctor)
        print(report["database"].status)
    """)], capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_extras_checked_are_the_extras_of_pyproject():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    assert set(EXTRAS) == set(extras) - {"all"}


def test_unknown_required_group_is_refused(tmp_path):
    result = CliRunner().invoke(cli, ["doctor", "--require", "voice,sound"])
    assert result.exit_code == 2
    assert "unknown group sound" in result.output
    with pytest.raises(timmy.ConfigError, match="unknown group"):
        timmy.doctor(require=["sound"])
