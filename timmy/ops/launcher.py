"""``timmy dashboards``: the swarm service and Voilà, started together (`Dashboards`) and
stopped together, from this process or from another shell (`stop_running`, ``make stop``).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from timmy.engine import procid
from timmy.errors import ConfigError, TimmyError
from timmy.storage.private import private_dirs, private_file

VOILA_PORT = 8866
READY_TIMEOUT = 90.0
STOP_TIMEOUT = 15.0
MARKER = "TIMMY_DASHBOARDS_ID"   # in the environment of everything a launcher starts
PREHEAT = 1            # pre-heated kernels per notebook
CULL_TIMEOUT = 45.0    # seconds without a page before a kernel is shut down
CULL_INTERVAL = 10.0   # seconds between culling passes


class LaunchError(TimmyError):
    """The service or Voilà did not start."""


@dataclass
class Running:
    """What ``dashboards.json`` records about a running launcher."""

    launcher_pid: int
    service_pid: int
    voila_pid: int
    service_url: str
    desktop_url: str
    mobile_url: str
    boot_id: str = ""          # /proc/sys/kernel/random/boot_id when they started
    launcher_start: int = 0    # start times (/proc/PID/stat field 22) of the three pids
    service_start: int = 0
    voila_start: int = 0
    marker: str = ""           # TIMMY_DASHBOARDS_ID in the children's environment

    def launcher_is_ours(self) -> bool:
        return procid.is_same(self.launcher_pid, self.launcher_start, self.boot_id)

    def ours(self) -> list[int]:
        """Our processes still alive: the launcher, and whatever carries our marker."""
        pids = [self.launcher_pid] if self.launcher_is_ours() else []
        return pids + procid.marked(MARKER, self.marker)


@dataclass
class Stopped:
    """What `stop_running` found: the file's content, and whether it named any process of
    ours (``stale``: it did not, so nothing was signalled)."""

    running: Running
    stale: bool


def state_file(db_url: str) -> Path:
    """``dashboards.json`` beside the SQLite file (else under ./data)."""
    from timmy.storage.address import DatabaseAddress

    path = DatabaseAddress.parse(db_url).file
    folder = path.parent if path is not None else Path("data")
    return folder.absolute() / "dashboards.json"


class Dashboards:
    """The service and Voilà as child processes of this one.

    `start` runs ``timmy serve`` and ``voila dashboards/`` as child processes (each in its
    own session, so a terminal's Ctrl-C reaches only this launcher, which then stops them
    in order), waits until both answer, prints the desktop and mobile URLs and writes them
    with the pids to ``dashboards.json`` beside the database, with what makes each pid
    ours: its start time and boot id (`timmy.engine.procid`) and a marker in the
    children's environment (``TIMMY_DASHBOARDS_ID``, inherited by the runners and the
    kernels). `wait` blocks until Ctrl-C, SIGTERM or a child dying; `stop` stops Voilà
    (and its kernels), then the service (which stops its runners and saves everything).

    Voilà gets its own random token through its environment (``JUPYTER_TOKEN``, never its
    command line, which every local user can read in ``ps``), and the service's address
    and token the same way (``TIMMY_URL``, ``TIMMY_TOKEN``), which
    `timmy.widgets.dashboard` reads in the kernel. Voilà pre-heats ``preheat`` kernels per
    notebook and culls the kernel of a page closed for ``cull_timeout`` seconds
    (`timmy.ops.voila_kernels`).
    """

    def __init__(self, db_url: str, notebooks: str | Path = "dashboards", *,
                 host: str = "127.0.0.1", port: int = 7341, voila_port: int = VOILA_PORT,
                 serve_args: tuple[str, ...] = (), voila_args: tuple[str, ...] = (),
                 log_dir: Path | None = None, echo=print, preheat: int = PREHEAT,
                 cull_timeout: float = CULL_TIMEOUT, cull_interval: float = CULL_INTERVAL
                 ) -> None:
        self.db_url, self.host, self.port, self.voila_port = db_url, host, port, voila_port
        self.notebooks = Path(notebooks).absolute()
        self.serve_args, self.voila_args = serve_args, voila_args
        self.echo = echo
        self.state = state_file(db_url)
        self.log_dir = log_dir or self.state.parent
        self.service: subprocess.Popen | None = None
        self.voila: subprocess.Popen | None = None
        self.running: Running | None = None
        self._stopping = threading.Event()
        self.preheat, self.cull_timeout, self.cull_interval = preheat, cull_timeout, cull_interval
        self.marker = uuid.uuid4().hex

    # -- start ------------------------------------------------------------------
    def start(self) -> Running:
        for name in ("desktop.ipynb", "mobile.ipynb"):
            if not (self.notebooks / name).is_file():
                raise ConfigError(f"no {name} in {self.notebooks}",
                                  hint="run from the timmy checkout, or pass --notebooks DIR")
        self._refuse_if_running()
        private_dirs(self.log_dir)
        try:
            service_url = self._start_service()
            token = self._service_token()
            voila_token = secrets.token_urlsafe(16)
            base = self._start_voila(service_url, token, voila_token)
        except BaseException:
            self.stop()
            raise
        page = f"{base}/voila/render/{{}}.ipynb?token={voila_token}"
        me, serve, voila = (procid.identify(p)
                            for p in (os.getpid(), self.service.pid, self.voila.pid))
        self.running = Running(os.getpid(), self.service.pid, self.voila.pid, service_url,
                               page.format("desktop"), page.format("mobile"),
                               procid.boot_id(), me.start if me else 0,
                               serve.start if serve else 0, voila.start if voila else 0,
                               self.marker)
        private_file(self.state)   # 0600 before anything is in it: the URLs carry Voilà's token
        os.chmod(self.state, 0o600)   # (an older file may have been made with the umask)
        self.state.write_text(json.dumps(asdict(self.running), indent=2) + "\n")
        return self.running

    def _refuse_if_running(self) -> None:
        old = read_state(self.state)
        if old is not None and old.launcher_is_ours():
            raise ConfigError(f"dashboards already run (pid {old.launcher_pid}): "
                              f"{old.desktop_url}",
                              hint="open that URL, or stop them first: make stop")

    def _start_service(self) -> str:
        cmd = [sys.executable, "-m", "timmy", "serve", "--db", self.db_url,
               "--host", self.host, "--port", str(self.port), *self.serve_args]
        self.service = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, text=True,
                                        env={**os.environ, MARKER: self.marker},
                                        start_new_session=True)
        ready = threading.Event()
        found: list[str] = []

        def relay() -> None:
            for line in self.service.stdout:
                line = line.rstrip("\n")
                if "listening on " in line and not found:
                    found.append(line.split("listening on ", 1)[1].split(" ", 1)[0])
                    ready.set()
                if not self._stopping.is_set() or "stopped" in line:
                    self.echo(f"serve: {line}")
            ready.set()

        threading.Thread(target=relay, daemon=True, name="timmy-serve-relay").start()
        if not ready.wait(READY_TIMEOUT) or not found:
            raise LaunchError("the swarm service did not start",
                              hint="see its output above; `timmy serve --db ...` alone shows "
                                   "the same")
        return found[0]

    def _service_token(self) -> str:
        from timmy.service.tokens import read_token, token_path

        return os.environ.get("TIMMY_TOKEN") or read_token(token_path(self.db_url))

    def _start_voila(self, service_url: str, token: str, voila_token: str) -> str:
        env = {**os.environ, "TIMMY_URL": service_url, "TIMMY_TOKEN": token,
               "TIMMY_DB": self.db_url, "JUPYTER_TOKEN": voila_token, MARKER: self.marker}
        env.pop("JUPYTER_TOKEN_FILE", None)
        cmd = [sys.executable, "-m", "voila", str(self.notebooks), "--no-browser",
               f"--port={self.voila_port}", f"--Voila.ip={self.host}",
               "--Voila.port_retries=0", "--Voila.auto_token=True", "--show_tracebacks=True",
               "--VoilaConfiguration.multi_kernel_manager_class="
               "timmy.ops.voila_kernels.ClosedPageKernels",
               f"--MappingKernelManager.cull_idle_timeout={self.cull_timeout:g}",
               f"--MappingKernelManager.cull_interval={self.cull_interval:g}",
               *self._preheat_args(), *self.voila_args]
        private_file(self.log_dir / "voila.log")   # pages' errors may quote swarm data
        log = open(self.log_dir / "voila.log", "ab")   # noqa: SIM115 (the child owns it)
        try:
            self.voila = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, env=env,
                                          start_new_session=True)
        finally:
            log.close()
        host = f"[{self.host}]" if ":" in self.host else self.host
        base = f"http://{host}:{self.voila_port}"
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.voila.poll() is not None:
                raise LaunchError(f"Voilà exited at start (code {self.voila.returncode})",
                                  hint=f"see {self.log_dir / 'voila.log'}; is port "
                                       f"{self.voila_port} taken? pass --voila-port")
            try:
                with urllib.request.urlopen(f"{base}/?token={voila_token}", timeout=2):
                    return base
            except (urllib.error.URLError, OSError):
                time.sleep(0.1)
        raise LaunchError(f"Voilà did not answer at {base} within {READY_TIMEOUT:.0f}s",
                          hint=f"see {self.log_dir / 'voila.log'}")

    def _preheat_args(self) -> list[str]:
        if self.preheat <= 0:
            return []
        return ["--preheat_kernel=True", f"--pool_size={self.preheat}"]

    # -- run and stop -----------------------------------------------------------
    def wait(self) -> int:
        """Block until SIGINT/SIGTERM (0) or a child exits on its own (1); then stop both."""
        stop = threading.Event()
        previous = {s: signal.signal(s, lambda *_: stop.set())
                    for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            code = 0
            while not stop.wait(0.2):
                for name, proc in (("the swarm service", self.service), ("Voilà", self.voila)):
                    if proc is not None and proc.poll() is not None:
                        self.echo(f"{name} exited (code {proc.returncode}); stopping the rest")
                        code = 1
                        stop.set()
            return code
        finally:
            self.stop()
            for s, handler in previous.items():
                signal.signal(s, handler)

    def stop(self) -> None:
        """Voilà first (no page keeps calling), then the service; SIGKILL what lingers."""
        self._stopping.set()
        for proc in (self.voila, self.service):
            if proc is not None and proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        for proc in (self.voila, self.service):
            if proc is None:
                continue
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        # Kernels Voilà or runners the service left behind: found by our marker, not by a
        # process group whose leader is reaped (its number may name a stranger's by now).
        procid.signal_marked(MARKER, self.marker, signal.SIGKILL)
        old = read_state(self.state)
        if old is not None and old.launcher_pid == os.getpid():
            self.state.unlink(missing_ok=True)


def kernel_processes(voila_pid: int) -> list:
    """Voilà's live kernels (`psutil.Process` each): its children running ipykernel; a
    culled kernel not yet reaped (a zombie) or gone while it is read does not count."""
    import psutil

    try:
        children = psutil.Process(voila_pid).children()
    except psutil.Error:
        return []
    found = []
    for child in children:
        with contextlib.suppress(psutil.Error):
            if child.status() != psutil.STATUS_ZOMBIE \
                    and "ipykernel" in " ".join(child.cmdline()):
                found.append(child)
    return found


def read_state(path: Path) -> Running | None:
    try:
        return Running(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None


def stop_running(db_url: str, timeout: float = STOP_TIMEOUT + 10) -> Stopped | None:
    """Stop the dashboards started for ``db_url`` from another shell (``make stop``).

    Only processes proven ours are signalled: the launcher if its pid still has the start
    time and boot recorded in ``dashboards.json``, and the processes whose environment
    carries the file's marker (service, runners, Voilà, kernels; they are what is left when
    the launcher was SIGKILLed). A file that names none of ours (a crash, a reboot, a file
    from an older timmy without identities) is stale: removed, nothing signalled.
    Returns what the file said and whether it was stale, or None when there was no file.
    """
    path = state_file(db_url)
    running = read_state(path)
    if running is None:
        return None
    ours = running.ours()
    if procid.send_checked(running.launcher_pid, signal.SIGTERM,
                           lambda _pid: running.launcher_is_ours()):
        deadline = time.monotonic() + timeout
        while running.launcher_is_ours() and time.monotonic() < deadline:
            time.sleep(0.1)
    # What the launcher did not stop (it was SIGKILLed, or hung): politely, then not.
    if procid.signal_marked(MARKER, running.marker, signal.SIGTERM):
        deadline = time.monotonic() + STOP_TIMEOUT
        while procid.marked(MARKER, running.marker) and time.monotonic() < deadline:
            time.sleep(0.1)
        procid.signal_marked(MARKER, running.marker, signal.SIGKILL)
    path.unlink(missing_ok=True)
    return Stopped(running, stale=not ours)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child of ours counts as gone
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][:1] != "Z"
    except OSError:
        return True
