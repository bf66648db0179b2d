"""Bad input: every mistake is a `TimmyError` that names it and says what to do, and
nothing already stored is lost or changed by it.

Each case runs against a real SQLite file that already holds finished tasks;
after the bad call the tasks are read back (through the swarm, or with plain
sqlite3 when no swarm could start) and must be exactly what they were.
"""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

import pytest

from timmy import Swarm
from timmy.errors import (
    ConfigError,
    PersonaError,
    StoreError,
    SwarmClosed,
    TaskNotFound,
    TimmyError,
)

STORED = ["fix the bug in the api client", "write a blog article", "audit the firewall"]


def rows_on_disk(path: Path) -> list[tuple]:
    """Every task row, read with plain sqlite3 (no timmy code involved)."""
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT * FROM tasks ORDER BY task_id").fetchall()


def assert_explains(exc: BaseException, *names: str) -> None:
    """A TimmyError whose message names the problem and whose hint says what to do."""
    assert isinstance(exc, TimmyError), f"{type(exc).__name__}: {exc}"
    for name in names:
        assert name in exc.message, (name, exc.message)
    assert exc.hint.strip(), f"no hint for {exc.message!r}"
    assert exc.hint in str(exc)


def store_three_tasks(path: Path) -> tuple[str, list[tuple]]:
    url = f"sqlite:///{path}"
    with Swarm(db=url, seed=1, task_seconds=0, auction_window=1.0) as swarm:
        swarm.spawn_all(["forge", "quill"])
        swarm.run(STORED, timeout=10)
    rows = rows_on_disk(path)
    assert len(rows) == len(STORED)
    return url, rows


@pytest.fixture
def stored_db(db_path: Path) -> tuple[str, list[tuple]]:
    """A database holding three finished tasks (no swarm running on it now)."""
    return store_three_tasks(db_path)


@pytest.fixture(scope="module")
def shared_stored_db(tmp_path_factory) -> tuple[Path, str, list[tuple]]:
    """Like `stored_db`, shared by tests that must leave it exactly as it is."""
    path = tmp_path_factory.mktemp("stored") / "timmy.db"
    return (path, *store_three_tasks(path))


@pytest.fixture
def live(make_swarm):
    """A running swarm with one runner and three finished tasks."""
    swarm = make_swarm(executor="echo")
    swarm.spawn("forge")
    swarm.run(STORED, timeout=10)
    return swarm


# -- calls on a live swarm -----------------------------------------------------

LIVE_MISTAKES = [
    pytest.param(lambda s: s.post(""), ConfigError, ["empty"], id="empty description"),
    pytest.param(lambda s: s.post(" \n\t "), ConfigError, ["empty"], id="blank description"),
    pytest.param(lambda s: s.post("x" * 8001), ConfigError, ["8001", "8000"],
                 id="over-long description"),
    pytest.param(lambda s: s.post(42), ConfigError, ["string", "int"],
                 id="non-string description"),
    pytest.param(lambda s: s.post(None), ConfigError, ["string", "NoneType"],
                 id="None description"),
    pytest.param(lambda s: s.post_many(["fix it", "write it", ""]), ConfigError, ["empty"],
                 id="one bad description among good ones"),
    pytest.param(lambda s: s.post_many("fix the bug"), ConfigError, ["one string"],
                 id="post_many given one string"),
    pytest.param(lambda s: s.post("fix \ud800 this"), ConfigError, ["surrogate"],
                 id="description that cannot be encoded"),
    pytest.param(lambda s: s.spawn("nobody"), PersonaError, ["nobody"], id="unknown persona"),
    pytest.param(lambda s: s.spawn(7), PersonaError, ["string"], id="non-string persona"),
    pytest.param(lambda s: s.spawn_all(["quill", "nobody"]), PersonaError, ["nobody"],
                 id="unknown persona in spawn_all"),
    pytest.param(lambda s: s.wait(9999), TaskNotFound, ["9999"], id="wait on unknown task"),
    pytest.param(lambda s: s.wait("1"), TaskNotFound, ["'1'"], id="wait on non-integer id"),
    pytest.param(lambda s: s.wait(2**70), TaskNotFound, [str(2**70)],
                 id="task id out of range"),
    pytest.param(lambda s: s.task(9999), TaskNotFound, ["9999"], id="unknown task"),
    pytest.param(lambda s: s.tasks(status="complete"), ConfigError, ["'complete'"],
                 id="unknown status filter"),
    pytest.param(lambda s: s.cancel(9999), TaskNotFound, ["9999"], id="cancel unknown task"),
    pytest.param(lambda s: s.stop("ghost-1"), ConfigError, ["ghost-1"], id="stop unknown agent"),
    pytest.param(lambda s: s.kill("ghost-1"), ConfigError, ["ghost-1"], id="kill unknown agent"),
    pytest.param(lambda s: s.export(os.devnull), ConfigError, [os.devnull],
                 id="export into a file"),
    pytest.param(lambda s: s.export("out", fmt="xls"), ConfigError, ["xls"],
                 id="unknown export format"),
]


@pytest.mark.timeout(20)
@pytest.mark.parametrize(("mistake", "error", "names"), LIVE_MISTAKES)
def test_a_bad_call_on_a_live_swarm_explains_itself_and_loses_nothing(
        live, mistake, error, names, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before_tasks, before_agents = live.tasks(), live.agents()

    with pytest.raises(error) as caught:
        mistake(live)

    assert_explains(caught.value, *names)
    assert live.tasks() == before_tasks
    assert [a.agent_id for a in live.agents()] == [a.agent_id for a in before_agents]
    # ...and the swarm carries on.
    task = live.wait(live.post("fix the next bug").task_id, timeout=10)
    assert (task.status, task.task_id) == ("completed", len(before_tasks) + 1)


# -- bad configuration -----------------------------------------------------------

CONFIG_MISTAKES = [
    pytest.param({"rule": "cheapest"}, ["cheapest"], id="unknown rule"),
    pytest.param({"executor": "gpt"}, ["gpt"], id="unknown executor"),
    pytest.param({"auction_window": 0}, ["auction_window"], id="zero auction window"),
    pytest.param({"auction_window": -1.0}, ["auction_window"], id="negative auction window"),
    pytest.param({"auction_window": float("nan")}, ["auction_window"], id="NaN auction window"),
    pytest.param({"max_attempts": 0}, ["max_attempts"], id="zero max_attempts"),
    pytest.param({"max_attempts": 101}, ["max_attempts"], id="too many max_attempts"),
    pytest.param({"task_seconds": -1}, ["task_seconds"], id="negative task_seconds"),
    pytest.param({"seed": "one"}, ["seed"], id="non-integer seed"),
    pytest.param({"auction_window": "2"}, ["auction_window"], id="auction window as text"),
    pytest.param({"max_attempts": "3"}, ["max_attempts"], id="max_attempts as text"),
    pytest.param({"max_attempts": 2.5}, ["max_attempts"], id="fractional max_attempts"),
    pytest.param({"task_seconds": "0.1"}, ["task_seconds"], id="task_seconds as text"),
    pytest.param({"runner_queue": 0}, ["runner_queue"], id="zero runner_queue"),
]


@pytest.mark.timeout(20)
@pytest.mark.parametrize(("kwargs", "names"), CONFIG_MISTAKES)
def test_a_bad_setting_is_refused_before_anything_starts(shared_stored_db, kwargs, names):
    db_path, url, rows = shared_stored_db
    with pytest.raises(ConfigError) as caught:
        Swarm(db=url, **kwargs)
    assert_explains(caught.value, *names)
    assert rows_on_disk(db_path) == rows


# -- databases that cannot be used ---------------------------------------------------


@pytest.mark.timeout(20)
@pytest.mark.parametrize(("url", "names"), [
    pytest.param("notadialect://x", ["notadialect"], id="unknown dialect"),
    pytest.param("postgresql+psycopg://nobody@127.0.0.1:1/timmy", ["127.0.0.1"],
                 id="server not running"),
])
def test_a_bad_database_url_is_a_store_error(url, names):
    with pytest.raises(StoreError) as caught:
        Swarm(db=url).start()
    assert_explains(caught.value, *names)


def test_an_empty_database_is_refused_and_a_path_is_an_sqlite_file(tmp_path):
    with pytest.raises(ConfigError) as caught:
        Swarm(db="")
    assert "empty" in caught.value.message and "data/timmy.db" in caught.value.hint
    with Swarm(db=tmp_path / "plain path.db", task_seconds=0) as swarm:
        assert swarm.db == f"sqlite:///{tmp_path / 'plain path.db'}"
    assert (tmp_path / "plain path.db").exists()


@pytest.mark.timeout(20)
def test_a_directory_is_not_a_database(tmp_path):
    url = f"sqlite:///{tmp_path}"
    with pytest.raises(StoreError) as caught:
        Swarm(db=url).start()
    assert_explains(caught.value, str(tmp_path), "cannot be opened")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.timeout(20)
def test_a_file_that_is_not_a_database_is_refused_and_left_untouched(tmp_path):
    path = tmp_path / "x.db"
    garbage = bytes(range(256)) * 64
    path.write_bytes(garbage)
    with pytest.raises(StoreError) as caught:
        Swarm(db=f"sqlite:///{path}").start()
    assert_explains(caught.value, str(path), "not a valid database")
    assert path.read_bytes() == garbage


@pytest.mark.timeout(20)
def test_a_locked_database_is_a_store_error_and_keeps_its_tasks(stored_db, db_path):
    url, rows = stored_db
    holder = sqlite3.connect(db_path, isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        started = time.monotonic()
        with pytest.raises(StoreError) as caught:
            Swarm(db=url, db_timeout=0.2).start()
        assert time.monotonic() - started < 3, "gave up long after db_timeout"
        assert_explains(caught.value, "locked")
    finally:
        holder.rollback()
        holder.close()
    assert rows_on_disk(db_path) == rows
    with Swarm(db=url, db_timeout=0.2) as swarm:   # usable again once the lock is gone
        assert len(swarm.tasks()) == len(rows)


@pytest.mark.timeout(20)
def test_posting_while_another_writer_holds_the_lock_fails_cleanly_then_recovers(
        make_swarm, db_path):
    swarm = make_swarm(executor="echo", db_timeout=0.2)
    swarm.spawn("forge")
    done = swarm.run(STORED, timeout=10)
    holder = sqlite3.connect(db_path, isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        with pytest.raises(StoreError) as caught:
            swarm.post("fix the bug while locked")
        assert_explains(caught.value, "locked")
    finally:
        holder.rollback()
        holder.close()
    assert swarm.tasks() == done
    task = swarm.wait(swarm.post("fix the bug after the lock").task_id, timeout=10)
    assert (task.task_id, task.status) == (len(done) + 1, "completed")


# -- using a swarm wrongly ------------------------------------------------------------


@pytest.mark.timeout(20)
def test_waiting_too_long_is_a_wait_timeout_and_the_task_stays_queued(make_swarm):
    # one runner, busy for 60 s with room for one task: the next ones wait in the queue
    # (with no runner at all the wait would raise NoRunners at once: tests/test_stalled.py)
    swarm = make_swarm(task_seconds=60, runner_queue=1)
    swarm.spawn("forge")
    busy = swarm.post("fix the first bug")
    task = swarm.post("fix the bug in the api client")
    started = time.monotonic()
    with pytest.raises(TimeoutError) as caught:
        swarm.wait(task.task_id, timeout=0.3)
    assert 0.25 <= time.monotonic() - started < 3
    assert_explains(caught.value, f"task {task.task_id}", "queued")
    with pytest.raises(TimeoutError) as caught:
        swarm.run(["fix another bug"], timeout=0.3)
    assert_explains(caught.value, "1 of 1")
    states = {t.task_id: t.status for t in swarm.tasks()}
    assert states.pop(busy.task_id) in ("assigned", "running")
    assert states == {task.task_id: "queued", task.task_id + 1: "queued"}


@pytest.mark.timeout(20)
def test_a_closed_swarm_says_so_and_its_database_keeps_everything(db_url, db_path):
    with Swarm(db=db_url, seed=1, task_seconds=0, executor="echo") as swarm:
        swarm.spawn("forge")
        swarm.run(STORED, timeout=10)
    rows = rows_on_disk(db_path)
    for late_call in (lambda: swarm.post("one more"), lambda: swarm.tasks(),
                      lambda: swarm.spawn("forge")):
        with pytest.raises(SwarmClosed) as caught:
            late_call()
        assert_explains(caught.value, "closed")
    assert rows_on_disk(db_path) == rows
    assert [row[2] for row in rows] == ["completed"] * 3   # status column
