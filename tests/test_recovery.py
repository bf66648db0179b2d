"""Crashes and misbehaviour: killed runners, crashing runners, garbage on the wire,
a killed coordinator, and no orphan processes left behind by any of them.

Every process here is real: runner subprocesses (or small real programs that
speak the wire protocol badly), SIGKILL from `os.kill`, a coordinator in its own
Python process, and a database that outlives it (the tests marked ``postgres`` run on
an SQLite file and again on PostgreSQL).
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterable

import psutil
import pytest

from timmy import Swarm
from timmy.engine.executors import simulated_plan
from timmy.engine.supervisor import RestartPolicy
from timmy.errors import RunnerError, StoreError

FIX = "fix the bug in the api client"   # forge's speciality, off-spec for quill

# A runner that starts the first task it wins and never finishes it; while it holds a
# task it declines new ones (any more it is given wait in its queue, never started).
STUCK = """
    held = []
    hello()
    for msg in messages():
        if msg["type"] == "announce":
            if held:
                say("decline", task_id=msg["task_id"], reason="busy")
            else:
                say("bid", task_id=msg["task_id"], sats=20, on_spec=True)
        elif msg["type"] == "assign":
            held.append(msg["task_id"])
            if len(held) == 1:
                say("started", task_id=msg["task_id"])
"""
IN_FLIGHT = ("bidding", "assigned", "running")

# A runner that takes 0.3 s over every task it wins.
SLOW = """
    hello()
    for msg in messages():
        if msg["type"] == "announce":
            say("bid", task_id=msg["task_id"], sats=20, on_spec=True)
        elif msg["type"] == "assign":
            say("started", task_id=msg["task_id"])
            time.sleep(0.3)
            say("result", task_id=msg["task_id"], ok=True, output="done", elapsed_s=0.3)
"""


def process_family(pids: Iterable[int], owner: int) -> list[psutil.Process]:
    """These processes, their descendants, and their ancestors below ``owner`` (wrappers)."""
    found: dict[int, psutil.Process] = {}
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            for member in [proc, *proc.children(recursive=True)]:
                found[member.pid] = member
            parent = proc.parent()
            while parent is not None and parent.pid not in (owner, 1):
                found[parent.pid] = parent
                parent = parent.parent()
        except psutil.NoSuchProcess:
            pass
    return list(found.values())


def is_gone(proc: psutil.Process) -> bool:
    """True when the process has exited (a zombie waiting for its parent counts as exited)."""
    try:
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def alive(procs: Iterable[psutil.Process]) -> list[int]:
    return [p.pid for p in procs if not is_gone(p)]


def runner_processes(swarm: Swarm) -> list[psutil.Process]:
    """Every process this swarm's runners consist of (pids come from their hellos)."""
    return process_family([a.pid for a in swarm.agents() if a.pid is not None], os.getpid())


# The real runner started as a child of a wrapper program, as `uv run` or a shell script
# would: the swarm's child is the wrapper, the runner a grandchild of the swarm's process.
WRAPPER = """
    import subprocess
    raise SystemExit(subprocess.call([sys.executable, "-m", "timmy.engine.runner", *sys.argv[1:]]))
"""


@pytest.fixture(params=["direct", "wrapped"])
def runner_command(request, scripted_runner):
    return None if request.param == "direct" else scripted_runner("wrapper", WRAPPER)


def wait_gone(procs: list[psutil.Process], timeout: float = 5.0) -> list[int]:
    """Wait until every process has exited; returns the pids still alive after ``timeout``."""
    deadline = time.monotonic() + timeout
    while alive(procs) and time.monotonic() < deadline:
        time.sleep(0.05)
    return alive(procs)


# -- a runner dies -------------------------------------------------------------


def slow_first_attempt_seed(task_seconds: float) -> int:
    """A seed whose first attempt at task 1 by forge-1 lasts >= 1.5 task_seconds and whose
    second attempt, by forge-1 or quill-1, succeeds in under half of task_seconds."""
    for seed in range(10_000):
        first = simulated_plan(seed, "forge-1", 1, 1, True, task_seconds)
        retries = [simulated_plan(seed, "forge-1", 1, 2, True, task_seconds),
                   simulated_plan(seed, "quill-1", 1, 2, False, task_seconds)]
        if first.seconds >= 1.5 * task_seconds and all(
                r.ok and r.seconds < 0.5 * task_seconds for r in retries):
            return seed
    raise AssertionError("no suitable seed")


@pytest.mark.timeout(30)
@pytest.mark.parametrize("how", ["os.kill", "swarm.kill"])
@pytest.mark.postgres
def test_runner_killed_mid_task_task_completes_on_another_attempt_and_runner_is_replaced(
        make_swarm, eventually, how):
    swarm = make_swarm(seed=slow_first_attempt_seed(1.0), task_seconds=1.0)
    swarm.spawn_all(["forge", "quill"])
    task = swarm.post(FIX)
    eventually(lambda: swarm.task(task.task_id).status == "running", what="task running")
    victim = {a.agent_id: a for a in swarm.agents()}["forge-1"]
    old = psutil.Process(victim.pid)

    if how == "os.kill":
        os.kill(victim.pid, signal.SIGKILL)
    else:
        swarm.kill("forge-1")
    done = swarm.wait(task.task_id, timeout=10)

    assert (done.status, done.attempts) == ("completed", 2)
    assert wait_gone([old]) == []

    def replaced():
        forge = {a.agent_id: a for a in swarm.agents()}["forge-1"]
        return forge if forge.status == "idle" and forge.pid not in (None, victim.pid) else None

    forge = eventually(replaced, what="forge-1 replaced")
    assert forge.restarts == 1
    assert psutil.Process(forge.pid).is_running()
    first = [r for r in swarm.bids(task.task_id) if r["won"] and r["attempt"] == 1]
    assert [r["agent_id"] for r in first] == ["forge-1"]
    requeued = [e for e in swarm.events() if e.kind == "task_requeued"]
    assert [e.task_id for e in requeued] == [task.task_id]
    assert "forge-1" in requeued[0].data["reason"]


@pytest.mark.timeout(30)
def test_a_hung_runner_is_restarted_and_its_task_reauctioned(db_url, eventually):
    swarm = Swarm(db=db_url, seed=slow_first_attempt_seed(1.0), task_seconds=1.0,
                  auction_window=1.0)
    # Swarm() takes no heartbeat arguments: tighten them on its Config before it starts.
    swarm.config.ping_interval, swarm.config.ping_timeout = 0.1, 1.0
    with swarm:
        swarm.spawn_all(["forge", "quill"])
        task = swarm.post(FIX)
        eventually(lambda: swarm.task(task.task_id).status == "running", what="task running")
        hung = {a.agent_id: a for a in swarm.agents()}["forge-1"].pid
        hung_process = psutil.Process(hung)
        os.kill(hung, signal.SIGSTOP)   # alive, but silent: no pongs, no result

        done = swarm.wait(task.task_id, timeout=10)
        assert (done.status, done.attempts) == ("completed", 2)
        assert [e.agent_id for e in swarm.events() if e.kind == "agent_hung"] == ["forge-1"]
        forge = eventually(lambda: [a for a in swarm.agents()
                                    if a.agent_id == "forge-1" and a.status == "idle"],
                           what="forge-1 back")[0]
        assert forge.pid != hung and forge.restarts == 1
        assert wait_gone([hung_process]) == []


@pytest.mark.timeout(30)
@pytest.mark.postgres
def test_stopping_a_busy_runner_reauctions_its_task_and_never_restarts_it(
        make_swarm, eventually):
    swarm = make_swarm(seed=slow_first_attempt_seed(1.0), task_seconds=1.0)
    swarm.spawn_all(["forge", "quill"])
    task = swarm.post(FIX)
    eventually(lambda: swarm.task(task.task_id).status == "running", what="task running")
    forge = psutil.Process({a.agent_id: a for a in swarm.agents()}["forge-1"].pid)

    stopped = swarm.stop("forge-1")
    done = swarm.wait(task.task_id, timeout=10)

    assert (stopped.status, stopped.pid) == ("stopped", None)
    assert wait_gone([forge]) == []
    # Stopping a runner on purpose is not the task's fault: it costs the task no attempt.
    assert (done.status, done.attempts, done.assigned_agent) == ("completed", 1, "quill-1")
    requeued = [e for e in swarm.events() if e.kind == "task_requeued"]
    assert [e.task_id for e in requeued] == [task.task_id]
    assert "forge-1 stopped" in requeued[0].data["reason"]
    later = swarm.wait(swarm.post("fix the next bug").task_id, timeout=10)
    assert later.assigned_agent == "quill-1"
    after = {a.agent_id: a for a in swarm.agents()}["forge-1"]
    assert (after.status, after.restarts, after.pid) == ("stopped", 0, None)


@pytest.mark.timeout(30)
@pytest.mark.postgres
def test_task_fails_with_a_reason_after_max_attempts_of_crashing_runners(
        make_swarm, scripted_runner):
    command = scripted_runner("crasher", """
        hello()
        for msg in messages():
            if msg["type"] == "announce":
                say("bid", task_id=msg["task_id"], sats=20, on_spec=True)
            elif msg["type"] == "assign":
                os._exit(3)   # dies on every task it wins
    """)
    swarm = make_swarm(runner_command=command, max_attempts=2)
    swarm.spawn("forge")
    done = swarm.wait(swarm.post(FIX).task_id, timeout=15)

    assert (done.status, done.attempts) == ("failed", 2)
    assert "2 attempts" in done.reason
    assert "forge-1" in done.reason
    assert [(r["attempt"], r["agent_id"]) for r in swarm.bids(done.task_id) if r["won"]] == \
        [(1, "forge-1"), (2, "forge-1")]
    status = swarm.status()
    assert status["tasks"] == {"failed": 1}
    assert (status["open_auctions"], status["queued_in_memory"]) == (0, 0)
    assert swarm.tasks(status="failed")[0].reason == done.reason


@pytest.mark.timeout(30)
@pytest.mark.postgres
def test_a_task_that_kills_its_runner_does_not_use_up_the_attempts_of_tasks_behind_it(
        make_swarm, scripted_runner):
    command = scripted_runner("poisoned", """
        hello()
        for msg in messages():
            if msg["type"] == "announce":
                say("bid", task_id=msg["task_id"], sats=20, on_spec=True)
            elif msg["type"] == "assign":
                if "poison" in msg["description"]:
                    os._exit(9)
                say("started", task_id=msg["task_id"])
                say("result", task_id=msg["task_id"], ok=True, output="done", elapsed_s=0.0)
    """)
    swarm = make_swarm(runner_command=command, max_attempts=1)
    swarm.spawn("forge")
    poison, innocent = swarm.post_many(["fix the poison pill", FIX])   # on-spec for forge

    assert swarm.wait(poison.task_id, timeout=10).status == "failed"
    done = swarm.wait(innocent.task_id, timeout=10)
    assert (done.status, done.attempts, done.reason) == ("completed", 1, None)


@pytest.mark.timeout(30)
def test_a_database_locked_for_a_moment_loses_nothing(make_swarm, scripted_runner, db_path):
    swarm = make_swarm(runner_command=scripted_runner("slow", SLOW), db_timeout=0.2)
    swarm.spawn("forge")
    posted = swarm.post_many([f"{FIX} #{i}" for i in range(3)])

    holder = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")   # the tasks finish while nobody else can write
    release = threading.Timer(1.5, holder.rollback)
    release.start()
    try:
        # wait() reports a task finished only once that is stored: it waits the lock out
        done = [swarm.wait(t.task_id, timeout=10) for t in posted]
        assert not release.is_alive()
    finally:
        release.cancel()
        if release.is_alive():
            release.join()
        holder.close()

    assert [t.status for t in done] == ["completed"] * 3
    stored = {t.task_id: t for t in swarm.tasks()}   # written once the lock is gone
    assert [stored[t.task_id].status for t in posted] == ["completed"] * 3
    assert [stored[t.task_id].completed_at for t in posted] == [t.completed_at for t in done]
    assert sum(r["won"] for r in swarm.bids()) == 3
    ended = [e.task_id for e in swarm.events() if e.kind == "task_completed"]
    assert sorted(ended) == [t.task_id for t in posted]


@pytest.mark.timeout(30)
def test_closing_while_the_database_is_locked_saves_the_last_changes_or_says_so(
        make_swarm, scripted_runner, db_path, eventually):
    swarm = make_swarm(runner_command=scripted_runner("slow", SLOW), db_timeout=0.2)
    swarm.spawn("forge")
    posted = swarm.post_many([f"{FIX} #{i}" for i in range(3)])
    holder = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")
    release = threading.Timer(3.0, holder.rollback)   # another writer, for 3 s
    try:
        # finished in memory while nothing can be stored (wait() would wait for the store)
        eventually(lambda: all(swarm.task(t.task_id).status == "completed" for t in posted),
                   what="tasks finished in memory")
        release.start()
        try:
            swarm.close()
        except StoreError as exc:   # acceptable: the user is told
            assert exc.hint
            return
    finally:
        release.cancel()   # if it has not fired yet; closing the connection also unlocks
        if release.is_alive():
            release.join()
        holder.close()
    with sqlite3.connect(db_path) as conn:   # ...or everything was saved after all
        assert dict(conn.execute("SELECT task_id, status FROM tasks")) == \
            {t.task_id: "completed" for t in posted}
        assert conn.execute("SELECT count(*) FROM bids WHERE won").fetchone() == (3,)


# -- garbage on the wire ---------------------------------------------------------


@pytest.mark.timeout(30)
def test_garbage_lines_between_valid_messages_are_counted_and_dropped(
        make_swarm, scripted_runner):
    command = scripted_runner("chatty", """
        hello()
        for msg in messages():
            if msg["type"] == "announce":
                send("this is not json")
                say("bid", task_id=msg["task_id"], sats=21, on_spec=True)
                send('{"v": 1, "type": "bid"}')                       # fields missing
                send('{"v": 2, "type": "pong", "seq": 1}')            # wrong version
            elif msg["type"] == "assign":
                say("started", task_id=msg["task_id"])
                say("result", task_id=msg["task_id"], ok=True, output="done", elapsed_s=0.0)
    """)
    swarm = make_swarm(runner_command=command)
    swarm.spawn("forge")
    done = [swarm.wait(swarm.post(f"{FIX} #{i}").task_id, timeout=10) for i in range(4)]

    assert [(t.status, t.assigned_agent, t.price_sats, t.result) for t in done] == \
        [("completed", "forge-1", 21, "done")] * 4
    assert swarm.status()["protocol_errors"] == 3 * 4
    logged = [e for e in swarm.events() if e.kind == "protocol_error"]
    assert len(logged) == 12 and {e.agent_id for e in logged} == {"forge-1"}
    forge = swarm.agents()[0]
    assert (forge.restarts, forge.status) == (0, "idle")


@pytest.mark.timeout(30)
def test_an_endless_line_is_dropped_as_garbage_and_the_next_message_still_counts(
        make_swarm, scripted_runner):
    command = scripted_runner("endless", """
        hello()
        for msg in messages():
            if msg["type"] == "announce":
                send("x" * (3 * 1024 * 1024))      # three times the 1 MiB line limit
                say("bid", task_id=msg["task_id"], sats=21, on_spec=True)
            elif msg["type"] == "assign":
                say("result", task_id=msg["task_id"], ok=True, output="done", elapsed_s=0.0)
    """)
    swarm = make_swarm(runner_command=command)
    swarm.spawn("forge")
    task = swarm.wait(swarm.post(FIX).task_id, timeout=10)
    assert (task.status, task.assigned_agent, task.price_sats) == ("completed", "forge-1", 21)
    assert swarm.status()["protocol_errors"] >= 1


@pytest.mark.timeout(30)
def test_runner_that_only_sends_garbage_is_restarted_and_the_swarm_stays_up(
        make_swarm, scripted_runner, eventually):
    command = scripted_runner("babbler", """
        import select
        if args.persona == "quill":
            become_real_runner()
        hello()
        n = 0
        while True:
            ready, _, _ = select.select([0], [], [], 0.01)
            if ready:
                data = os.read(0, 65536)
                if not data or b'"shutdown"' in data:
                    break
            n += 1
            send(f"garbage {n}")
    """)
    swarm = make_swarm(runner_command=command, auction_window=0.3)
    swarm.spawn_all(["forge", "quill"])
    babbler = {a.agent_id: a for a in swarm.agents()}["forge-1"]

    restarted = eventually(
        lambda: [a for a in swarm.agents() if a.agent_id == "forge-1" and a.restarts >= 2],
        what="forge-1 restarted twice")
    assert restarted[0].pid != babbler.pid
    assert swarm.status()["protocol_errors"] >= 40

    task = swarm.wait(swarm.post("write a blog article").task_id, timeout=10)
    assert (task.status, task.assigned_agent) == ("completed", "quill-1")
    quill = {a.agent_id: a for a in swarm.agents()}["quill-1"]
    assert (quill.status, quill.restarts) == ("idle", 0)


# -- no orphans ------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_leaving_the_block_stops_every_runner(db_url, runner_command):
    with Swarm(db=db_url, seed=1, task_seconds=5.0, auction_window=1.0,
               runner_command=runner_command) as swarm:
        swarm.spawn_all()
        swarm.post_many([FIX, "write a blog article"])   # two runners busy when we leave
        procs = runner_processes(swarm)
        assert len(procs) == (9 if runner_command is None else 18)
        assert alive(procs) == [p.pid for p in procs]
    assert wait_gone(procs, timeout=5.0) == []


@pytest.mark.timeout(30)
@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_an_exception_inside_the_block_still_stops_every_runner(db_url, runner_command, error):
    procs = []
    with pytest.raises(error, match="boom"), \
            Swarm(db=db_url, seed=1, task_seconds=5.0, auction_window=1.0,
                  runner_command=runner_command) as swarm:
        swarm.spawn_all()
        swarm.post(FIX)
        procs = runner_processes(swarm)
        raise error("boom")
    assert len(procs) == (9 if runner_command is None else 18)
    assert wait_gone(procs, timeout=5.0) == []


@pytest.mark.timeout(30)
def test_runners_exit_when_the_process_that_owns_the_swarm_is_killed(
        db_url, start_owner, runner_command):
    # A crashed notebook kernel: nobody sends shutdown, the runners' stdin just closes.
    owner, report = start_owner(
        swarm={"db": db_url, "seed": 1, "task_seconds": 30.0, "auction_window": 1.0,
               "runner_command": runner_command},
        personas=["forge", "quill", "echo"], descriptions=[FIX], running=1)
    procs = process_family(report["pids"], owner.pid)
    assert len(procs) == (3 if runner_command is None else 6)
    assert alive(procs) == [p.pid for p in procs]

    owner.kill()
    owner.wait()
    assert wait_gone(procs, timeout=5.0) == []


@pytest.mark.timeout(30)
def test_ctrl_c_while_waiting_stops_every_runner_and_the_program_exits(
        db_url, start_owner, scripted_runner):
    owner, report = start_owner(
        swarm={"db": db_url, "seed": 1, "auction_window": 1.0,
               "runner_command": scripted_runner("stuck", STUCK)},
        personas=["forge", "quill"], descriptions=[FIX], running=1, then="wait")
    procs = process_family(report["pids"], owner.pid)
    time.sleep(0.3)   # the owner is now blocked in swarm.wait()

    os.killpg(owner.pid, signal.SIGINT)   # Ctrl-C in its terminal

    assert wait_gone(procs, timeout=5.0) == []
    try:
        code = owner.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pytest.fail("the program did not exit within 5 s of Ctrl-C")
    assert code != 0 and "KeyboardInterrupt" in report["stderr"].read_text()


# -- the coordinator dies ----------------------------------------------------------


@pytest.mark.timeout(40)
@pytest.mark.postgres
def test_restarted_coordinator_requeues_what_was_in_flight_and_finishes_it(
        db_url, rows_of, start_owner, scripted_runner):
    # The first coordinator's runners each start one task and never finish it.
    stuck = scripted_runner("stuck", STUCK)
    descriptions = [f"{FIX} #{i}" for i in range(5)]
    owner, report = start_owner(
        swarm={"db": db_url, "seed": 1, "task_seconds": 0.0, "auction_window": 1.0,
               "runner_command": stuck},
        personas=["forge", "quill", "echo"], descriptions=descriptions, running=1)
    posted = report["posted"]
    before = report["tasks"]
    in_flight = {i for i, status in before.items() if status in IN_FLIGHT}
    assert "running" in before.values()
    old_runners = process_family(report["pids"], owner.pid)
    owner.kill()
    owner.wait()

    # What the dead coordinator left in the database, read without timmy.
    on_disk = dict(rows_of(db_url, "SELECT task_id, status FROM tasks"))
    assert on_disk == report["tasks"]

    with Swarm(db=db_url, seed=1, task_seconds=0, auction_window=1.0) as swarm:
        recovered = {t.task_id: t for t in swarm.tasks()}
        assert sorted(recovered) == sorted(posted)
        assert {t.status for t in recovered.values()} == {"queued"}
        for task_id in in_flight:
            assert "restart" in recovered[task_id].reason
            assert recovered[task_id].attempts == (0 if before[task_id] == "bidding" else 1)
        for task_id in set(posted) - in_flight:
            assert recovered[task_id].reason is None

        swarm.spawn_all()
        done = [swarm.wait(task_id, timeout=10) for task_id in posted]
        assert {t.status for t in done} <= {"completed", "failed"}
        assert sorted(t.task_id for t in swarm.tasks()) == sorted(posted)
        assert len(swarm.tasks()) == len(descriptions)
        stored_agents = {a.agent_id for a in swarm.agents()}
        assert {"forge-2", "quill-2", "echo-2"} <= stored_agents  # ids continue, never reused
        events = swarm.events()   # one log across both coordinators, ids still one by one
        assert [e.event_id for e in events] == list(range(1, len(events) + 1))
        requeued = {e.task_id for e in events
                    if e.kind == "task_requeued" and "restart" in e.data["reason"]}
        assert requeued == in_flight

    assert wait_gone(old_runners, timeout=5.0) == []


@pytest.mark.timeout(40)
@pytest.mark.postgres
def test_restart_fails_in_flight_tasks_whose_attempts_are_used_up(
        db_url, start_owner, scripted_runner):
    owner, report = start_owner(
        swarm={"db": db_url, "seed": 1, "task_seconds": 0.0, "auction_window": 1.0,
               "runner_command": scripted_runner("stuck", STUCK)},
        personas=["forge"], descriptions=[FIX, f"{FIX} again"], running=1)
    owner.kill()
    owner.wait()
    # Assigned or running: attempt 1 was used. Queued (or still bidding): it was not.
    used = [i for i, status in report["tasks"].items() if status in ("assigned", "running")]
    unused = [i for i, status in report["tasks"].items() if status in ("queued", "bidding")]
    assert len(used) + len(unused) == 2 and used

    with Swarm(db=db_url, seed=1, task_seconds=0, auction_window=1.0, executor="echo",
               max_attempts=1) as swarm:
        for task_id in used:
            failed = swarm.task(task_id)
            assert failed.status == "failed"
            assert "attempt 1" in failed.reason and "coordinator" in failed.reason
            assert swarm.wait(task_id, timeout=1) == failed
        swarm.spawn("forge")
        for task_id in unused:
            assert swarm.wait(task_id, timeout=10).status == "completed"
        expected = {"failed": len(used)} | ({"completed": len(unused)} if unused else {})
        assert swarm.status()["tasks"] == expected


# -- one swarm per database, runners that cannot start ---------------------------------


@pytest.mark.timeout(30)
@pytest.mark.postgres
def test_a_second_swarm_on_a_database_in_use_is_refused_and_takes_nothing(
        make_swarm, scripted_runner, db_url, eventually):
    first = make_swarm(runner_command=scripted_runner("stuck", STUCK))
    first.spawn("forge")
    task = first.post(FIX)
    eventually(lambda: first.task(task.task_id).status == "running", what="task running")

    second = Swarm(db=db_url, seed=1, task_seconds=0, auction_window=1.0)
    try:
        with pytest.raises(StoreError) as caught:
            second.start()
    finally:
        second.close()
    assert "in use" in caught.value.message and str(os.getpid()) in caught.value.message
    assert caught.value.hint
    assert [(t.task_id, t.status, t.assigned_agent) for t in first.tasks()] == \
        [(task.task_id, "running", "forge-1")]
    assert [(a.agent_id, a.status) for a in first.agents()] == [("forge-1", "busy")]
    first.close()
    with Swarm(db=db_url, seed=1, task_seconds=0, auction_window=1.0) as third:
        assert [t.task_id for t in third.tasks()] == [task.task_id]   # free again once closed


@pytest.mark.timeout(20)
def test_spawning_a_runner_that_cannot_start_fails_fast_with_its_exit_code(
        make_swarm, scripted_runner):
    command = scripted_runner("broken", "sys.exit(2)   # dies before saying hello\n")
    swarm = make_swarm(runner_command=command, restart=RestartPolicy(max_restarts=2))
    started = time.monotonic()
    with pytest.raises(RunnerError) as caught:
        swarm.spawn("forge")
    assert time.monotonic() - started < 8, "waited for the hello timeout"
    assert "forge-1" in caught.value.message and "exit code 2" in caught.value.message
    assert caught.value.hint
    assert [(a.agent_id, a.status) for a in swarm.agents()] == [("forge-1", "failed")]


@pytest.mark.timeout(60)
def test_a_replaced_runner_bids_with_what_its_predecessor_had_learned(make_swarm, eventually):
    from timmy import PERSONAS
    from timmy.market.bidding import bid_rng, quote

    swarm = make_swarm(seed=3, task_seconds=0)
    swarm.spawn_all(["forge", "quill"])
    for i in range(12):   # forge loses every writing task: its win rate drops, bids fall
        swarm.wait(swarm.post(f"write the blog article number {i}").task_id, timeout=10)
    before = {a.agent_id: a.pid for a in swarm.agents()}
    swarm.kill("forge-1")
    eventually(lambda: {a.agent_id: a for a in swarm.agents()}["forge-1"].pid
               not in (None, before["forge-1"]) and
               {a.agent_id: a for a in swarm.agents()}["forge-1"].status == "idle",
               what="forge-1 replaced")
    task = swarm.post("write the blog article number 99")
    swarm.wait(task.task_id, timeout=10)
    bid = next(b for b in swarm.bids(task.task_id) if b["agent_id"] == "forge-1")
    fresh = quote(PERSONAS["forge"], "write the blog article number 99",
                  bid_rng(3, "forge-1", task.task_id, 1)).sats
    assert bid["sats"] != fresh, "the replacement bid like an untrained runner"
