"""Bounded history: every list is a page, a cursor walks the pages, nothing loads it all.

A store is filled straight through SQL with more rows than a page (as months of
history would leave it), then read through the store, the engine facade, a real
``timmy serve`` and `timmy run`. What each asked the database is seen through
SQLAlchemy's own statement events on the real engine.
"""

from __future__ import annotations

import re
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from test_service import ServiceProcess

from timmy.cli.app import cli
from timmy.paging import DEFAULT_LIMIT, MAX_LIMIT
from timmy.storage.store import Store, bids_table, events_table, tasks_table

pytestmark = pytest.mark.postgres

N_TASKS = 2 * DEFAULT_LIMIT + 37      # two full pages and a bit


def fill(url: str, n_tasks: int, bids_per_task: int = 2, events_per_task: int = 2) -> None:
    """History as a swarm leaves it: completed tasks, their bids (one won) and events."""
    store = Store(url)
    now = time.time()
    tasks = [{"task_id": i, "description": f"old task {i}", "status": "completed",
              "assigned_agent": "forge-1", "price_sats": 30, "attempts": 1,
              "created_at": now, "assigned_at": now, "completed_at": now}
             for i in range(1, n_tasks + 1)]
    bids = [{"task_id": i, "attempt": 1, "auction_id": i, "agent_id": f"forge-{k + 1}",
             "sats": 30 + k, "on_spec": True, "won": k == 0, "rule": "specialist_first",
             "created_at": now} for i in range(1, n_tasks + 1) for k in range(bids_per_task)]
    events = [{"event_id": e, "ts": now, "kind": "task_completed",
               "task_id": (e - 1) // events_per_task + 1, "agent_id": "forge-1", "data": "{}"}
              for e in range(1, n_tasks * events_per_task + 1)]
    with store.engine.begin() as conn:
        for table, rows in ((tasks_table, tasks), (bids_table, bids), (events_table, events)):
            conn.execute(table.insert(), rows)
        if conn.dialect.name == "postgresql":   # explicit ids: move the sequences on
            for table, key in ((tasks_table, "task_id"), (bids_table, "bid_id")):
                conn.exec_driver_sql(
                    f"SELECT setval(pg_get_serial_sequence('{table.name}', '{key}'), "
                    f"(SELECT max({key}) FROM {table.name}))")
    store.dispose()


@contextmanager
def statements():
    """Every SQL statement any engine of this process runs meanwhile, with its parameters."""
    seen: list[tuple[str, object]] = []

    def record(_conn, _cursor, statement, parameters, _context, _many) -> None:
        seen.append((statement, parameters))

    sa.event.listen(sa.engine.Engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        sa.event.remove(sa.engine.Engine, "before_cursor_execute", record)


def walked(page, key, start=0) -> list:
    """Ids from walking ``page(after=cursor)`` forward until a short page."""
    ids, cursor = [], start
    while True:
        rows = page(cursor)
        ids += [key(r) for r in rows]
        if len(rows) < DEFAULT_LIMIT:
            return ids
        cursor = key(rows[-1])


def test_store_lists_are_one_page_and_cursors_walk_every_row_once(db_url):
    fill(db_url, N_TASKS)
    store = Store(db_url)
    every_task = list(range(1, N_TASKS + 1))

    newest = store.tasks()
    assert [t.task_id for t in newest] == every_task[-DEFAULT_LIMIT:]   # oldest first
    assert walked(lambda c: store.tasks(after=c), lambda t: t.task_id) == every_task
    assert [t.task_id for t in store.tasks("completed", 5, before=11)] == [6, 7, 8, 9, 10]

    bids = store.bids()
    assert len(bids) == DEFAULT_LIMIT and bids[-1]["bid_id"] == 2 * N_TASKS
    assert walked(lambda c: store.bids(after=c), lambda b: b["bid_id"]) == \
        list(range(1, 2 * N_TASKS + 1))
    assert [(b["task_id"], b["won"]) for b in store.bids(task_id=7)] == [(7, True), (7, False)]

    events = store.events()
    assert [e.event_id for e in events] == list(range(2 * N_TASKS - DEFAULT_LIMIT + 1,
                                                      2 * N_TASKS + 1))
    assert walked(lambda c: store.events(after=c), lambda e: e.event_id) == \
        list(range(1, 2 * N_TASKS + 1))
    backward, cursor = [], None
    while page := store.events(before=cursor, limit=DEFAULT_LIMIT) if cursor else \
            store.events():
        backward = [e.event_id for e in page] + backward
        cursor = page[0].event_id
        if cursor == 1:
            break
    assert backward == list(range(1, 2 * N_TASKS + 1))
    store.dispose()


def test_the_swarm_pages_and_its_iterators_see_every_row_once(db_url, make_swarm):
    fill(db_url, N_TASKS)
    with make_swarm() as swarm:
        swarm.spawn("forge")
        done = swarm.wait(swarm.post("fix the bug in the api client").task_id, timeout=10)
        assert done.status == "completed"
        assert len(swarm.tasks()) == DEFAULT_LIMIT and swarm.tasks()[-1] == done
        assert [t.task_id for t in swarm.iter_tasks()] == list(range(1, done.task_id + 1))
        assert [t.task_id for t in swarm.iter_tasks("completed", after=N_TASKS - 3,
                                                    page=2)] == \
            [N_TASKS - 2, N_TASKS - 1, N_TASKS, done.task_id]
        assert len(swarm.bids()) == DEFAULT_LIMIT
        bid_ids = [b["bid_id"] for b in swarm.iter_bids()]
        assert bid_ids == sorted(set(bid_ids)) and len(bid_ids) > 2 * N_TASKS
        assert {b["task_id"] for b in swarm.iter_bids(after=2 * N_TASKS)} == {done.task_id}
        events = [e.event_id for e in swarm.iter_events()]
        assert events == list(range(1, events[-1] + 1)) and len(swarm.events()) == DEFAULT_LIMIT
        assert [a.agent_id for a in swarm.iter_agents(page=1)] == ["forge-1"]
        # the counts are the whole history's, without reading it
        assert swarm.status()["tasks"] == {"completed": N_TASKS + 1}


def test_the_async_swarm_pages_and_walks_with_async_for(db_url):
    import anyio

    from timmy import AsyncSwarm

    fill(db_url, N_TASKS)

    async def main():
        async with AsyncSwarm(db_url, seed=1, task_seconds=0) as swarm:
            page = await swarm.tasks(limit=3, before=N_TASKS)
            walked = [t.task_id async for t in swarm.iter_tasks(after=5)]
            bids = [b["bid_id"] async for b in swarm.iter_bids(N_TASKS)]
            events = [e.event_id async for e in swarm.iter_events(page=999)]
            return [t.task_id for t in page], walked, bids, events

    page, walked, bids, events = anyio.run(main)
    assert page == [N_TASKS - 3, N_TASKS - 2, N_TASKS - 1]
    assert walked == list(range(6, N_TASKS + 1))
    assert bids == [2 * N_TASKS - 1, 2 * N_TASKS]
    assert events == list(range(1, 2 * N_TASKS + 1))


def test_status_reads_no_task_rows(db_url, make_swarm):
    fill(db_url, 50)
    with make_swarm() as swarm:
        swarm.spawn("forge")
        swarm.wait(swarm.post("fix the bug in the api client").task_id, timeout=10)
        with statements() as seen:
            counts = swarm.status()["tasks"]
        assert counts == {"completed": 51}
        assert not [s for s, _ in seen if re.search(r"\bFROM\s+tasks\b", s, re.I)], seen


def _old_database(url: str) -> None:
    """A timmy database as one made before its indexes were: the tables, no index."""
    store = Store(url)
    with store.engine.begin() as conn:
        for table in (tasks_table, bids_table):
            for index in table.indexes:
                index.drop(conn, checkfirst=True)
    store.dispose()


def test_opening_an_old_database_creates_its_indexes(db_url):
    _old_database(db_url)
    engine = Store(db_url, create=False).engine     # only reading: nothing is changed
    assert not {i["name"] for i in sa.inspect(engine).get_indexes("tasks")}
    Store(db_url)
    named = {i["name"]: i["column_names"] for t in ("tasks", "bids")
             for i in sa.inspect(engine).get_indexes(t)}
    assert named["ix_tasks_status"] == ["status"] and named["ix_bids_task_id"] == ["task_id"]
    if engine.dialect.name == "postgresql":
        assert named["ix_tasks_status_task_id"] == ["status", "task_id"]


def test_the_service_caps_a_page_and_the_attached_client_walks_them(tmp_path):
    db = Path(tmp_path / "served.db")
    fill(f"sqlite:///{db}", MAX_LIMIT + 5, bids_per_task=1, events_per_task=1)
    svc = ServiceProcess(db)
    try:
        with svc.attach() as swarm:
            assert len(swarm.tasks(limit=10**9)) == MAX_LIMIT          # asked for all of it
            assert len(swarm.events(after=0, limit=10**9)) == MAX_LIMIT
            assert len(swarm.bids(limit=10**9)) == MAX_LIMIT
            newest = swarm.tasks()
            assert [t.task_id for t in newest] == list(range(MAX_LIMIT + 6 - DEFAULT_LIMIT,
                                                             MAX_LIMIT + 6))
            assert [t.task_id for t in swarm.iter_tasks(page=MAX_LIMIT)] == \
                list(range(1, MAX_LIMIT + 6))
            assert [t.task_id for t in swarm.tasks(before=4)] == [1, 2, 3]
            assert [b["bid_id"] for b in swarm.iter_bids(after=MAX_LIMIT - 2)] == \
                [MAX_LIMIT - 1, MAX_LIMIT, *range(MAX_LIMIT + 1, MAX_LIMIT + 6)]
            events = [e.event_id for e in swarm.iter_events()]
            assert events[:MAX_LIMIT + 5] == list(range(1, MAX_LIMIT + 6))
            assert swarm.status()["tasks"]["completed"] == MAX_LIMIT + 5
    finally:
        svc.stop()


def test_timmy_run_asks_only_for_its_own_bids(tmp_path):
    url = f"sqlite:///{tmp_path / 'history.db'}"
    fill(url, N_TASKS)                                   # bids 1 .. 2 * N_TASKS are history
    tasks = tmp_path / "tasks.txt"
    tasks.write_text("fix the bug in the api client\nwrite the docs for the parser\n")
    with statements() as seen:
        result = CliRunner().invoke(cli, ["run", str(tasks), "--db", url, "--task-seconds", "0",
                                          "--seed", "1"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert re.search(r"all\W+2\W+2\W+0\W", result.output), result.output   # 2 won, 2 done
    asked = [(s, p) for s, p in seen if re.search(r"\bFROM\s+bids\b", s, re.I)]
    assert asked
    for statement, params in asked:
        assert re.search(r"\bLIMIT\b", statement, re.I), statement
        if "bid_id >" in statement:    # walking the run's bids: from where the run began
            assert params[0] >= 2 * N_TASKS, (statement, params)
        else:                          # the mark: the newest bid before the run, one row
            assert "DESC" in statement and 1 in params


def test_a_dashboard_loads_the_recent_window_and_the_inspector_its_task(db_url, make_swarm):
    pytest.importorskip("ipywidgets")
    from timmy.widgets import desktop

    fill(db_url, N_TASKS)
    with make_swarm() as swarm:
        swarm.spawn("forge")
        done = swarm.wait(swarm.post("fix the bug in the api client").task_id, timeout=10)
        with statements() as seen:
            box = desktop(swarm)
            inspector = box.console.inspector
            inspector.refresh(5)                      # an old task, far below the window
        try:
            rows = box.console.state.tasks
            assert len(rows) <= DEFAULT_LIMIT and next(reversed(rows)) == done.task_id
            assert inspector.pick.value == 5 and "old task 5" in inspector.output.value
            assert [s["agent_id"] for s in inspector.stories[0].bids] == ["forge-1", "forge-2"]
            for statement, _ in seen:
                if re.search(r"\bFROM\s+(tasks|bids|events)\b", statement, re.I):
                    assert re.search(r"\bLIMIT\b|task_id = ", statement, re.I), statement
        finally:
            box.close()


@pytest.mark.timeout(150)
def test_the_history_benchmark_prints_its_figures(tmp_path):
    import subprocess
    import sys

    script = Path(__file__).resolve().parent.parent / "benchmarks" / "history.py"
    out = subprocess.run([sys.executable, str(script), "--sizes", "0,2000", "--repeats", "2",
                          "--warm", "10", "--cache", str(tmp_path)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "status() ms" in out.stdout and "page load ms" in out.stdout
    assert re.search(r"^\s+2,000 .*\(x", out.stdout, re.M), out.stdout


def test_analytics_of_a_live_store_reads_it_from_disk_not_memory(db_url):
    pytest.importorskip("duckdb")
    import gc

    from timmy import analytics

    fill(db_url, N_TASKS)
    con = analytics.connect(db_url)
    views = dict(con.execute("SELECT view_name, sql FROM duckdb_views() "
                             "WHERE NOT internal").fetchall())
    assert {"tasks", "bids", "agents", "events"} <= set(views)
    where = re.search(r"read_parquet\('([^']+)/tasks\.parquet'\)", views["tasks"])
    assert where, views["tasks"]                 # a view over a file, not an in-memory table
    assert con.execute("SELECT count(*), max(task_id) FROM tasks").fetchone() == \
        (N_TASKS, N_TASKS)
    assert con.execute("SELECT count(*) FROM bids WHERE won").fetchone() == (N_TASKS,)
    con.close()
    del con
    gc.collect()
    assert not Path(where.group(1)).exists()     # the snapshot went with the connection
