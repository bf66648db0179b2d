"""The store on its own, on an SQLite file and again on PostgreSQL: what is written is what is
read back, a batch is all or nothing, recovery takes over what a dead coordinator left, and
the ownership epoch fences out a coordinator that was taken over."""

from __future__ import annotations

import threading

import pytest
import sqlalchemy as sa

from timmy.errors import OwnershipLost, StoreError, TaskNotFound
from timmy.storage.store import (
    BID_COLUMNS,
    EVENT_COLUMNS,
    SCHEMA_VERSION,
    Batch,
    Store,
    meta_table,
)

pytestmark = pytest.mark.postgres

NOW = 1_700_000_000.25


@pytest.fixture
def store(db_url):
    s = Store(db_url)
    yield s
    s.dispose()


def agent_row(agent_id: str, status: str = "idle", **changes) -> dict:
    row = {"agent_id": agent_id, "persona": agent_id.split("-")[0], "name": agent_id.title(),
           "pid": 4242, "status": status, "restarts": 0, "tasks_won": 0, "earned_sats": 0,
           "joined_at": NOW}
    return row | changes


def task_change(**changes) -> dict:
    row = {"status": "queued", "assigned_agent": None, "price_sats": None, "attempts": 0,
           "result": None, "reason": None, "assigned_at": None, "completed_at": None}
    return row | changes


def event(event_id: int, kind: str = "note", task_id: int | None = None) -> tuple:
    return (event_id, NOW + event_id, kind, task_id, None, f'{{"n": {event_id}}}')


def test_posted_tasks_get_increasing_ids_one_at_a_time_and_many_at_once(store):
    one = store.insert_tasks(["fix the bug"], NOW)
    many = store.insert_tasks([f"write post {i}" for i in range(5)], NOW)
    again = store.insert_tasks(["draw a cat"], NOW)

    ids = [t.task_id for t in one + many + again]
    assert ids == list(range(1, 8))
    stored = store.tasks()
    assert [(t.task_id, t.description, t.status, t.attempts, t.created_at) for t in stored] == \
        [(t.task_id, t.description, "queued", 0, NOW) for t in one + many + again]


def test_a_batch_is_read_back_exactly_as_written(store):
    [task] = store.insert_tasks(["fix the bug in the api client"], NOW)
    bids = [(task.task_id, 1, 10, "forge-1", 38, True, True, "specialist_first", NOW),
            (task.task_id, 1, 10, "quill-1", 71, False, False, "specialist_first", NOW)]
    store.apply(Batch(
        tasks={task.task_id: task_change(status="completed", assigned_agent="forge-1",
                                         price_sats=38, attempts=1, result="ünïcode ✓ done",
                                         assigned_at=NOW + 1, completed_at=NOW + 2)},
        bids=bids,
        events=[event(1, "task_posted", task.task_id), event(2, "task_completed", task.task_id)],
        agents={"forge-1": agent_row("forge-1", tasks_won=1, earned_sats=38),
                "quill-1": agent_row("quill-1")},
    ))

    done = store.task(task.task_id)
    assert (done.status, done.assigned_agent, done.price_sats, done.attempts, done.result,
            done.assigned_at, done.completed_at) == \
        ("completed", "forge-1", 38, 1, "ünïcode ✓ done", NOW + 1, NOW + 2)
    rows = store.bids(task.task_id)
    assert [tuple(r[c] for c in BID_COLUMNS) for r in rows] == bids
    assert all(isinstance(r["won"], bool) and isinstance(r["on_spec"], bool) for r in rows)
    assert [(e.event_id, e.kind, e.data) for e in store.events()] == \
        [(1, "task_posted", {"n": 1}), (2, "task_completed", {"n": 2})]
    assert [(a.agent_id, a.tasks_won, a.earned_sats) for a in store.agents()] == \
        [("forge-1", 1, 38), ("quill-1", 0, 0)]
    assert store.next_event_id() == 3
    assert store.status_counts() == {"completed": 1}
    assert store.agent_counts() == {"forge": 1, "quill": 1}


def test_an_agent_is_inserted_once_then_updated(store):
    store.apply(Batch(agents={"forge-1": agent_row("forge-1", "starting")}))
    store.apply(Batch(agents={"forge-1": agent_row("forge-1", "busy", restarts=2)}))
    fresh = Store(store.url)   # a store that has not seen the agent yet must update it too
    fresh.apply(Batch(agents={"forge-1": agent_row("forge-1", "idle", restarts=3)}))

    assert [(a.agent_id, a.status, a.restarts) for a in store.agents()] == \
        [("forge-1", "idle", 3)]


def test_a_row_the_database_refuses_is_left_out_of_its_batch_and_the_rest_written(store):
    store.apply(Batch(events=[event(1)]))
    [task] = store.insert_tasks(["fix the bug"], NOW)

    # Event 1 exists (a batch retried after its commit's answer was lost): that row is
    # refused and returned, the rest of the batch is written (see tests/test_bad_rows.py).
    refused = store.apply(Batch(tasks={task.task_id: task_change(status="bidding")},
                                events=[event(2), event(1)]))

    assert [(r.table, r.key) for r in refused] == [("events", 1)]
    assert refused[0].reason
    assert store.task(task.task_id).status == "bidding"
    assert [e.event_id for e in store.events()] == [1, 2]


def test_events_page_after_an_id_with_a_limit(store):
    store.apply(Batch(events=[event(i) for i in range(1, 11)]))
    assert [e.event_id for e in store.events(after=3, limit=4)] == [4, 5, 6, 7]
    assert [e.event_id for e in store.events(after=10)] == []
    assert len(EVENT_COLUMNS) == 6


def test_tasks_by_status_by_id_and_the_newest(store):
    posted = store.insert_tasks([f"task {i}" for i in range(6)], NOW)
    store.apply(Batch(tasks={posted[1].task_id: task_change(status="failed"),
                             posted[4].task_id: task_change(status="failed")}))

    assert [t.task_id for t in store.tasks("failed")] == [2, 5]
    assert [t.task_id for t in store.tasks(["failed", "queued"], limit=2)] == [5, 6]
    assert [t.task_id for t in store.tasks(ids=[6, 1, 2**40])] == [1, 6]
    with pytest.raises(TaskNotFound):
        store.task(2**40)   # past a 32-bit id column: not found, not a database error


def test_recover_requeues_in_flight_work_and_fails_what_used_its_attempts(store):
    tasks = store.insert_tasks(["queued", "bidding", "assigned", "running", "done"], NOW)
    q, b, a, r, d = (t.task_id for t in tasks)
    store.apply(Batch(
        tasks={b: task_change(status="bidding"),
               a: task_change(status="assigned", assigned_agent="forge-1", attempts=1),
               r: task_change(status="running", assigned_agent="quill-1", attempts=2),
               d: task_change(status="completed", attempts=1, result="ok")},
        agents={"forge-1": agent_row("forge-1", "busy"), "quill-1": agent_row("quill-1", "busy"),
                "echo-1": agent_row("echo-1", "stopped")},
    ))

    waiting, requeued, failed = store.recover(max_attempts=2, now=NOW + 9)

    assert [t.task_id for t in waiting] == [q]
    assert [t.task_id for t in requeued] == [b, a]
    assert [t.task_id for t in failed] == [r]
    assert {t.task_id: t.status for t in store.tasks()} == \
        {q: "queued", b: "queued", a: "queued", r: "failed", d: "completed"}
    assert store.task(a).assigned_agent is None and "restart" in store.task(a).reason
    assert store.task(r).completed_at == NOW + 9
    assert {a.agent_id: (a.status, a.pid) for a in store.agents()} == \
        {"forge-1": ("lost", None), "quill-1": ("lost", None), "echo-1": ("stopped", 4242)}


def test_a_reader_refuses_a_database_without_timmys_tables(db_url):
    with pytest.raises(StoreError) as caught:
        Store(db_url, create=False)
    assert "not a timmy database" in caught.value.message and caught.value.hint
    Store(db_url).dispose()   # a writer creates them; then a reader opens it
    Store(db_url, create=False).dispose()


def test_a_database_of_a_newer_timmy_is_refused(store):
    with store.engine.begin() as conn:
        conn.execute(meta_table.update().where(meta_table.c.key == "schema_version")
                     .values(value=str(SCHEMA_VERSION + 1)))
    with pytest.raises(StoreError, match="newer than this timmy"):
        Store(store.url)


def test_a_store_that_was_taken_over_writes_nothing_more(db_url):
    old = Store(db_url)
    old.recover(max_attempts=3, now=NOW, owner="the old swarm")
    [kept] = old.insert_tasks(["fix the bug"], NOW)

    new = Store(db_url)
    new.recover(max_attempts=3, now=NOW, owner="the new swarm")

    for write in (lambda: old.insert_tasks(["one more"], NOW),
                  lambda: old.insert_tasks(["two", "more"], NOW),
                  lambda: old.apply(Batch(tasks={kept.task_id: task_change(status="failed")}))):
        with pytest.raises(OwnershipLost) as caught:
            write()
        assert "the new swarm" in caught.value.message and caught.value.hint
    assert [(t.task_id, t.status) for t in new.tasks()] == [(kept.task_id, "queued")]
    new.insert_tasks(["the new owner writes"], NOW)
    assert len(new.tasks()) == 2


@pytest.mark.postgres(only=True)   # SQLite: one owner per file by flock, no epoch
def test_a_takeover_waits_for_the_old_owners_write_in_progress(db_url):
    """The new owner's epoch bump queues behind a write that already checked the epoch, so
    that write is either wholly before the takeover (and recovered) or refused."""
    old = Store(db_url)
    old.recover(max_attempts=3, now=NOW, owner="the old swarm")
    [task] = old.insert_tasks(["fix the bug"], NOW)
    new = Store(db_url)
    took_over = threading.Event()

    with old.engine.begin() as conn:   # the old owner is in the middle of a batch
        old._check_owner(conn)
        conn.execute(sa.text("UPDATE tasks SET status = 'running', attempts = 1 "
                             "WHERE task_id = :t"), {"t": task.task_id})
        worker = threading.Thread(target=lambda: (new.recover(3, NOW, "the new swarm"),
                                                  took_over.set()))
        worker.start()
        assert not took_over.wait(0.5), "the takeover did not wait for the write in progress"
    worker.join(10)
    assert took_over.is_set()
    recovered = new.task(task.task_id)   # it saw the committed write and re-queued it
    assert (recovered.status, recovered.attempts) == ("queued", 1)
    assert "restart" in recovered.reason
