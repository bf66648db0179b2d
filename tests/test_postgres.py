"""PostgreSQL for real: one owner per database across processes, a takeover that loses and
repeats nothing, a fenced-out owner that stops, errors that say what to do, the service on
a PostgreSQL store, and the benchmark.

Each test gets a schema of its own on the session's server (see conftest.py: ``pg_url``);
without a server they are skipped, or fail when CI is set. The tests marked ``postgres``
also run on SQLite: what PostgreSQL cannot store is refused or replaced on every store.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import zlib
from collections import Counter
from pathlib import Path

import psutil
import pytest
import sqlalchemy as sa

import timmy
from timmy.errors import ConfigError, OwnershipLost, PersonaError, StoreError
from timmy.market.personas import persona_from_dict
from timmy.storage import ownership
from timmy.storage.store import Store

FIX = "fix the bug in the api client"
TERMINAL = {"completed", "failed", "cancelled"}
LISTENING = re.compile(r"listening on (tcp://[\d.]+:\d+)")


def with_url(url: str, **parts) -> str:
    return sa.engine.make_url(url).set(**parts).render_as_string(hide_password=False)


def completions(rows_of, url: str) -> Counter:
    """How many task_completed events each task has in the database."""
    return Counter(t for (t,) in rows_of(url, "SELECT task_id FROM events "
                                              "WHERE kind = 'task_completed'"))


def running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def gone(pids: list[int], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(running(p) for p in pids):
            return True
        time.sleep(0.05)
    return False


# -- one owner per database, across processes ----------------------------------------


@pytest.mark.timeout(60)
def test_a_second_swarm_process_is_refused_naming_the_owner_and_changes_nothing(
        pg_url, start_owner, rows_of, tmp_path):
    owner, report = start_owner(
        swarm={"db": pg_url, "seed": 1, "task_seconds": 30.0, "auction_window": 1.0},
        personas=["forge", "quill"], descriptions=[FIX, "write the release notes"], running=2)
    tasks_before = rows_of(pg_url, "SELECT * FROM tasks ORDER BY task_id")
    agents_before = rows_of(pg_url, "SELECT * FROM agents ORDER BY agent_id")

    second = subprocess.run(
        [sys.executable, "-m", "timmy", "serve", "--db", pg_url, "--port", "0", "--token", "t"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60)

    assert second.returncode != 0
    assert f"timmy swarm pid {owner.pid} " in second.stderr
    assert "in use by another swarm" in second.stderr and "hint:" in second.stderr
    assert sa.engine.make_url(pg_url).password not in second.stderr + second.stdout
    assert rows_of(pg_url, "SELECT * FROM tasks ORDER BY task_id") == tasks_before
    assert rows_of(pg_url, "SELECT * FROM agents ORDER BY agent_id") == agents_before
    assert sorted(report["tasks"].values()) == ["running", "running"]


@pytest.mark.timeout(90)
def test_after_the_owner_dies_the_next_swarm_takes_over_and_nothing_is_done_twice_or_lost(
        pg_url, start_owner, rows_of, eventually):
    posted_work = [f"{FIX} #{i}" for i in range(12)] + [f"write post {i}" for i in range(12)]
    owner, report = start_owner(
        swarm={"db": pg_url, "seed": 1, "task_seconds": 0.3, "auction_window": 1.0},
        personas=["forge", "quill"], descriptions=posted_work, running=2)
    done_before = {t for t, s in report["tasks"].items() if s == "completed"}
    os.killpg(owner.pid, signal.SIGKILL)   # the owner and its runners, at once
    owner.wait()

    # The server frees the dead owner's lock as soon as it sees its connection close.
    swarm = eventually(lambda: _start_or_none(pg_url), timeout=10, what="the lock freed")
    try:
        swarm.spawn_all(["forge", "quill"])
        finished = [swarm.wait(t, timeout=30) for t in report["posted"]]
        assert {t.status for t in finished} <= {"completed", "failed"}
        events = swarm.events()
    finally:
        swarm.close()

    stored = dict(rows_of(pg_url, "SELECT task_id, status FROM tasks"))
    assert sorted(stored) == sorted(report["posted"])          # none lost, none invented
    assert set(stored.values()) <= {"completed", "failed"}
    counts = completions(rows_of, pg_url)
    assert max(counts.values()) == 1                            # none completed twice
    assert set(counts) == {t for t, s in stored.items() if s == "completed"}
    assigned_later = {e.task_id for e in events if e.kind == "task_assigned"
                      and e.agent_id.endswith("-2")}
    assert not assigned_later & done_before                     # finished work is not redone
    assert [e.event_id for e in events] == list(range(1, len(events) + 1))


def _start_or_none(url: str) -> timmy.Swarm | None:
    swarm = timmy.Swarm(db=url, seed=1, task_seconds=0, auction_window=1.0)
    try:
        return swarm.start()
    except StoreError as exc:
        swarm.close()
        if "in use" not in exc.message:
            raise
        return None


LOCK_HOLDERS = ("SELECT {what} FROM pg_locks WHERE locktype = 'advisory' AND granted "
                "AND classid = :a AND objid = :b AND objsubid = 2")


def lock_key(rows_of, url: str) -> dict:
    """The advisory lock of the schema the URL works in, as timmy.storage.ownership keys it."""
    [(schema,)] = rows_of(url, "SELECT current_schema()")
    return {"a": ownership.LOCK_CLASS, "b": zlib.crc32(schema.encode()) & 0x7FFFFFFF}


def lock_sessions(rows_of, url: str) -> list[tuple]:
    """The server sessions holding the schema's lock."""
    return rows_of(url, LOCK_HOLDERS.format(what="pid"), **lock_key(rows_of, url))


def cut_lock_connection(rows_of, url: str) -> None:
    """End the session holding the schema's lock from the server side, as a restart would."""
    cut = rows_of(url, LOCK_HOLDERS.format(what="pg_terminate_backend(pid)"),
                  **lock_key(rows_of, url))
    assert cut == [(True,)]


@pytest.mark.timeout(60)
def test_a_swarm_whose_lock_connection_died_takes_the_lock_again(
        pg_url, rows_of, eventually, monkeypatch):
    monkeypatch.setattr(ownership, "CHECK_EVERY", 0.05)
    first = timmy.Swarm(db=pg_url, seed=1, task_seconds=0, auction_window=1.0).start()
    try:
        [(before,)] = lock_sessions(rows_of, pg_url)
        cut_lock_connection(rows_of, pg_url)
        [(after,)] = eventually(lambda: lock_sessions(rows_of, pg_url), what="the lock again")
        assert after != before
        with pytest.raises(StoreError, match="in use by another swarm"):
            timmy.Swarm(db=pg_url).start()
        first.spawn("forge")
        assert first.wait(first.post(FIX).task_id, timeout=10).status == "completed"
    finally:
        first.close()
    assert lock_sessions(rows_of, pg_url) == []


@pytest.mark.timeout(90)
def test_a_swarm_that_lost_its_lock_is_fenced_out_and_the_new_owner_finishes_its_work(
        pg_url, start_owner, rows_of, eventually, monkeypatch):
    monkeypatch.setattr(ownership, "CHECK_EVERY", 3600)   # it will not notice in time
    first = timmy.Swarm(db=pg_url, seed=1, task_seconds=30.0, auction_window=1.0)
    try:
        first.spawn_all(["forge", "quill"])
        posted = first.post_many([FIX, "write the release notes", "fix the next bug"])
        eventually(lambda: sum(t.status == "running" for t in first.tasks()) == 2,
                   what="two tasks running")
        runner_pids = [a.pid for a in first.agents()]
        # Its lock connection dies (a network cut, a server restart) and it does not notice.
        cut_lock_connection(rows_of, pg_url)

        second, _ = start_owner(
            swarm={"db": pg_url, "seed": 1, "task_seconds": 0.0, "auction_window": 1.0},
            personas=["forge", "quill"])
        eventually(lambda: {s for (s,) in rows_of(pg_url, "SELECT status FROM tasks")}
                   == {"completed"}, timeout=20, what="the new owner finishing the work")

        with pytest.raises(OwnershipLost) as caught:   # its next write fails ...
            first.post("one more task")
        assert f"pid {second.pid}" in caught.value.message and caught.value.hint
        with pytest.raises(OwnershipLost):              # ... and then it stops working
            first.wait(posted[0].task_id, timeout=10)
        assert gone(runner_pids), "the fenced-out swarm's runners still run"
        with pytest.raises(OwnershipLost):
            first.post("and another")
    finally:
        first.close()   # quietly: it said so when it happened

    assert completions(rows_of, pg_url) == Counter({t.task_id: 1 for t in posted})
    assert rows_of(pg_url, "SELECT count(*) FROM tasks") == [(3,)]


# -- errors that say what to do -----------------------------------------------------------


def test_no_server_at_the_url_is_a_store_error_with_a_hint(pg_url):
    url = with_url(pg_url, host="127.0.0.1", port=1)
    with pytest.raises(StoreError) as caught:
        timmy.Swarm(db=url).start()
    assert "no database server answers" in caught.value.message
    assert "start the server" in caught.value.hint


def test_a_wrong_password_is_a_store_error_that_does_not_show_it(pg_url):
    url = with_url(pg_url, password="not-the-password")
    with pytest.raises(StoreError) as caught:
        Store(url)
    if "refused the login" not in caught.value.message:
        pytest.skip(f"this server does not check passwords: {caught.value.message}")
    assert "not-the-password" not in str(caught.value)
    assert "user name and password" in caught.value.hint


def test_a_missing_database_is_a_store_error_that_says_how_to_create_it(pg_url):
    url = with_url(pg_url, database="no_such_timmy_db")
    with pytest.raises(StoreError) as caught:
        timmy.Swarm(db=url).start()
    assert "does not exist" in caught.value.message and "createdb" in caught.value.hint


def test_reading_a_postgres_database_without_timmys_tables_is_refused(pg_url):
    with pytest.raises(StoreError, match="not a timmy database"):
        Store(pg_url, create=False)
    assert Store(pg_url, create=True).tasks() == []


# -- what a PostgreSQL text column cannot hold (refused or replaced on every store) -------


@pytest.mark.postgres
def test_a_description_with_a_nul_character_is_refused_before_it_is_stored(make_swarm):
    swarm = make_swarm(executor="echo")
    with pytest.raises(ConfigError, match="NUL"):
        swarm.post("fix \x00 this")
    assert swarm.tasks() == []


@pytest.mark.postgres
@pytest.mark.timeout(30)
def test_a_result_with_nul_characters_is_stored_with_replacement_characters(
        make_swarm, scripted_runner):
    command = scripted_runner("nul_output", """
        hello()
        for msg in messages():
            if msg["type"] == "announce":
                say("bid", task_id=msg["task_id"], sats=20, on_spec=True)
            elif msg["type"] == "assign":
                say("result", task_id=msg["task_id"], ok=True, output="a\\u0000b",
                    elapsed_s=0.0)
    """)
    swarm = make_swarm(runner_command=command)
    swarm.spawn("forge")
    done = swarm.wait(swarm.post(FIX).task_id, timeout=10)
    assert (done.status, done.result) == ("completed", "a\ufffdb")
    assert swarm.tasks()[0].result == "a\ufffdb"


def test_a_persona_name_longer_than_the_agents_table_holds_is_refused():
    base = {"id": "scribe", "role": "Writer", "bid_base": 30, "bid_jitter": 5,
            "preferred_keywords": ["write"]}
    persona_from_dict(base | {"name": "n" * 128})
    with pytest.raises(PersonaError, match="128"):
        persona_from_dict(base | {"name": "n" * 129})


# -- the service on a PostgreSQL store ----------------------------------------------------


@pytest.mark.timeout(90)
def test_timmy_serve_on_postgres_posts_and_completes_tasks(pg_url, tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "timmy", "serve", "--db", pg_url, "--port", "0",
         "--task-seconds", "0", "--seed", "1", "--token", "pg-token"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        address = None
        for line in proc.stdout:
            if m := LISTENING.search(line):
                address = m.group(1)
                break
        assert address, f"timmy serve did not start: {proc.stderr.read()[-2000:]}"
        assert sa.engine.make_url(pg_url).password not in line   # the URL is shown masked
        with timmy.Swarm.attach(address, token="pg-token") as swarm:
            done = swarm.run([f"write the docs for module {i}" for i in range(30)], timeout=30)
            assert [t.status for t in done] == ["completed"] * 30
            tasks, status = swarm.tasks(), swarm.status()
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-2000:]
    assert "stopped" in out
    assert status["runners_live"] == 9 and status["tasks"] == {"completed": 30}
    store = Store(pg_url, create=False)
    try:
        assert store.tasks() == tasks
        assert {a.status for a in store.agents()} == {"stopped"}
    finally:
        store.dispose()


# -- the benchmark ------------------------------------------------------------------------


@pytest.mark.timeout(150)
def test_postgres_benchmark_prints_both_stores_and_the_ratio(pg_server_url):
    script = Path(__file__).resolve().parent.parent / "benchmarks" / "postgres.py"
    out = subprocess.run(
        [sys.executable, str(script), "--tasks", "40", "--runs", "1", "--latency-tasks", "10",
         "--pg", pg_server_url], capture_output=True, text=True, timeout=140)
    assert out.returncode == 0, out.stderr[-2000:]
    for store in ("sqlite", "pg", "pg-async"):
        assert re.search(rf"^  {store} +[\d,]+ tasks/s .* [\d.]+x sqlite$", out.stdout, re.M)
    assert "post->complete" in out.stdout and "p99" in out.stdout
    assert sa.engine.make_url(pg_server_url).password not in out.stdout
