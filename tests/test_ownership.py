"""One live swarm per database, however its path is spelled; and the writes of an owner that
was taken over are fenced out on SQLite as on PostgreSQL.

Every owner here is a real process (the ``start_owner`` fixture of conftest, or ``timmy
serve``) on a real SQLite file or PostgreSQL schema. A second swarm reaches the same file
through a symlink, a hard link, a ``file:`` URI or a relative path from another directory:
it must be refused with a `StoreError` that names the owner's pid, and it must not have
touched the database (no migration, no recovery of the owner's running task).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from timmy import Swarm
from timmy.errors import StoreError
from timmy.storage.store import Store

# Holds the task it wins, running, until the file "go" appears beside it; then completes it.
# It reads no stdin meanwhile, so it leaves by itself when its owner is gone (no orphans).
HOLD_UNTIL_GO = """
    hello()
    owner = os.getppid()
    for msg in messages():
        if msg["type"] == "announce":
            say("bid", task_id=msg["task_id"], sats=20, on_spec=True)
        elif msg["type"] == "assign":
            say("started", task_id=msg["task_id"])
            while not os.path.exists(os.path.join(HERE, "go")):
                if os.getppid() != owner:
                    sys.exit(0)
                time.sleep(0.05)
            say("result", task_id=msg["task_id"], ok=True, output="done by the old owner")
"""


@pytest.fixture
def own(start_owner, scripted_runner):
    """``own(db)``: a swarm process owning ``db``, its one runner holding a task running."""
    command = scripted_runner("hold", HOLD_UNTIL_GO)

    def start(db: str) -> tuple[subprocess.Popen, dict]:
        owner, report = start_owner({"db": db, "seed": 1, "auction_window": 0.3,
                                     "runner_command": command},
                                    ["forge"], ["fix the bug in the api client"], running=1)
        assert list(report["tasks"].values()) == ["running"]
        return owner, report

    return start


def refused(db: str) -> StoreError:
    """Start a second swarm in this process on ``db``; it must be refused."""
    second = Swarm(db=db, seed=1, task_seconds=0, auction_window=0.3)
    try:
        with pytest.raises(StoreError) as caught:
            second.start()
    finally:
        second.close()
    return caught.value


def check_refusal(exc: StoreError, owner: subprocess.Popen, file: Path, before: dict) -> None:
    assert "in use by another swarm" in exc.message, exc.message
    assert f"pid {owner.pid}" in exc.message, exc.message
    assert exc.hint
    assert owner.poll() is None, "the owner died"
    # The second swarm recovered nothing: the owner's task is still running in the database.
    rows = Store(f"sqlite:///{file}", create=False)
    try:
        assert {t.task_id: t.status for t in rows.tasks()} == before
    finally:
        rows.dispose()


@pytest.mark.timeout(60)
def test_a_second_swarm_through_a_symlink_is_refused_naming_the_owner(tmp_path, own):
    real = tmp_path / "real" / "timmy.db"
    real.parent.mkdir()
    owner, report = own(str(real))
    alias = tmp_path / "alias.db"
    alias.symlink_to(real)
    check_refusal(refused(str(alias)), owner, real, report["tasks"])


@pytest.mark.timeout(60)
def test_a_second_swarm_through_a_hard_link_is_refused_naming_the_owner(tmp_path, own):
    real = tmp_path / "real" / "timmy.db"
    real.parent.mkdir()
    owner, report = own(str(real))
    other = tmp_path / "elsewhere"
    other.mkdir()
    hard = other / "same.db"
    os.link(real, hard)    # another name, another directory, the same inode
    check_refusal(refused(str(hard)), owner, real, report["tasks"])


@pytest.mark.timeout(60)
@pytest.mark.parametrize("spelling", ["file:{path}?uri=true", "file://{path}?mode=rw&uri=true",
                                      "file:{path}?cache=private&uri=true"])
def test_a_second_swarm_through_a_file_uri_is_refused_naming_the_owner(
        tmp_path, own, spelling):
    real = tmp_path / "timmy.db"
    owner, report = own(str(real))
    url = "sqlite:///" + spelling.format(path=real)
    check_refusal(refused(url), owner, real, report["tasks"])


@pytest.mark.timeout(60)
def test_an_owner_through_a_file_uri_refuses_a_plain_path(tmp_path, own):
    real = tmp_path / "timmy.db"
    owner, report = own(f"sqlite:///file:{real}?uri=true")
    check_refusal(refused(str(real)), owner, real, report["tasks"])


@pytest.mark.timeout(90)
@pytest.mark.parametrize("spelling", ["../alias.db", "sqlite:///file:../a/timmy.db?uri=true",
                                      "../a/./timmy.db"])
def test_timmy_serve_from_another_directory_is_refused_naming_the_owner(
        tmp_path, own, monkeypatch, spelling):
    """The owner runs in directory a on "timmy.db"; `timmy serve`, started in directory b,
    names the same file relative to b (through a relative symlink, a relative file: URI, a
    plain relative path): it exits with the owner's pid and a hint, and changes nothing."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (tmp_path / "alias.db").symlink_to(Path("a", "timmy.db"))
    monkeypatch.chdir(a)     # the owner process starts here
    owner, report = own("timmy.db")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(Path(__file__).resolve().parent.parent), os.environ.get("PYTHONPATH", "")])}
    serve = subprocess.run(
        [sys.executable, "-m", "timmy", "serve", "--db", spelling, "--port", "0",
         "--token", "not-used-here", "--no-spawn"],
        cwd=b, capture_output=True, text=True, timeout=60, env=env)
    assert serve.returncode == 2, (serve.stdout, serve.stderr)
    assert "in use by another swarm" in serve.stderr and f"pid {owner.pid}" in serve.stderr
    assert "hint:" in serve.stderr
    assert "listening" not in serve.stdout
    assert owner.poll() is None
    check_refusal(refused(str(a / "timmy.db")), owner, a / "timmy.db", report["tasks"])


@pytest.mark.timeout(60)
@pytest.mark.postgres
def test_an_owner_whose_lock_was_bypassed_cannot_write_over_the_new_one(
        db_url, start_owner, scripted_runner, tmp_path):
    """Fencing: a swarm that took the database over without the lock (an older timmy, a
    file system that does not keep flocks; here a `Store` that recovers it directly) opens
    a new ownership epoch. The old owner's runner then completes its task: the old owner's
    write must fail (OwnershipLost: it stops) instead of marking the task completed over the
    new owner's re-queue."""
    command = scripted_runner("hold", HOLD_UNTIL_GO)
    owner, report = start_owner({"db": db_url, "seed": 1, "auction_window": 0.3,
                                 "runner_command": command},
                                ["forge"], ["fix the bug in the api client"], running=1,
                                then="wait")
    [task_id] = report["posted"]
    assert report["tasks"] == {task_id: "running"}

    new = Store(db_url)
    try:
        _, requeued, _ = new.recover(3, time.time(), "the swarm that took over")
        assert [t.task_id for t in requeued] == [task_id]
        (tmp_path / "go").touch()     # the old owner's runner now reports its result
        owner.wait(timeout=30)
        err = report["stderr"].read_text()
        assert owner.returncode != 0 and "OwnershipLost" in err, err[-2000:]
        assert "the swarm that took over" in err
        task = new.task(task_id)
        assert (task.status, task.result) == ("queued", None), task
        assert "re-queued after a coordinator restart" in task.reason
        assert [e.kind for e in new.events() if e.kind == "task_completed"] == []
        new.insert_tasks(["the new owner writes"], time.time())   # and the new one can
    finally:
        new.dispose()
