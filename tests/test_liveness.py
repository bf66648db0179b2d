"""Liveness for real: a service's own stall is not its runners' hang, and a task held past its
execution deadline (``task_timeout``) goes back to the market.

A real ``timmy serve`` is SIGSTOPped for longer than its ping timeout and SIGCONTed; scripted
runners (tests/conftest.py) and a hand-written remote runner answer pings but never report a
result. Events are read from the database with plain SQL, so nothing here depends on how the
API pages them.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import rows_of
from test_service import ServiceProcess

from timmy.engine.executors import simulated_plan

FIX = "fix the bug in the api client"   # forge's speciality

# forge-1 wins everything (16 sats on-spec: the bottom of forge's range, and ties go to
# forge-1), says "started" and then never reports a result, though it answers every ping.
# Its replacement after a restart (the marker file says it ran before) is the real runner;
# every other agent is the real runner from the start.
STUCK = """
    marker = os.path.join(HERE, "stuck-" + args.agent_id)
    if args.agent_id != "forge-1" or os.path.exists(marker):
        become_real_runner()
    open(marker, "w").close()
    hello()
    for msg in messages():
        if msg["type"] == "announce":
            say("bid", task_id=msg["task_id"], sats=16, on_spec=True)
        elif msg["type"] == "assign":
            say("started", task_id=msg["task_id"])
"""


def reliable_seed() -> int:
    """A seed under which the real forge-1 and forge-2 succeed at tasks 1 to 4 in their first
    two attempts (a simulated execution fails now and then), so attempts count only what the
    deadline spent."""
    for seed in range(1, 10_000):
        if all(simulated_plan(seed, agent, task, attempt, True, 0.0).ok
               for agent in ("forge-1", "forge-2") for task in range(1, 5)
               for attempt in (1, 2)):
            return seed
    raise AssertionError("no suitable seed")


def events_of(db: Path | str, *kinds: str) -> list[tuple]:
    """(kind, task_id, agent_id, data) of the stored events of these kinds, in order."""
    url = db if isinstance(db, str) else f"sqlite:///{db}"
    marks = ", ".join(f":k{i}" for i in range(len(kinds)))
    rows = rows_of(url, f"SELECT kind, task_id, agent_id, data FROM events WHERE kind IN "
                        f"({marks}) ORDER BY event_id", **{f"k{i}": k for i, k in enumerate(kinds)})
    return [(k, t, a, json.loads(d)) for k, t, a, d in rows]


def settle(swarm, agent_ids: set[str] | None = None, timeout: float = 30.0) -> dict:
    """Wait until the agents (all of them, or these) are idle; returns them by agent_id."""
    deadline = time.monotonic() + timeout
    while True:
        agents = {a.agent_id: a for a in swarm.agents()}
        want = agent_ids if agent_ids is not None else set(agents)
        if want and all(a in agents and agents[a].status == "idle" for a in want):
            return agents
        if time.monotonic() > deadline:
            raise AssertionError(f"agents not idle in {timeout}s: {agents}")
        time.sleep(0.05)


def assert_only_failed_attempts_were_spent(db: Path, done: list) -> None:
    """Every attempt a task spent beyond its first was one its runner reported as failed (a
    simulated execution fails now and then): none was lost to a runner deemed hung or gone."""
    requeued = events_of(db, "task_requeued")
    spent = [(t, d["reason"]) for _, t, _, d in requeued if d["attempts"] > 0
             and not re.fullmatch(r"attempt \d+ by \S+ failed: .*", d["reason"], re.S)]
    assert spent == []
    failed = {t.task_id: 0 for t in done}
    for _, t, _, d in requeued:
        if d["attempts"] > 0:
            failed[t] += 1
    assert {t.task_id: t.attempts for t in done} == {t: n + 1 for t, n in failed.items()}


def stop_for(proc: subprocess.Popen, seconds: float) -> None:
    """SIGSTOP a process for ``seconds``, then SIGCONT it: what a laptop's sleep does to it."""
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        time.sleep(seconds)
    finally:
        os.kill(proc.pid, signal.SIGCONT)


# -- 3a: the service's own stall ------------------------------------------------------------


@pytest.mark.timeout(120)
def test_a_service_stopped_longer_than_its_ping_timeout_kills_no_runner_and_spends_no_attempt(
        tmp_path):
    svc = ServiceProcess(tmp_path / "swarm.db", 0, "--ping-interval", "0.2",
                         "--ping-timeout", "2", "--task-seconds", "0.2")
    try:
        with svc.attach() as swarm:
            before = settle(swarm)
            work = [f"{FIX}, part {i}" for i in range(15)] + \
                [f"write the release notes, part {i}" for i in range(15)]
            posted = swarm.post_many(work)
            time.sleep(0.5)                  # tasks assigned, queued and running
            stop_for(svc.proc, 5.0)          # 2.5 ping timeouts
            done = [swarm.wait(t.task_id, timeout=60) for t in posted]
            after = settle(swarm)
        assert [t.status for t in done] == ["completed"] * len(work)
        assert {a: (x.pid, x.restarts) for a, x in after.items()} == \
            {a: (x.pid, 0) for a, x in before.items()}
        assert events_of(svc.db, "agent_hung", "agent_crashed", "agent_restarted") == []
        assert_only_failed_attempts_were_spent(svc.db, done)
        stalls = events_of(svc.db, "service_stalled")
        assert stalls and max(e[3]["stalled_s"] for e in stalls) >= 4.0
    finally:
        svc.stop()


@pytest.mark.timeout(60)
def test_an_event_loop_blocked_past_the_ping_timeout_is_not_held_against_the_runners(db_path):
    """A slow call that blocks the service's event loop for 3 s (a big synchronous read, say)
    with a 1 s ping timeout: nobody could read the runners meanwhile, so nobody is hung."""
    import anyio

    from timmy import AsyncSwarm

    async def main() -> tuple[list, list, list, list]:
        async with AsyncSwarm(db_path, seed=1, task_seconds=0.05, ping_interval=0.1,
                              ping_timeout=1.0) as swarm:
            seen: list = []
            swarm.subscribe(seen.append)
            agents = await swarm.spawn_all(["forge", "quill"])
            posted = await swarm.post_many([f"{FIX}, part {i}" for i in range(20)])
            await anyio.sleep(0.3)
            time.sleep(3.0)                 # blocks the event loop, as a slow call would
            await anyio.sleep(1.5)          # more than a ping timeout, awake
            done = [await swarm.wait(t.task_id, timeout=30) for t in posted]
            after = await swarm.agents()
        return seen, [(a.pid, 0) for a in agents], [(a.pid, a.restarts) for a in after], done

    seen, before, after, done = anyio.run(main, backend="asyncio")
    assert [t.status for t in done] == ["completed"] * len(done)
    assert after == before
    assert [e.kind for e in seen if e.kind in ("agent_hung", "agent_crashed")] == []
    stalls = [e.data["stalled_s"] for e in seen if e.kind == "service_stalled"]
    assert stalls and max(stalls) >= 2.5
    assert_only_failed_attempts_were_spent(db_path, done)


@pytest.mark.timeout(120)
def test_a_remote_runner_that_gave_up_on_a_stopped_service_costs_its_tasks_no_attempt(tmp_path):
    """A remote runner hears nothing for ping_timeout while the service is stopped, drops the
    connection and dials in again: its tasks are re-auctioned, but that was no crash."""
    svc = ServiceProcess(tmp_path / "swarm.db", 0, "--no-spawn", "--ping-interval", "0.2",
                         "--ping-timeout", "2", "--task-seconds", "0.3")
    env = {k: v for k, v in os.environ.items() if k not in ("TIMMY_TOKEN", "TIMMY_URL")}
    with (tmp_path / "runner.out").open("w") as out:
        runner = subprocess.Popen(
            [sys.executable, "-m", "timmy", "runner", "--connect", svc.url, "--token",
             svc.token, "--persona", "forge"], stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        with svc.attach() as swarm:
            settle(swarm, {"forge-1"})
            posted = swarm.post_many([f"{FIX}, part {i}" for i in range(10)])
            time.sleep(0.5)
            stop_for(svc.proc, 5.0)
            done = [swarm.wait(t.task_id, timeout=60) for t in posted]
        assert [t.status for t in done] == ["completed"] * len(posted)
        assert events_of(svc.db, "agent_hung") == []
        assert_only_failed_attempts_were_spent(svc.db, done)
        assert "nothing heard for 2s" in (tmp_path / "runner.out").read_text()
    finally:
        runner.send_signal(signal.SIGTERM)
        runner.wait(timeout=10)
        svc.stop()


# -- 3b: the per-task execution deadline ----------------------------------------------------


def check_timed_out(db: str, head: int, behind: list[int], limit: float) -> None:
    """The head task timed out on the stuck forge-1 (an attempt spent, the reason recorded);
    the tasks queued behind it came back without spending one."""
    timed_out = events_of(db, "task_timed_out")
    assert [(t, a, d["timeout_s"]) for _, t, a, d in timed_out] == [(head, "forge-1", limit)]
    requeued = {t: d for _, t, _, d in events_of(db, "task_requeued")}
    assert requeued[head]["attempts"] == 1
    assert requeued[head]["reason"].startswith(f"no result within {limit:g}s from forge-1")
    for tid in behind:
        assert requeued[tid]["attempts"] == 0
        assert "restarted before starting it" in requeued[tid]["reason"]


@pytest.mark.timeout(60)
@pytest.mark.postgres
@pytest.mark.parametrize("where", ["swarm", "post"])
def test_a_task_past_its_deadline_is_auctioned_again_and_the_tasks_behind_keep_their_attempts(
        make_swarm, scripted_runner, db_url, where):
    command = scripted_runner("stuck", STUCK)
    # "post": the swarm's deadline would never fire; the post's own, shorter one does.
    swarm = make_swarm(runner_command=command, ping_interval=0.1, ping_timeout=5,
                       task_timeout=1.0 if where == "swarm" else 3600, seed=reliable_seed())
    swarm.spawn("forge")
    swarm.spawn("forge")                     # forge-2: a real one, to take the work over
    first = swarm.post(FIX, **({"task_timeout": 1.0} if where == "post" else {}))
    behind = swarm.post_many([f"{FIX}, part {i}" for i in (2, 3)])
    done = [swarm.wait(t.task_id, timeout=30) for t in (first, *behind)]

    assert [(t.status, t.attempts) for t in done] == [("completed", 2), ("completed", 1),
                                                      ("completed", 1)]
    check_timed_out(db_url, first.task_id, [t.task_id for t in behind], 1.0)
    assert settle(swarm, {"forge-1"})["forge-1"].restarts == 1   # restarted once, back
    # A post's own deadline is the post's; the swarm's stays for the rest.
    late = swarm.post(FIX)
    assert swarm.wait(late.task_id, timeout=30).attempts == 1


@pytest.mark.timeout(60)
def test_a_task_fails_after_max_attempts_of_runners_that_never_report(make_swarm,
                                                                      scripted_runner):
    command = scripted_runner("always_stuck", """
        hello()
        for msg in messages():
            if msg["type"] == "announce":
                say("bid", task_id=msg["task_id"], sats=16, on_spec=True)
    """)
    swarm = make_swarm(runner_command=command, ping_interval=0.05, ping_timeout=5,
                       max_attempts=2)
    swarm.spawn("forge")
    done = swarm.wait(swarm.post(FIX, task_timeout=0.3).task_id, timeout=30)
    assert (done.status, done.attempts) == ("failed", 2)
    assert done.reason.startswith("no result within 0.3s from forge-1 (attempt 2")
    assert done.reason.endswith("gave up after 2 attempts")


def test_task_timeout_is_checked(make_swarm):
    from timmy.errors import ConfigError

    with pytest.raises(ConfigError, match="task_timeout"):
        make_swarm(task_timeout=0)
    swarm = make_swarm()
    with pytest.raises(ConfigError, match="task_timeout must be a number"):
        swarm.post(FIX, task_timeout="soon")
    assert swarm.tasks() == []


class StuckRemoteRunner(threading.Thread):
    """A remote forge runner written by hand: it joins over TCP, bids 16 sats (the bottom of
    forge's range) for everything, says "started" for what it wins and never reports a result;
    it answers pings."""

    def __init__(self, svc: ServiceProcess) -> None:
        super().__init__(daemon=True)
        host, port = svc.url.removeprefix("tcp://").split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=10)
        self.sock.sendall(json.dumps({"id": 1, "token": svc.token, "op": "runner", "args": {
            "persona": "forge", "agent_id": "forge-1"}}).encode() + b"\n")
        self.file = self.sock.makefile("rb")
        welcome = json.loads(self.file.readline())
        assert welcome["ok"], welcome
        self.send("hello", agent_id="forge-1", persona="forge", pid=os.getpid())
        self.cut = threading.Event()
        self.start()

    def send(self, kind: str, **fields) -> None:
        self.sock.sendall(json.dumps({"v": 1, "type": kind, **fields}).encode() + b"\n")

    def run(self) -> None:
        try:
            for line in self.file:
                msg = json.loads(line)
                if msg["type"] == "ping":
                    self.send("pong", seq=msg["seq"])
                elif msg["type"] == "announce":
                    self.send("bid", task_id=msg["task_id"], sats=16, on_spec=True)
                elif msg["type"] == "assign":
                    self.send("started", task_id=msg["task_id"])
        except OSError:
            pass
        self.cut.set()


@pytest.mark.timeout(90)
@pytest.mark.parametrize("where", ["serve --task-timeout", "post over the wire"])
def test_the_deadline_works_through_the_service(tmp_path, where):
    flag = "1" if where == "serve --task-timeout" else "3600"
    svc = ServiceProcess(tmp_path / "swarm.db", 0, "--no-spawn", "--ping-interval", "0.1",
                         "--ping-timeout", "5", "--task-timeout", flag,
                         "--seed", str(reliable_seed()))
    try:
        with svc.attach() as swarm:
            stuck = StuckRemoteRunner(svc)
            swarm.spawn("forge")             # forge-2: a real one, to take the work over
            settle(swarm, {"forge-1", "forge-2"})
            first = swarm.post(FIX, **({"task_timeout": 1} if flag == "3600" else {}))
            behind = swarm.post_many([f"{FIX}, part {i}" for i in (2, 3)])
            assert stuck.cut.wait(30), "the stuck runner was never cut off"
            done = [swarm.wait(t.task_id, timeout=30) for t in (first, *behind)]
        assert [(t.status, t.attempts, t.assigned_agent) for t in done] == \
            [("completed", 2, "forge-2"), ("completed", 1, "forge-2"),
             ("completed", 1, "forge-2")]
        check_timed_out(f"sqlite:///{svc.db}", first.task_id, [t.task_id for t in behind], 1.0)
    finally:
        svc.stop()


def test_the_service_refuses_a_bad_task_timeout_over_the_wire(tmp_path):
    from timmy.errors import ConfigError

    svc = ServiceProcess(tmp_path / "swarm.db", 0, "--no-spawn")
    try:
        with svc.attach() as swarm, pytest.raises(ConfigError, match="task_timeout"):
            swarm.post(FIX, task_timeout=-1)
    finally:
        svc.stop()


@pytest.mark.timeout(120)
def test_timmy_run_applies_task_timeout(tmp_path):
    """`timmy run --task-timeout`: real runners slower than the deadline lose every attempt."""
    tasks = tmp_path / "tasks.txt"
    tasks.write_text(FIX + "\n")
    out = subprocess.run(
        [sys.executable, "-m", "timmy", "run", str(tasks), "--db", str(tmp_path / "run.db"),
         "--task-seconds", "30", "--task-timeout", "0.2", "--timeout", "90"],
        capture_output=True, text=True, timeout=110, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    rows = rows_of(f"sqlite:///{tmp_path / 'run.db'}", "SELECT status, attempts, reason FROM "
                   "tasks")
    assert [(s, a) for s, a, _ in rows] == [("failed", 3)]
    assert "no result within 0.2s" in rows[0][2]
    assert len(events_of(tmp_path / "run.db", "task_timed_out")) == 3


@pytest.mark.parametrize("command", [["run", "tasks.txt"], ["demo"], ["serve"],
                                     ["post", "x"]])
def test_task_timeout_flag_is_parsed(tmp_path, command):
    (tmp_path / "tasks.txt").write_text(FIX + "\n")
    out = subprocess.run([sys.executable, "-m", "timmy", *command, "--task-timeout", "0"],
                         capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert out.returncode == 2
    assert "--task-timeout" in out.stderr and "0.01" in out.stderr
