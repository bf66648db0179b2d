"""One bad row never stops saving: wire fields bounded by their columns, and a row the
database still refuses is left out of its batch (logged, counted, an event) while the rest
of the batch is saved.

Real parts only: a real SQLite file or PostgreSQL schema, real runner processes, a real
``timmy serve`` with a remote runner speaking the wire over TCP. Where the database must
refuse a row timmy would otherwise write, the database is given a rule of its own (a CHECK
constraint on PostgreSQL, a trigger on SQLite), as a DBA might add, or the store is handed
values that only the database judges (a NUL character, a pid past 32 bits).
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from timmy import Swarm
from timmy.engine import protocol as p
from timmy.errors import ProtocolError, StoreError
from timmy.storage.store import Batch, Store

ROOT = Path(__file__).resolve().parent.parent
LISTENING = re.compile(r"listening on (tcp://[\d.]+:(\d+))")
NOW = 1_700_000_000.0


def execute(url: str, *statements: str) -> None:
    """Run statements in one transaction with plain SQLAlchemy (no timmy code)."""
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.begin() as conn:
            for sql in statements:
                conn.exec_driver_sql(sql)
    finally:
        engine.dispose()


def refuse_results_with(url: str, word: str) -> None:
    """Make the database itself refuse a task row whose result holds ``word``."""
    if url.startswith("sqlite"):
        execute(url, f"CREATE TRIGGER refuse_{word} BEFORE UPDATE OF result ON tasks "
                     f"WHEN instr(NEW.result, '{word}') > 0 "
                     f"BEGIN SELECT RAISE(ABORT, 'a result with {word} is refused'); END")
    else:
        execute(url, f"ALTER TABLE tasks ADD CONSTRAINT refuse_{word} "
                     f"CHECK (result IS NULL OR strpos(result, '{word}') = 0) NOT VALID")


# -- (a) every wire field bounded by its column ------------------------------------------


def test_a_hello_with_a_pid_past_32_bits_is_a_protocol_error():
    line = json.dumps({"v": 1, "type": "hello", "agent_id": "forge-1", "persona": "forge",
                       "pid": 3_000_000_000})
    with pytest.raises(ProtocolError, match="pid"):
        p.decode_runner(line)
    ok = p.decode_runner(line.replace("3000000000", str(2**31 - 1)))
    assert ok.pid == 2**31 - 1


class Service:
    """``timmy serve`` on ``url`` in a subprocess, with its own runners and a known token."""

    def __init__(self, url: str, cwd: Path) -> None:
        self.token = "t" * 43
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(ROOT), os.environ.get("PYTHONPATH", "")])}
        env.pop("TIMMY_TOKEN", None)
        self.err = cwd / "serve.err"
        with self.err.open("w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "timmy", "serve", "--db", url, "--port", "0",
                 "--token", self.token, "--seed", "1", "--task-seconds", "0",
                 "--executor", "echo"],
                cwd=cwd, stdout=subprocess.PIPE, stderr=err, text=True, env=env)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise AssertionError(f"timmy serve ended: {self.err.read_text()[-2000:]}")
            if m := LISTENING.search(line):
                self.url, self.port = m.group(1), int(m.group(2))
                return
        raise AssertionError("timmy serve did not start in 30s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.communicate(timeout=30)


def remote_hello(port: int, token: str, pid: int) -> tuple[socket.socket, object]:
    """A remote runner that joins as huge-1 and says hello with ``pid``."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    f = sock.makefile("rwb")
    f.write(json.dumps({"id": 1, "token": token, "op": "runner",
                        "args": {"persona": "forge", "agent_id": "huge-1"}}).encode() + b"\n")
    f.flush()
    welcome = json.loads(f.readline())
    assert welcome["ok"], welcome
    f.write(json.dumps({"v": 1, "type": "hello", "agent_id": "huge-1", "persona": "forge",
                        "pid": pid}).encode() + b"\n")
    f.flush()
    return sock, f


@pytest.mark.timeout(90)
@pytest.mark.postgres
def test_a_remote_runner_with_a_huge_pid_is_refused_at_hello_and_everything_keeps_saving(
        db_url, tmp_path, rows_of, eventually):
    svc = Service(db_url, tmp_path)
    sock = None
    try:
        sock, _ = remote_hello(svc.port, svc.token, 3_000_000_000)
        with Swarm.attach(svc.url, token=svc.token) as swarm:
            eventually(lambda: swarm.status()["protocol_errors"] >= 1, timeout=10,
                       what="the hello refused as a protocol error")
            done = swarm.run(["fix the bug in the api client", "write the docs for the api",
                              "design the logo"], timeout=30)
            status = swarm.status()
            agents = {a.agent_id: a for a in swarm.agents()}
        assert [t.status for t in done] == ["completed"] * 3
        assert status["store_error"] is None and status["rows_quarantined"] == 0
        assert agents["huge-1"].status != "idle" and agents["huge-1"].pid is None
        ids = [t.task_id for t in done]
        stored = dict(rows_of(db_url, "SELECT task_id, status FROM tasks"))
        assert [stored[i] for i in ids] == ["completed"] * 3
        kinds = [k for (k,) in rows_of(db_url, "SELECT kind FROM events")]
        assert kinds.count("task_completed") == 3 and "protocol_error" in kinds
        assert rows_of(db_url, "SELECT count(*) FROM bids")[0][0] >= 3
        assert rows_of(db_url, "SELECT pid FROM agents WHERE agent_id = 'huge-1'") in \
            ([], [(None,)])
    finally:
        if sock is not None:
            sock.close()
        svc.stop()


# -- (b) a row the database refuses is quarantined, the rest saved ------------------------


@pytest.mark.timeout(90)
@pytest.mark.postgres
def test_a_task_row_the_database_refuses_is_quarantined_and_the_rest_is_saved(
        make_swarm, db_url, rows_of, eventually):
    """Real runners (echo: the result is the description) complete three tasks; the database
    refuses the row of the one whose result says POISON. The other two, every bid and every
    event are saved; the refused task is stored completed without its result, with a reason
    that says so; status() counts it and a row_quarantined event names it."""
    swarm = make_swarm(executor="echo")
    refuse_results_with(db_url, "POISON")
    swarm.spawn_all(["forge", "quill"])
    work = ["fix the bug in the api client", "POISON: fix the parser bug",
            "write the docs for the api"]
    done = swarm.run(work, timeout=30)
    assert [t.status for t in done] == ["completed"] * 3
    ok, bad, ok2 = [t.task_id for t in done]

    def stored():
        rows = {r[0]: r[1:] for r in rows_of(
            db_url, "SELECT task_id, status, result, reason FROM tasks")}
        return rows if rows[bad][1] is None and rows[bad][0] == "completed" else None

    rows = eventually(stored, timeout=10, what="the refused task stored without its result")
    assert rows[ok] == ("completed", work[0], None) and rows[ok2] == ("completed", work[2], None)
    assert "database refused this task's row" in rows[bad][2]
    status = swarm.status()
    assert status["store_error"] is None
    assert status["rows_quarantined"] == 1 and "tasks" in status["last_quarantined"]
    events = rows_of(db_url, "SELECT kind, task_id, data FROM events ORDER BY event_id")
    kinds = [k for k, _, _ in events]
    assert kinds.count("task_completed") == 3
    [quarantined] = [json.loads(d) | {"task_id": t} for k, t, d in events
                     if k == "row_quarantined"]
    assert quarantined["table"] == "tasks" and quarantined["task_id"] == bad
    assert quarantined["key"] == str(bad) and quarantined["reason"]
    bids = dict(rows_of(db_url, "SELECT task_id, count(*) FROM bids GROUP BY task_id"))
    assert all(bids.get(t, 0) >= 1 for t in (ok, bad, ok2)), bids
    # ... and the swarm goes on saving.
    [later] = swarm.run(["fix another bug in the api client"], timeout=30)
    eventually(lambda: dict(rows_of(db_url, "SELECT task_id, status FROM tasks"))
               [later.task_id] == "completed", what="a later task saved")


@pytest.mark.postgres
def test_the_store_leaves_out_the_rows_it_cannot_write_and_writes_the_rest(db_url):
    """A batch with values that only the database judges: a NUL in a result (PostgreSQL's
    text refuses it, SQLite's takes it), a lone surrogate (no UTF-8 database takes it), a
    pid and a task id past 32 bits (a server's INTEGER refuses them). Each refused row is
    returned, named by table, key and column; all the other rows are written."""
    store = Store(db_url)
    store.recover(3, NOW, "the test")
    ids = [t.task_id for t in store.insert_tasks([f"task {i}" for i in range(6)], NOW)]

    def change(result):
        return {"status": "completed", "assigned_agent": None, "price_sats": 10,
                "attempts": 1, "result": result, "reason": None, "assigned_at": NOW,
                "completed_at": NOW + 1}

    results = ["fine", "a NUL \x00 here", "a lone \ud800 surrogate", "fine", "fine", "fine"]
    agent = {"agent_id": "forge-1", "persona": "forge", "name": "Forge", "pid": 3_000_000_000,
             "status": "idle", "restarts": 0, "tasks_won": 0, "earned_sats": 0,
             "joined_at": NOW}
    good = dict(agent, agent_id="quill-1", persona="quill", name="Quill", pid=4242)
    batch = Batch(
        tasks={t: change(r) for t, r in zip(ids, results, strict=True)},
        bids=[(t, 1, 1, "quill-1", 10, True, True, "lowest", NOW) for t in ids],
        events=[(100 + i, NOW, "bid", ids[0], "quill-1", "{}") for i in range(40)]
        + [(200, NOW, "bid", 2**40, "quill-1", "{}")],
        agents={"forge-1": agent, "quill-1": good})
    refused = store.apply(batch)
    server = store.engine.dialect.name != "sqlite"
    got = {(r.table, r.key, r.column) for r in refused}
    expected = {("tasks", ids[2], "result")}
    if server:
        expected |= {("tasks", ids[1], "result"), ("agents", "forge-1", "pid"),
                     ("events", 200, "task_id")}
    assert got == expected, refused
    assert all(r.reason and r.table in r.describe() for r in refused)
    tasks = {t.task_id: t for t in store.tasks()}
    for i, t in enumerate(ids):
        if ("tasks", t, "result") not in got:
            assert (tasks[t].status, tasks[t].result) == ("completed", results[i])
        else:
            assert tasks[t].status == "queued"
    assert len(store.bids()) == len(ids)
    assert len(store.events()) == 41 - (1 if server else 0)
    assert {a.agent_id for a in store.agents()} == ({"quill-1"} if server else
                                                    {"quill-1", "forge-1"})
    store.dispose()


@pytest.mark.postgres
def test_a_post_the_database_refuses_says_so_instead_of_blaming_the_server(db_url):
    """A StoreError for a refused value names it and does not send the reader to check the
    server: here a description past what a server's text takes (a NUL, PostgreSQL) or a lone
    surrogate (any database), straight to the store, below the swarm's own checks."""
    store = Store(db_url)
    store.recover(3, NOW, "the test")
    with pytest.raises(StoreError) as caught:
        store.insert_tasks(["a lone \ud800 surrogate"], NOW)
    assert "refused the task's row: tasks.description" in caught.value.message
    assert "surrogate" in caught.value.message, caught.value.message
    assert "server is running" not in caught.value.hint and "post it again" in caught.value.hint
    store.insert_tasks(["the next post is fine"], NOW)
    store.dispose()
