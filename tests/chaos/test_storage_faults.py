"""Storage faults on a real SQLite file: a full disk (a 1 MiB tmpfs), a file that turns
immutable mid-run, a read-only file at start. Each gives a `StoreError` that says what is
wrong and what to do; work in flight stays in memory and is saved once the fault is gone;
nothing is half-written (the audit finds every accepted task ended, once, consistently).

Mounting a tmpfs and ``chattr`` need root: without it these tests skip, except under
``CI=true`` where they fail. (A locked database and a corrupt file are in
``tests/test_bad_input.py``.)
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import time

import pytest

import timmy
from timmy.errors import StoreError
from timmy.ops.chaos import audit

BIG = "x" * 4000


@pytest.fixture
def root():
    if os.geteuid() != 0 or not shutil.which("chattr"):
        if os.environ.get("CI") == "true":
            pytest.fail("storage-fault tests need root (mount, chattr) under CI=true")
        pytest.skip("needs root: mounts a tmpfs and sets chattr +i")


@pytest.fixture
def small_disk(root, tmp_path):
    mnt = tmp_path / "disk"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], check=True)
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.fixture(autouse=True)
def quiet_store_logs():
    logging.getLogger("timmy").setLevel(logging.CRITICAL)
    yield
    logging.getLogger("timmy").setLevel(logging.NOTSET)


def post_until_refused(swarm, n: int = 10_000):
    accepted = []
    for i in range(n):
        try:
            accepted.append(swarm.post(f"fix bug {i} {BIG}"))
        except StoreError as exc:
            return accepted, exc
    raise AssertionError(f"{n} posts of 4 KB fitted in 1 MiB")


@pytest.mark.timeout(120)
def test_a_full_disk_refuses_posts_clearly_keeps_work_in_memory_and_saves_it_later(
        small_disk):
    db = small_disk / "swarm.db"
    swarm = timmy.Swarm(db=db, task_seconds=0, seed=1).start()
    try:
        swarm.spawn_all()
        accepted, refused = post_until_refused(swarm)
        assert "the disk is full" in refused.message and "free disk space" in refused.hint
        assert accepted, "some posts fitted before the disk filled"
        status = swarm.status()                      # still answers, and says why
        assert status["store_error"] and "disk is full" in status["store_error"]
        subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
        done = [swarm.wait(t.task_id, timeout=30) for t in accepted]
        assert {t.status for t in done} <= {"completed", "failed"}
        assert swarm.status()["store_error"] is None
        later = swarm.run(["write the docs after the cleanup"], timeout=30)[0]
        assert later.status in ("completed", "failed")
    finally:
        swarm.close()
    report = audit(db, [t.description for t in accepted] + [later.description])
    assert report.problems == [] and report.tasks == len(accepted) + 1


@pytest.mark.timeout(120)
def test_a_file_that_turns_immutable_mid_run_is_a_clear_error_then_recovers(root, tmp_path):
    db = tmp_path / "swarm.db"
    swarm = timmy.Swarm(db=db, task_seconds=0, seed=1).start()
    files = [str(db), f"{db}-wal"]
    try:
        swarm.spawn_all()
        accepted = swarm.run([f"fix bug {i}" for i in range(5)], timeout=20)
        subprocess.run(["chattr", "+i", *files], check=True)
        try:
            with pytest.raises(StoreError) as refused:
                for i in range(200):
                    accepted.append(swarm.post(f"write docs {i}"))
                    time.sleep(0.005)
        finally:
            subprocess.run(["chattr", "-i", *files], check=True)
        assert "the disk refused" in refused.value.message
        assert "chattr -i" in refused.value.hint
        done = [swarm.wait(t.task_id, timeout=30) for t in accepted]
        assert {t.status for t in done} <= {"completed", "failed"}
    finally:
        swarm.close()
    report = audit(db, [t.description for t in accepted])
    assert report.problems == []


@pytest.mark.timeout(60)
def test_a_read_only_database_at_start_is_refused_and_left_as_it_was(root, tmp_path):
    db = tmp_path / "swarm.db"
    with timmy.Swarm(db=db, task_seconds=0, seed=1) as swarm:
        swarm.spawn_all()
        swarm.run(["fix bug 1", "fix bug 2"], timeout=20)
    before = db.read_bytes()
    subprocess.run(["chattr", "+i", str(db)], check=True)
    try:
        with pytest.raises(StoreError) as refused, timmy.Swarm(db=db, task_seconds=0) as swarm:
            swarm.spawn_all()
            swarm.run(["fix bug 3"], timeout=20)
        assert refused.value.hint
        assert "read-only" in refused.value.message or "refused" in refused.value.message
    finally:
        subprocess.run(["chattr", "-i", str(db)], check=True)
    assert db.read_bytes() == before
    assert audit(db).problems == []
