"""Chaos soak (`timmy.ops.chaos`): 2,000 tasks through a real ``timmy serve`` whose runners are
SIGKILLed at random every ~200 ms and which is itself SIGKILLed and restarted twice.
Every task must end (completed, or failed with a reason after max_attempts), none lost,
duplicated or completed twice, bids and events agreeing with tasks, no orphan process.

``make soak`` runs the long version (``-m slow``); the audit's own checks are tested on
stores broken on purpose, so a soak that passes means something.
"""

from __future__ import annotations

import os
import shutil
import sqlite3

import pytest

from timmy.ops.chaos import audit, soak
from timmy.sim.workloads import demo_descriptions


def check(report, max_attempts: int = 3) -> None:
    print("\n".join(report.lines()))
    assert report.audit.problems == []
    assert report.orphans == []
    assert report.audit.tasks == report.tasks
    assert set(report.audit.by_status) <= {"completed", "failed"}
    assert report.audit.by_status.get("completed", 0) > report.tasks // 2
    assert report.runner_kills >= 3
    assert report.service_kills == 2


@pytest.fixture(scope="module")
def soaked(tmp_path_factory):
    db = tmp_path_factory.mktemp("soak") / "soak.db"
    work = demo_descriptions(2_000, 7)
    return db, work, soak(db, work, kill_every=0.2, service_kills=2, task_seconds=0.02,
                          seed=7)


@pytest.mark.timeout(600)
def test_nothing_is_lost_under_runner_and_service_kills(soaked):
    db, _, report = soaked
    check(report)
    con = sqlite3.connect(db)
    failed = con.execute("SELECT attempts, reason FROM tasks WHERE status='failed'").fetchall()
    con.close()
    assert all(attempts == 3 and reason for attempts, reason in failed), failed[:5]


def broken_copy(soaked, tmp_path, sql: str) -> str:
    db, _, _ = soaked
    copy = tmp_path / "broken.db"
    shutil.copy(db, copy)
    con = sqlite3.connect(copy)
    con.execute(sql)
    con.commit()
    con.close()
    return str(copy)


@pytest.mark.parametrize(("sql", "needle"), [
    ("DELETE FROM tasks WHERE task_id = 5", "posted tasks are missing"),
    ("INSERT INTO tasks (description, status, attempts, created_at, reason) "
     "SELECT description, 'failed', 1, created_at, 'x' FROM tasks WHERE task_id = 9",
     "not posted (or stored twice)"),
    ("UPDATE tasks SET status = 'running' WHERE task_id = 3", "never ended"),
    ("INSERT INTO events (event_id, ts, kind, task_id, agent_id, data) SELECT "
     "event_id + 10000000, ts, kind, task_id, agent_id, data FROM events "
     "WHERE kind = 'task_completed' LIMIT 1", "terminal events"),
    ("UPDATE bids SET won = 0 WHERE task_id = (SELECT MIN(task_id) FROM tasks "
     "WHERE status = 'completed')", "no bid of its says it won"),
    ("UPDATE tasks SET reason = NULL WHERE status = 'failed'", "failed without a reason"),
    ("UPDATE tasks SET attempts = 4 WHERE task_id = 2", "attempts (max 3)"),
], ids=["lost", "duplicated", "unfinished", "completed-twice", "bids-disagree",
        "no-reason", "too-many-attempts"])
def test_the_audit_finds_what_is_broken(soaked, tmp_path, sql, needle):
    _, work, _ = soaked
    problems = audit(broken_copy(soaked, tmp_path, sql), work).problems
    assert any(needle in p for p in problems), problems


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_long_soak(tmp_path):
    """``make soak``: 20,000 tasks (SOAK_TASKS), runners killed every ~200 ms, five service
    SIGKILLs."""
    n = int(os.environ.get("SOAK_TASKS", "20000"))
    report = soak(tmp_path / "soak.db", demo_descriptions(n, 11), kill_every=0.2,
                  service_kills=5, task_seconds=0.02, seed=11, timeout=3000, progress=True)
    print("\n".join(report.lines()))
    assert report.ok, report.audit.problems[:10]
    assert report.service_kills == 5


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_a_service_stopped_for_40s_mid_soak_costs_no_attempt_and_kills_no_runner(tmp_path):
    """``make soak``: the chaos soak with the service SIGSTOPped for 40 s (SOAK_STALL) halfway
    through, past its 30 s ping timeout: what a laptop's sleep does to it."""
    n = int(os.environ.get("SOAK_STALL_TASKS", "3000"))
    stall = float(os.environ.get("SOAK_STALL", "40"))
    report = soak(tmp_path / "soak.db", demo_descriptions(n, 13), kill_every=0.2,
                  service_kills=2, task_seconds=0.02, seed=13, timeout=1100, stall=stall)
    print("\n".join(report.lines()))
    assert report.audit.problems == [] and report.orphans == []
    assert report.stall is not None and report.stall.stopped_s >= stall
    assert report.stall.noticed_s >= stall - 5   # less what it meant to sleep (ping_interval)
    assert (report.stall.hung, report.stall.crashed, report.stall.attempts_lost) == (0, 0, 0)
    assert report.ok
