"""`swarm.export(dir)` writes Parquet that DuckDB reads back: the same rows the swarm reports.

A real swarm runs real tasks into a SQLite file; the files it exports are read
with DuckDB's own `read_parquet` (no timmy code on the reading side).
"""

from __future__ import annotations

from collections import Counter

import duckdb
import pytest

TABLES = ("tasks", "bids", "agents", "events", "ledger", "reputation")


def query(con: duckdb.DuckDBPyConnection, sql: str, path) -> list[tuple]:
    return con.execute(sql.replace("{file}", f"read_parquet('{path}')")).fetchall()


@pytest.mark.timeout(30)
def test_exported_parquet_is_read_by_duckdb_with_the_swarms_rows(make_swarm, tmp_path):
    swarm = make_swarm()
    swarm.spawn_all()
    swarm.run([f"fix the bug in module {i}" for i in range(15)]
              + [f"write a blog article about topic {i}" for i in range(15)], timeout=20)
    tasks, bids, agents, events = swarm.tasks(), swarm.bids(), swarm.agents(), swarm.events()

    files = swarm.export(tmp_path / "runs" / "today")

    assert sorted(files) == sorted(TABLES)
    assert all(path.suffix == ".parquet" and path.exists() for path in files.values())
    assert sorted(p.name for p in (tmp_path / "runs" / "today").iterdir()) == \
        sorted(f"{t}.parquet" for t in TABLES)  # no temporary files left behind
    con = duckdb.connect()
    counts = {t: query(con, "SELECT count(*) FROM {file}", files[t])[0][0] for t in TABLES}
    assert counts == {"tasks": 30, "bids": len(bids), "agents": len(agents),
                      "events": len(events),
                      "ledger": sum(t.status == "completed" for t in tasks),
                      "reputation": sum(r["outcomes"] > 0 for r in swarm.reputation().values())}

    # The rows themselves, not just their number.
    assert query(con, "SELECT task_id, status, assigned_agent, price_sats, attempts "
                      "FROM {file} ORDER BY task_id", files["tasks"]) == \
        [(t.task_id, t.status, t.assigned_agent, t.price_sats, t.attempts) for t in tasks]
    assert dict(query(con, "SELECT agent_id, count(*) FROM {file} WHERE won "
                           "GROUP BY agent_id", files["bids"])) == \
        {a.agent_id: a.tasks_won for a in agents if a.tasks_won}
    assert Counter(dict(query(con, "SELECT kind, count(*) FROM {file} GROUP BY kind",
                              files["events"]))) == Counter(e.kind for e in events)
    assert query(con, "SELECT min(event_id), max(event_id) FROM {file}", files["events"]) == \
        [(1, len(events))]


@pytest.mark.timeout(30)
def test_an_empty_swarm_exports_every_table_with_its_columns_and_no_rows(make_swarm, tmp_path):
    swarm = make_swarm()
    files = swarm.export(tmp_path / "empty")
    con = duckdb.connect()
    for table in TABLES:
        assert query(con, "SELECT count(*) FROM {file}", files[table]) == [(0,)]
    columns = [row[0] for row in query(con, "DESCRIBE SELECT * FROM {file}", files["tasks"])]
    assert columns[:3] == ["task_id", "description", "status"]
    assert {"assigned_agent", "price_sats", "attempts", "reason"} <= set(columns)


@pytest.mark.timeout(30)
def test_exporting_again_replaces_the_files_with_the_current_rows(make_swarm, tmp_path):
    swarm = make_swarm(executor="echo")
    swarm.spawn("forge")
    out = tmp_path / "runs"
    swarm.run(["fix the bug"], timeout=10)
    first = swarm.export(out)
    swarm.run(["fix another bug", "fix a third bug"], timeout=10)
    second = swarm.export(out)

    assert first == second
    con = duckdb.connect()
    assert query(con, "SELECT count(*) FROM {file}", second["tasks"]) == [(3,)]
