"""Remote runners for real: a ``timmy serve`` subprocess on a loopback port with a SQLite file
in ``tmp_path``, and ``timmy runner --connect`` processes that dial in to it over TCP."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from test_service import ServiceProcess

from timmy.engine import protocol as p
from timmy.engine.executors import Outcome, simulated_plan
from timmy.market.bidding import BidStats
from timmy.market.personas import PERSONAS
from timmy.service.remote import RemoteRunner

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
FORGE_WORK = [f"fix the bug in the api client, part {i}" for i in range(20)]


class RunnerProcess:
    """``timmy runner --connect`` in a subprocess; its output goes to a file in tmp_path."""

    count = 0

    def __init__(self, svc: ServiceProcess, persona: str, *extra: str,
                 token: str | None = None) -> None:
        env = {k: v for k, v in os.environ.items() if k not in ("TIMMY_TOKEN", "TIMMY_URL")}
        RunnerProcess.count += 1
        self.out = svc.db.parent / f"runner-{RunnerProcess.count}.out"
        self.err = svc.db.parent / f"runner-{RunnerProcess.count}.err"
        with self.out.open("w") as out, self.err.open("w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "timmy", "runner", "--connect", svc.url, "--token",
                 svc.token if token is None else token, "--persona", persona, *extra],
                stdout=out, stderr=err, env=env)

    @property
    def stdout(self) -> str:
        return self.out.read_text()

    @property
    def stderr(self) -> str:
        return self.err.read_text()

    def end(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=10)


@pytest.fixture
def service(tmp_path):
    """A service with no runners of its own; every remote runner started is ended after."""
    svc = ServiceProcess(tmp_path / "swarm.db", 0, "--no-spawn")
    started: list[RunnerProcess] = []

    def runner(persona: str, *extra: str, **kwargs) -> RunnerProcess:
        r = RunnerProcess(svc, persona, *extra, **kwargs)
        started.append(r)
        return r

    svc.runner = runner
    yield svc
    for r in started:
        r.end()
    svc.stop()


def live(swarm, *agent_ids: str, restarts: int = 0, timeout: float = 15.0) -> dict:
    """Wait until the agents are connected and idle; returns them by agent_id."""
    deadline = time.monotonic() + timeout
    while True:
        agents = {a.agent_id: a for a in swarm.agents()}
        if all(a in agents and agents[a].status == "idle" and agents[a].restarts >= restarts
               for a in agent_ids):
            return agents
        if time.monotonic() > deadline:
            raise AssertionError(f"not all of {agent_ids} idle: {agents}")
        time.sleep(0.02)


def wait_status(swarm, task_id: int, status: str, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while (task := swarm.task(task_id)).status != status:
        if time.monotonic() > deadline:
            raise AssertionError(f"task {task_id} is {task.status}, not {status}")
        time.sleep(0.02)
    return task


def kinds(swarm, task_id: int | None = None, agent_id: str | None = None) -> list[str]:
    return [e.kind for e in swarm.events()
            if (task_id is None or e.task_id == task_id)
            and (agent_id is None or e.agent_id == agent_id)]


@pytest.mark.timeout(60)
def test_runners_that_dial_in_win_and_complete_tasks(service):
    for persona in ("forge", "quill", "pixel"):
        service.runner(persona, "--agent-id", f"{persona}-r1")
    work = FORGE_WORK[:5] + [f"write the docs for module {i}" for i in range(5)] + \
        [f"design the logo, take {i}" for i in range(5)]
    with service.attach() as swarm:
        agents = live(swarm, "forge-r1", "quill-r1", "pixel-r1")
        done = swarm.run(work, timeout=30)
        status = swarm.status()
        bids = swarm.bids()
    assert [t.status for t in done] == ["completed"] * 15
    # Specialists win their own work, as with local runners; every runner bid in every auction.
    assert [t.assigned_agent for t in done] == ["forge-r1"] * 5 + ["quill-r1"] * 5 + \
        ["pixel-r1"] * 5
    per_auction = Counter((b["task_id"], b["attempt"]) for b in bids)
    assert {tid for tid, _ in per_auction} == {t.task_id for t in done}
    assert set(per_auction.values()) == {3}
    assert all(re.fullmatch(r"127\.0\.0\.1:\d+", a.peer) for a in agents.values())
    assert status["runners_live"] == status["runners_remote"] == 3
    assert status["service"]["runners"] == 3
    cli = subprocess.run([sys.executable, "-m", "timmy", "status", "--url", service.url,
                          "--token", service.token], capture_output=True, text=True,
                         timeout=30, env={**os.environ, "COLUMNS": "200"})
    assert re.search(r"forge-r1 +│ idle +│ 127\.0\.0\.1:\d+", cli.stdout), cli.stdout


@pytest.mark.timeout(60)
def test_a_remote_runner_bids_against_a_local_one_of_the_same_persona(service):
    remote = service.runner("forge", "--agent-id", "forge-r1")
    with service.attach() as swarm:
        swarm.spawn("forge")                         # forge-1: a child of the service
        live(swarm, "forge-1", "forge-r1")
        done = swarm.run(FORGE_WORK, timeout=30)
        bids = swarm.bids()
        agents = {a.agent_id: a for a in swarm.agents()}
    assert {t.status for t in done} == {"completed"}
    assert {t.assigned_agent for t in done} == {"forge-1", "forge-r1"}   # both win work
    assert Counter(b["agent_id"] for b in bids if b["attempt"] == 1) == \
        {"forge-1": 20, "forge-r1": 20}
    assert agents["forge-1"].peer is None and agents["forge-r1"].peer is not None
    # A remote runner cannot take the name of a runner the service started.
    impostor = service.runner("forge", "--agent-id", "forge-1")
    assert impostor.proc.wait(timeout=15) == 2
    assert "forge-1 is a runner this swarm started itself" in impostor.stderr
    assert remote.proc.poll() is None


@pytest.mark.timeout(60)
def test_a_wrong_or_missing_token_is_refused_and_the_runner_exits(service):
    wrong = service.runner("forge", token="not-the-token")
    missing = service.runner("forge", token="")
    assert wrong.proc.wait(timeout=15) == 2
    assert missing.proc.wait(timeout=15) == 2
    assert "AuthenticationError" in wrong.stderr and "wrong token" in wrong.stderr
    assert "hint:" in wrong.stderr
    assert "no token" in missing.stderr and "TIMMY_TOKEN" in missing.stderr
    with service.attach() as swarm:
        assert swarm.agents() == []
        assert swarm.status()["service"]["refused"] == 1    # the wrong token reached it


@pytest.mark.timeout(60)
def test_a_killed_remote_runners_task_is_reauctioned_and_the_runner_rejoins(service):
    seed_plan = simulated_plan(1, "forge-r1", 1, 1, True, 60.0)
    assert seed_plan.seconds > 10      # forge-r1's first task is still running when killed
    victim = service.runner("forge", "--agent-id", "forge-r1", "--task-seconds", "60")
    service.runner("quill", "--agent-id", "quill-r1", "--executor", "echo")
    with service.attach() as swarm:
        live(swarm, "forge-r1", "quill-r1")
        task = swarm.post(FORGE_WORK[0])
        assert task.task_id == 1
        assert wait_status(swarm, 1, "running").assigned_agent == "forge-r1"
        victim.proc.kill()                                   # SIGKILL, mid-task
        done = swarm.wait(1, timeout=15)
        assert (done.status, done.assigned_agent, done.attempts) == ("completed", "quill-r1", 2)
        assert "forge-r1 lost its connection during attempt 1" in \
            next(e for e in swarm.events() if e.kind == "task_requeued").data["reason"]
        assert {a.agent_id: a.status for a in swarm.agents()}["forge-r1"] == "disconnected"
        # The same agent dials in again: it rejoins, with what the service mirrored of its
        # learning (one auction, won), and wins forge work again.
        again = service.runner("forge", "--agent-id", "forge-r1", "--task-seconds", "0")
        agents = live(swarm, "forge-r1", restarts=1)
        assert agents["forge-r1"].tasks_won == 1
        second = swarm.run([FORGE_WORK[1]], timeout=15)[0]
        assert (second.status, second.assigned_agent) == ("completed", "forge-r1")
        assert Counter(kinds(swarm, task_id=1))["task_completed"] == 1
        assert [k for k in kinds(swarm, agent_id="forge-r1") if k.startswith("agent_")] == \
            ["agent_joined", "agent_disconnected", "agent_reconnected"]
    assert re.search(r"joined tcp://\S+ \(persona forge, .*, 1 auctions learned\)",
                     again.stdout), again.stdout


@pytest.mark.timeout(60)
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_remote_runner_told_to_leave_says_bye_and_its_task_keeps_its_attempt(service, sig):
    leaver = service.runner("forge", "--agent-id", "forge-r1", "--task-seconds", "60")
    service.runner("quill", "--agent-id", "quill-r1", "--executor", "echo")
    with service.attach() as swarm:
        live(swarm, "forge-r1", "quill-r1")
        swarm.post(FORGE_WORK[0])
        assert wait_status(swarm, 1, "running").assigned_agent == "forge-r1"
        leaver.proc.send_signal(sig)                        # Ctrl-C, or a polite kill
        assert leaver.proc.wait(timeout=10) == 0
        done = swarm.wait(1, timeout=15)
        # left on purpose: attempt 1 was not used up, so the rerun is attempt 1 again
        assert (done.status, done.assigned_agent, done.attempts) == ("completed", "quill-r1", 1)
        requeued = next(e for e in swarm.events() if e.kind == "task_requeued")
        assert requeued.data["reason"] == "runner forge-r1 stopped before finishing it"
        assert {a.agent_id: a.status for a in swarm.agents()}["forge-r1"] == "stopped"
        assert swarm.status()["protocol_errors"] == 0
        # and it may come back as the same agent
        service.runner("forge", "--agent-id", "forge-r1", "--task-seconds", "0")
        live(swarm, "forge-r1", restarts=1)
    assert "interrupted; left" in leaver.stdout


@pytest.mark.timeout(60)
def test_a_runner_that_handshakes_and_never_says_hello_is_cut_off(tmp_path):
    from test_service_security import answer, closed, request

    svc = ServiceProcess(tmp_path / "swarm.db", 0, "--no-spawn", "--hello-timeout", "0.5")
    try:
        sock = socket.create_connection(("127.0.0.1", svc.port), timeout=30)
        sock.sendall(request("runner", svc.token, persona="forge", agent_id="forge-q"))
        assert answer(sock)["ok"]                      # welcomed; then it goes quiet
        started = time.monotonic()
        assert closed(sock)                            # cut at the next ping round (5 s)
        assert time.monotonic() - started < 20
        sock.close()
        with svc.attach() as swarm:
            hung = [e for e in swarm.events() if e.kind == "agent_hung"]
            assert [(e.agent_id, e.data["before_hello"]) for e in hung] == [("forge-q", True)]
            assert {a.agent_id: a.status for a in swarm.agents()} == {"forge-q": "disconnected"}
    finally:
        svc.stop()


@pytest.mark.timeout(60)
def test_a_cut_connection_is_dialled_again_by_the_same_runner_process(service):
    forge = service.runner("forge", "--agent-id", "forge-r1", "--task-seconds", "60")
    service.runner("quill", "--agent-id", "quill-r1", "--executor", "echo")
    with service.attach() as swarm:
        live(swarm, "forge-r1", "quill-r1")
        swarm.post(FORGE_WORK[0])
        wait_status(swarm, 1, "running")
        swarm.kill("forge-r1")               # a remote runner: its connection is cut
        done = swarm.wait(1, timeout=15)
        assert (done.status, done.assigned_agent, done.attempts) == ("completed", "quill-r1", 2)
        agents = live(swarm, "forge-r1", restarts=1)
        assert forge.proc.poll() is None and agents["forge-r1"].pid == forge.proc.pid
    assert "connection lost (the service closed the connection); dialling in again" in \
        forge.stdout


@pytest.mark.timeout(60)
def test_stopping_a_remote_runner_makes_it_exit_instead_of_dialling_again(service):
    forge = service.runner("forge", "--agent-id", "forge-r1")
    with service.attach() as swarm:
        live(swarm, "forge-r1")
        assert swarm.stop("forge-r1").status == "stopped"
        assert forge.proc.wait(timeout=10) == 0
        time.sleep(0.3)
        assert [(a.agent_id, a.status) for a in swarm.agents()] == [("forge-r1", "stopped")]
        assert swarm.status()["service"]["runners"] == 0
    assert "shut down by the service (stopped by the swarm)" in forge.stdout
    assert "dialling in again" not in forge.stdout


@pytest.mark.timeout(60)
def test_a_remote_runner_outlives_a_service_restart_and_keeps_what_it_learned(service):
    forge = service.runner("forge", "--agent-id", "forge-r1")
    with service.attach() as swarm:
        live(swarm, "forge-r1")
        swarm.run(FORGE_WORK[:3], timeout=15)
    service.stop()              # stopping the service does not stop the runners dialled in
    restarted = ServiceProcess(service.db, service.port, "--no-spawn")
    try:
        with restarted.attach() as swarm:
            live(swarm, "forge-r1")   # a new engine that never heard of forge-r1
            done = swarm.run(FORGE_WORK[3:4], timeout=15)[0]
            assert (done.status, done.assigned_agent) == ("completed", "forge-r1")
    finally:
        restarted.stop()
    assert forge.proc.poll() is None
    # It told the new service what it had learned (3 auctions), and was handed it back.
    assert re.findall(r"(\d+) auctions learned", forge.stdout) == ["0", "3"]
    assert "dialling in again" in forge.stdout


@pytest.mark.timeout(60)
def test_the_runner_keeps_dialling_until_a_service_answers_then_gives_up(tmp_path):
    with socket.socket() as s:                # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = subprocess.run([sys.executable, "-m", "timmy", "runner", "--connect",
                          f"tcp://127.0.0.1:{port}", "--token", "t", "--persona", "forge",
                          "--max-retries", "3"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 1
    assert [float(x) for x in re.findall(r"retrying in ([\d.]+)s", out.stdout)] == \
        [0.05, 0.1, 0.2]
    assert "giving up after 4 failed attempts" in out.stderr


class Gate:
    """An executor that works until the test lets it finish."""

    instant = False

    def __init__(self) -> None:
        self.go = threading.Event()

    def run(self, task_id: int, description: str, attempt: int, on_spec: bool) -> Outcome:
        self.go.wait(5)
        return Outcome(True, "done", 0.0)


def test_work_won_over_a_lost_connection_is_never_answered_on_the_next():
    """The runner's side of a reconnection, on socket pairs: a task still executing when its
    connection dropped is not answered on the new connection, and the task queued behind it
    is not started."""
    gate = Gate()
    runner = RemoteRunner(PERSONAS["forge"], "forge-r1", 1, gate, out_fd=-1)
    old, old_peer = socket.socketpair()
    new, new_peer = socket.socketpair()
    runner.attach(old, BidStats())
    out: list[bytes] = []
    for tid in (1, 2):       # 1 starts at once, 2 waits behind it
        runner.handle(p.Assign(task_id=tid, description=FORGE_WORK[0]), out)
    old_peer.settimeout(2.0)
    assert p.decode_runner(old_peer.recv(1 << 16)) == p.Started(task_id=1)
    runner.detach()
    old.close()
    runner.attach(new, BidStats(auctions=5, wins=1))
    gate.go.set()            # task 1 ends now, over a connection that is gone
    runner.handle(p.Ping(seq=7), out)
    runner.write(b"".join(out))
    time.sleep(0.5)
    new_peer.setblocking(False)
    got = new_peer.recv(1 << 16)
    assert [p.decode_runner(line) for line in got.splitlines()] == [p.Pong(seq=7)]
    assert runner.stats.auctions == 5
    for s in (new, old_peer, new_peer):
        s.close()


@pytest.mark.timeout(120)
def test_remote_benchmark_prints_its_figures():
    out = subprocess.run([sys.executable, str(BENCH / "remote.py"), "--tasks", "60",
                          "--warmup", "20", "--runs", "1"], capture_output=True, text=True,
                         timeout=110)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "pipes" in out.stdout and "tcp" in out.stdout and "tcp/pipes" in out.stdout
