"""The swarm service for real: a ``timmy serve`` subprocess on a free loopback port and a SQLite
file in ``tmp_path``, attached to with `timmy.Swarm.attach`, restarted under a subscriber."""

from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import timmy
from timmy.errors import ConfigError, TaskNotFound
from timmy.market.models import Event
from timmy.storage.store import Store

LISTENING = re.compile(r"listening on (tcp://[\d.]+:(\d+))")


class ServiceProcess:
    """``timmy serve`` in a subprocess: started, waited for, stopped."""

    def __init__(self, db: Path, port: int = 0, *extra: str, env: dict | None = None) -> None:
        self.db, self.extra = db, extra
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "timmy", "serve", "--db", str(db), "--port", str(port),
             "--task-seconds", "0", "--seed", "1", *extra],
            cwd=db.parent, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        self.lines: list[str] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise AssertionError(f"timmy serve ended: {self.proc.stderr.read()}")
            self.lines.append(line)
            if m := LISTENING.search(line):
                self.url, self.port = m.group(1), int(m.group(2))
                break
        else:
            raise AssertionError("timmy serve did not start in 30s")
        self.token = Path(f"{db}.token").read_text().strip()

    def attach(self, **kwargs):
        return timmy.Swarm.attach(self.url, token=self.token, **kwargs)

    def stop(self, sig: int = signal.SIGTERM) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        out, _ = self.proc.communicate(timeout=30)
        return out


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    svc = ServiceProcess(tmp_path_factory.mktemp("service") / "swarm.db")
    yield svc
    svc.stop()


def store_of(svc: ServiceProcess) -> Store:
    return Store(f"sqlite:///{svc.db}", create=False)


def wait_until(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


def test_token_is_made_once_stored_0600_and_printed(service):
    path = Path(f"{service.db}.token")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert any(service.token in line and "shown once" in line for line in service.lines)


def test_attach_post_and_wait(service):
    with service.attach() as swarm:
        task = swarm.post("fix the bug in the api client")
        assert isinstance(task, timmy.Task) and task.status == "queued"
        done = swarm.wait(task.task_id, timeout=10)
        assert done.status == "completed" and done.assigned_agent.startswith("forge")
        assert swarm.task(task.task_id) == done


def test_run_50_and_every_view_equals_the_store(service):
    with service.attach() as swarm:
        results = swarm.run([f"write the docs for module {i}" for i in range(50)], timeout=30)
        assert [t.status for t in results] == ["completed"] * 50
        tasks, bids, agents, status = swarm.tasks(), swarm.bids(), swarm.agents(), swarm.status()
    store = store_of(service)
    try:
        assert tasks == store.tasks(None, None)
        assert bids == store.bids(None)
        assert status["tasks"] == store.status_counts()
        stored = {a.agent_id: a for a in store.agents()}
        assert {a.agent_id for a in agents} == set(stored)
        assert all(isinstance(a, timmy.AgentInfo) for a in agents)
        assert {a.agent_id: a.earned_sats for a in agents} == \
               {k: a.earned_sats for k, a in stored.items()}
    finally:
        store.dispose()
    assert status["runners_live"] == 9


def test_errors_come_back_as_the_same_classes(service):
    with service.attach() as swarm:
        with pytest.raises(TaskNotFound) as err:
            swarm.wait(10**9)
        assert err.value.hint
        with pytest.raises(ConfigError, match="unknown task status"):
            swarm.tasks(status="nope")
        with pytest.raises(timmy.PersonaError):
            swarm.spawn("nobody")
        assert swarm.status()["tasks"]       # the connection is still good


def test_subscribe_sees_every_event_in_order(service):
    got: list[Event] = []
    with service.attach() as swarm:
        unsubscribe = swarm.subscribe(got.append)
        results = swarm.run([f"draft release note {i}" for i in range(20)], timeout=30)
        ids = {t.task_id for t in results}
        wait_until(lambda: ids <= {e.task_id for e in got if e.kind == "task_completed"})
        unsubscribe()
        first = got[0].event_id
        assert [e.event_id for e in got] == list(range(first, first + len(got)))
        assert all(isinstance(e, Event) for e in got)
        assert got == swarm.events(after=first - 1, limit=len(got))


def test_subscribe_after_zero_replays_history(service):
    got: list[Event] = []
    with service.attach() as swarm:
        swarm.subscribe(got.append, after=0)
        stored = list(swarm.iter_events())   # the whole history, a page at a time
        wait_until(lambda: len(got) >= len(stored))
    assert got[:len(stored)] == stored


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_subscriber_resumes_across_a_restart_without_gaps_or_repeats(tmp_path, sig):
    db = tmp_path / "restart.db"
    svc = ServiceProcess(db)
    got: list[Event] = []
    lock = threading.Lock()

    def on_event(event: Event) -> None:
        with lock:
            got.append(event)

    watcher = svc.attach()
    try:
        watcher.subscribe(on_event, after=0)
        with svc.attach() as swarm:
            swarm.run([f"fix bug {i}" for i in range(10)], timeout=30)
        svc.stop(sig)   # SIGKILL: only what was stored was ever sent, so nothing repeats
        svc = ServiceProcess(db, svc.port)
        assert not any("shown once" in line for line in svc.lines)   # the same token
        with svc.attach() as swarm:
            swarm.run([f"write doc {i}" for i in range(10)], timeout=30)
            last = swarm.events()[-1].event_id
        wait_until(lambda: got and got[-1].event_id >= last, timeout=15)
        with svc.attach() as swarm:
            stored = list(swarm.iter_events())
        # Every stored event once, in order: none missed, none repeated across the restart.
        assert [(e.event_id, e.kind, e.task_id) for e in got] == \
               [(e.event_id, e.kind, e.task_id) for e in stored]
        assert watcher.tasks(status="completed")          # the pooled client reconnected too
    finally:
        watcher.close()
        out = svc.stop()
    assert "stopped" in out


def test_cli_status_and_post(service):
    env = {**os.environ, "COLUMNS": "200"}
    common = ["--url", service.url, "--token", service.token]
    post = subprocess.run([sys.executable, "-m", "timmy", "post", "design the logo", "--wait",
                           *common], capture_output=True, text=True, timeout=60, env=env)
    assert post.returncode == 0, post.stderr
    assert re.search(r"task \d+ completed · winner pixel-1", post.stdout)
    status = subprocess.run([sys.executable, "-m", "timmy", "status", *common],
                            capture_output=True, text=True, timeout=60, env=env)
    assert status.returncode == 0, status.stderr
    assert "runners live 9" in status.stdout and "forge-1" in status.stdout
    bad = subprocess.run([sys.executable, "-m", "timmy", "status", "--url", service.url,
                          "--token", "wrong"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2
    assert "AuthenticationError" in bad.stderr and "hint:" in bad.stderr


def test_serve_pins_the_mmap_threshold(service):
    # timmy.service.heap: keeps the long-running service's RSS flat (benchmarks/soak.py)
    with service.attach() as swarm:
        assert swarm.status()["service"]["mmap_threshold"] == 128 * 1024


def test_no_service_is_a_clear_error(tmp_path):
    with pytest.raises(timmy.TimmyError, match="no swarm service answers") as err:
        timmy.Swarm.attach("tcp://127.0.0.1:1", token="x").status()
    assert "timmy serve" in err.value.hint


def test_a_task_reported_done_survives_a_killed_service(tmp_path):
    db = tmp_path / "durable.db"
    svc = ServiceProcess(db)
    try:
        with svc.attach() as swarm:
            done = swarm.run([f"fix bug {i}" for i in range(20)], timeout=30)
    finally:
        svc.stop(signal.SIGKILL)   # at once: no chance to save anything more
    assert {t.status for t in done} <= {"completed", "failed"}
    stored = {t.task_id: t.status for t in Store(f"sqlite:///{db}", create=False).tasks()}
    assert [stored[t.task_id] for t in done] == [t.status for t in done]
