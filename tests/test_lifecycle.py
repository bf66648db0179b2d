"""A swarm's lifecycle at its edges: closing with work in flight, what closing releases,
restarts cut short, a runner that says hello twice, configurations refused up front,
exporting a database that is not timmy's, and the bid rows that say who won which auction.

Real runner processes (or small real programs speaking the wire protocol, see
``scripted_runner``) and real SQLite files in ``tmp_path``, read back with plain sqlite3
(or SQLAlchemy: the tests marked ``postgres`` run on SQLite and again on PostgreSQL).
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import psutil
import pytest

import timmy.engine.coordinator
from timmy import Swarm
from timmy.engine.executors import simulated_plan
from timmy.engine.supervisor import RestartPolicy
from timmy.errors import ConfigError, RunnerError

FORGE_WORK = ["fix the bug in the api client", "refactor the test script"]   # forge's
QUILL_WORK = ["write the readme", "draft a blog article"]                   # quill's

# A runner that is the real one for forge, and for any other persona says hello and then
# never bids nor declines: an auction it is eligible for stays open until its window ends.
FORGE_REAL_OTHERS_SILENT = """
    if args.persona == "forge":
        become_real_runner()
    hello()
    for msg in messages():
        pass
"""

# The real runner for forge; any other persona declines every task it is offered.
FORGE_AND_DECLINER = """
    if args.persona == "forge":
        become_real_runner()
    hello()
    for msg in messages():
        if msg["type"] == "announce":
            say("decline", task_id=msg["task_id"], reason="not my line of work")
"""

# A runner that bids on everything and runs what it wins, but says hello a second time
# (from the same live process) when it is given a task, before starting it.
HELLO_AGAIN_ON_ASSIGN = """
    hello()
    for msg in messages():
        if msg["type"] == "announce":
            say("bid", task_id=msg["task_id"], sats=20, on_spec=True)
        elif msg["type"] == "assign":
            hello()
            say("started", task_id=msg["task_id"])
            say("result", task_id=msg["task_id"], ok=True, output="done", elapsed_s=0.0)
"""


def sqlite_rows(path: Path, sql: str, *params) -> list[tuple]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def assert_every_bid_recorded(swarm: Swarm) -> None:
    """Every `bid` event has its row in bids(), and there is no row without its event."""
    events = Counter((e.task_id, e.agent_id, e.data["attempt"], e.data["sats"])
                     for e in swarm.events() if e.kind == "bid")
    rows = Counter((r["task_id"], r["agent_id"], r["attempt"], r["sats"]) for r in swarm.bids())
    assert rows == events


def long_first_tasks_seed(agents: list[str], tasks: int, task_seconds: float,
                          at_least: float) -> int:
    """A seed with which every agent would take at least ``at_least`` seconds over the first
    attempt at each of tasks 1..``tasks`` (the simulated duration does not depend on the
    task being on-spec), whoever wins them."""
    for seed in range(100_000):
        if all(simulated_plan(seed, a, t, 1, True, task_seconds).seconds >= at_least
               for a in agents for t in range(1, tasks + 1)):
            return seed
    raise AssertionError("no suitable seed")


def close_with_work_in_flight(db_url: str, eventually) -> None:
    """forge-1 and quill-1 each hold two long tasks of their own speciality (one running, one
    waiting behind it) when the ``with`` block is left; max_attempts=1."""
    seed = long_first_tasks_seed(["forge-1", "quill-1"], 4, task_seconds=5.0, at_least=4.0)
    with Swarm(db=db_url, seed=seed, task_seconds=5.0, auction_window=1.0,
               max_attempts=1) as swarm:
        swarm.spawn_all(["forge", "quill"])
        swarm.post_many(FORGE_WORK + QUILL_WORK)

        def settled():
            tasks = swarm.tasks()
            held = Counter(t.assigned_agent for t in tasks)
            running = sum(t.status == "running" for t in tasks)
            return held == {"forge-1": 2, "quill-1": 2} and running == 2

        eventually(settled, timeout=5, what="each runner running one task, one more waiting")


# -- leaving the `with` block -------------------------------------------------------------


@pytest.mark.timeout(20)
@pytest.mark.postgres
def test_leaving_the_block_requeues_running_tasks_without_using_their_attempt(
        db_url, rows_of, eventually):
    close_with_work_in_flight(db_url, eventually)

    rows = rows_of(db_url, "select task_id, status, attempts, assigned_agent from tasks "
                           "order by task_id")
    assert rows == [(i, "queued", 0, None) for i in (1, 2, 3, 4)]


@pytest.mark.timeout(20)
@pytest.mark.postgres
def test_no_auction_opens_while_the_swarm_is_closing(db_url, rows_of, eventually):
    close_with_work_in_flight(db_url, eventually)

    events = rows_of(db_url, "select event_id, kind from events order by event_id")
    first_left = min(i for i, kind in events if kind == "agent_left")
    assert [(i, kind) for i, kind in events if kind == "auction_opened" and i > first_left] == []
    assert sum(kind == "auction_opened" for _, kind in events) == 4   # one per task, at the start
    bid_events = [json.loads(d) for (d,) in rows_of(
        db_url, "select data from events where kind = 'bid'")]
    assert len(bid_events) == len(rows_of(db_url, "select * from bids"))


# -- what closing releases ----------------------------------------------------------------


def open_files(path: Path) -> list[str]:
    """The file descriptors of this process open on the database, its -wal or its -shm."""
    wanted = {os.path.realpath(f"{path}{suffix}") for suffix in ("", "-wal", "-shm")}
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue   # the descriptor listdir itself used, closed meanwhile
        if target.removesuffix(" (deleted)") in wanted:
            found.append(f"{fd} -> {target}")
    return found


@pytest.mark.timeout(20)
def test_leaving_the_block_closes_every_descriptor_on_the_database_files(db_url, db_path):
    with Swarm(db=db_url, seed=1, task_seconds=0.0, auction_window=1.0) as swarm:
        swarm.spawn_all(["forge", "quill"])
        done = swarm.run(FORGE_WORK + QUILL_WORK, timeout=10)
        assert all(t.status in ("completed", "failed") for t in done)
        assert open_files(db_path)   # the check sees the swarm's own connections
        assert_every_bid_recorded(swarm)

    assert open_files(db_path) == []


@pytest.mark.timeout(20)
def test_a_new_swarm_on_the_same_url_writes_to_a_new_file_after_the_old_one_was_deleted(
        db_url, db_path):
    with Swarm(db=db_url, seed=1, task_seconds=0.0, auction_window=1.0) as swarm:
        swarm.spawn("forge")
        swarm.run(FORGE_WORK, timeout=10)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db_path}{suffix}").unlink(missing_ok=True)

    with Swarm(db=db_url, seed=1, task_seconds=0.0, auction_window=1.0) as swarm:
        swarm.spawn("quill")
        done = swarm.run(QUILL_WORK, timeout=10)
        assert [t.task_id for t in done] == [1, 2]
        assert_every_bid_recorded(swarm)

    assert db_path.is_file()
    rows = sqlite_rows(db_path, "select task_id, description from tasks order by task_id")
    assert rows == [(1, QUILL_WORK[0]), (2, QUILL_WORK[1])]
    assert sqlite_rows(db_path, "select agent_id from agents") == [("quill-1",)]


# -- run() and the finished-task cache ----------------------------------------------------


@pytest.mark.timeout(20)
@pytest.mark.postgres
def test_run_returns_every_task_when_more_finish_than_the_finished_task_cache_holds(
        make_swarm, monkeypatch):
    monkeypatch.setattr(timmy.engine.coordinator, "FINISHED_CACHE", 5)
    swarm = make_swarm(executor="echo", task_seconds=0.0)
    swarm.spawn_all(["forge", "quill"])
    descriptions = [f"fix the bug number {i}" for i in range(30)]

    done = swarm.run(descriptions, timeout=10)

    assert len(done) == 30
    assert [t.status for t in done] == ["completed"] * 30
    assert [t.task_id for t in done] == list(range(1, 31))
    assert [t.result for t in done] == descriptions
    assert_every_bid_recorded(swarm)


# -- restart backoff ----------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_a_runner_that_ran_a_while_comes_back_at_once_however_often_it_is_killed(
        make_swarm, eventually):
    swarm = make_swarm(restart=RestartPolicy(healthy_after=0.2, max_restarts=100))
    pid = swarm.spawn("forge").pid
    for _ in range(6):
        time.sleep(0.3)                     # up longer than healthy_after
        swarm.kill("forge-1")
        pid = eventually(lambda old=pid: [a.pid for a in swarm.agents()
                                          if a.status == "idle" and a.pid != old],
                         timeout=10, what="forge-1 back")[0]
    delays = [e.data["restart_in_s"] for e in swarm.events() if e.kind == "agent_crashed"]
    assert delays == [0.05] * 6             # it used to double: 0.05, 0.1, ... 1.6


@pytest.mark.timeout(30)
def test_a_runner_that_keeps_dying_young_backs_off_then_fails(make_swarm):
    swarm = make_swarm(restart=RestartPolicy(max_restarts=4),
                       runner_command=[sys.executable, "-c", "import sys; sys.exit(3)"])
    with pytest.raises(RunnerError, match="ended with exit code 3 before saying hello"):
        swarm.spawn("forge")
    events = [e for e in swarm.events() if e.agent_id == "forge-1"]
    assert [e.data["restart_in_s"] for e in events if e.kind == "agent_crashed"] == \
        [0.05, 0.1, 0.2, 0.4]
    assert events[-1].kind in ("agent_failed", "agent_left")


# -- stop() during a restart backoff ------------------------------------------------------


@pytest.mark.timeout(20)
def test_stop_while_waiting_to_restart_ends_stopped_at_once_and_never_restarts(
        make_swarm, eventually):
    swarm = make_swarm(restart=RestartPolicy(backoff_start=2.0))
    old_pid = swarm.spawn("forge").pid
    swarm.kill("forge-1")
    eventually(lambda: swarm.agents()[0].status == "restarting", timeout=3,
               what="forge-1 waiting to restart")

    started = time.monotonic()
    stopped = swarm.stop("forge-1")
    took = time.monotonic() - started

    assert (stopped.status, stopped.pid) == ("stopped", None)
    assert took < 1.0
    time.sleep(2.5)   # past the backoff: nothing restarts it
    [forge] = swarm.agents()
    assert (forge.status, forge.pid, forge.restarts) == ("stopped", None, 0)
    assert [e.kind for e in swarm.events() if e.agent_id == "forge-1"] == \
        ["agent_joined", "agent_crashed", "agent_left"]
    assert not psutil.pid_exists(old_pid) or \
        psutil.Process(old_pid).status() == psutil.STATUS_ZOMBIE


# -- a second hello -----------------------------------------------------------------------


@pytest.mark.timeout(20)
def test_a_second_hello_from_a_live_runner_is_a_protocol_error_not_a_restart(
        make_swarm, scripted_runner):
    swarm = make_swarm(runner_command=scripted_runner("hello_again", HELLO_AGAIN_ON_ASSIGN))
    agent = swarm.spawn("forge")

    task = swarm.wait(swarm.post("fix the bug in the api client").task_id, timeout=5)

    assert (task.status, task.assigned_agent, task.result) == ("completed", "forge-1", "done")
    assert swarm.status()["protocol_errors"] == 1
    errors = [e for e in swarm.events() if e.kind == "protocol_error"]
    assert [e.agent_id for e in errors] == ["forge-1"]
    assert "second hello" in errors[0].data["error"]
    assert [e.kind for e in swarm.events() if e.kind.startswith("agent_")] == ["agent_joined"]
    [forge] = swarm.agents()
    assert (forge.status, forge.pid, forge.restarts) == ("idle", agent.pid, 0)
    assert_every_bid_recorded(swarm)


# -- configurations refused up front ------------------------------------------------------


@pytest.mark.timeout(10)
@pytest.mark.parametrize(("interval", "timeout"), [(5.0, 5.0), (5.0, 2.0), (1.0, 0.5)])
def test_a_ping_timeout_not_longer_than_the_ping_interval_is_refused(
        db_url, db_path, interval, timeout):
    with pytest.raises(ConfigError) as caught:
        Swarm(db=db_url, ping_interval=interval, ping_timeout=timeout)

    assert "ping_timeout" in caught.value.message and "ping_interval" in caught.value.message
    assert caught.value.hint
    assert not db_path.exists()


# -- export of a database that is not timmy's ---------------------------------------------


@pytest.mark.timeout(30)
def test_export_refuses_a_database_that_is_not_timmys_and_leaves_its_schema_alone(tmp_path):
    other = tmp_path / "OTHER.db"
    conn = sqlite3.connect(other)
    with conn:
        conn.execute("create table t (x integer)")
        conn.execute("insert into t values (42)")
    conn.close()

    proc = subprocess.run([sys.executable, "-m", "timmy", "export", "OTHER.db", "DIR"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=25)

    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "not a timmy database" in proc.stderr
    hint = proc.stderr.strip().splitlines()[-1]
    assert hint.startswith("hint: ") and len(hint) > len("hint: ")
    assert sqlite_rows(other, "select type, name from sqlite_master") == [("table", "t")]
    assert sqlite_rows(other, "select x from t") == [(42,)]
    assert not (tmp_path / "DIR").exists()


@pytest.mark.timeout(30)
def test_export_refusing_a_database_that_is_not_timmys_leaves_its_journal_mode_alone(tmp_path):
    other = tmp_path / "OTHER.db"
    conn = sqlite3.connect(other)
    with conn:
        conn.execute("create table t (x integer)")
    conn.close()
    assert sqlite_rows(other, "pragma journal_mode") == [("delete",)]

    proc = subprocess.run([sys.executable, "-m", "timmy", "export", "OTHER.db", "DIR"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=25)

    assert proc.returncode == 2, proc.stderr
    assert sqlite_rows(other, "pragma journal_mode") == [("delete",)]


# -- bids and their auctions --------------------------------------------------------------


@pytest.mark.timeout(30)
@pytest.mark.postgres
def test_every_bid_names_its_auction_and_each_auction_has_at_most_one_winner(
        make_swarm, scripted_runner):
    # forge-1 may hold one task at a time and quill-1 declines everything: while forge-1 is
    # busy its bids are passed over, the auction ends without a winner and the task is
    # auctioned again with the same attempt number. Only the auction_id tells those apart.
    swarm = make_swarm(task_seconds=0.01, runner_queue=1, max_attempts=3,
                       runner_command=scripted_runner("forge_and_a_decliner", FORGE_AND_DECLINER))
    swarm.spawn_all(["forge", "quill"])
    kinds = [*FORGE_WORK, *QUILL_WORK, "summarise the research", "book a table for two"]
    done = swarm.run([kinds[i % len(kinds)] for i in range(50)], timeout=25)
    assert len(done) == 50 and all(t.status in ("completed", "failed") for t in done)

    events = swarm.events()
    bids = swarm.bids()
    by_auction: dict[int, list[dict]] = {}
    for row in bids:
        by_auction.setdefault(row["auction_id"], []).append(row)
    opened = {e.event_id: e for e in events if e.kind == "auction_opened"}
    assert set(by_auction) <= set(opened)

    # Auctions of one task never overlap: each auction_opened is answered by the next
    # auction_closed for that task, which names the winner (None: nobody with room bid).
    current: dict[int, int] = {}
    winners: dict[int, str | None] = {}
    for e in events:
        if e.kind == "auction_opened":
            assert e.task_id not in current
            current[e.task_id] = e.event_id
        elif e.kind == "auction_closed":
            winners[current.pop(e.task_id)] = e.agent_id
    assert current == {} and set(winners) == set(opened)

    assigned = 0
    for auction_id, winner in winners.items():
        rows = by_auction.get(auction_id, [])
        assert {(r["task_id"], r["attempt"]) for r in rows} <= \
            {(opened[auction_id].task_id, opened[auction_id].data["attempt"])}
        won = [r["agent_id"] for r in rows if r["won"]]
        assert won == ([winner] if winner is not None else []), (auction_id, rows)
        assigned += winner is not None
    assert assigned == sum(e.kind == "task_assigned" for e in events)
    per_attempt = Counter((e.task_id, e.data["attempt"]) for e in opened.values())
    assert max(per_attempt.values()) > 1   # the case auction_id exists for did happen
    assert_every_bid_recorded(swarm)


@pytest.mark.timeout(20)
@pytest.mark.postgres
def test_the_bids_of_an_auction_cancelled_while_open_are_recorded_as_lost(
        make_swarm, scripted_runner, eventually):
    swarm = make_swarm(auction_window=30.0,
                       runner_command=scripted_runner("forge_only", FORGE_REAL_OTHERS_SILENT))
    swarm.spawn_all(["forge", "quill"])
    task = swarm.post("fix the bug in the api client")
    eventually(lambda: [e for e in swarm.events() if e.kind == "bid"], what="forge-1's bid")

    cancelled = swarm.cancel(task.task_id)

    assert cancelled.status == "cancelled"
    rows = swarm.bids(task.task_id)
    assert [(r["agent_id"], r["won"], r["attempt"]) for r in rows] == [("forge-1", False, 1)]
    opened = [e.event_id for e in swarm.events() if e.kind == "auction_opened"]
    assert [r["auction_id"] for r in rows] == opened
    assert_every_bid_recorded(swarm)


@pytest.mark.timeout(20)
def test_the_bid_of_a_runner_killed_mid_auction_is_recorded_as_lost(
        make_swarm, scripted_runner, eventually):
    swarm = make_swarm(auction_window=1.0,
                       runner_command=scripted_runner("forge_only", FORGE_REAL_OTHERS_SILENT))
    swarm.spawn_all(["forge", "quill"])
    task = swarm.post("fix the bug in the api client")
    eventually(lambda: [e for e in swarm.events() if e.kind == "bid"], what="forge-1's bid")

    swarm.kill("forge-1")   # quill-1 never answers: the auction stays open until its window
    done = swarm.wait(task.task_id, timeout=10)

    assert (done.status, done.assigned_agent) == ("completed", "forge-1")
    rows = swarm.bids(task.task_id)
    pairs = [(r["agent_id"], r["won"]) for r in rows]
    assert pairs[0] == ("forge-1", False)     # withdrawn when its runner died
    assert pairs[-1] == ("forge-1", True)     # the restarted runner's bid, in a later auction
    assert len({r["auction_id"] for r in rows}) == len(rows)
    assert_every_bid_recorded(swarm)
