"""Back-pressure: a cap on unfinished tasks (``max_queued``) refuses posts with `QueueFull`
and a hint instead of growing memory without end, locally and through the service; the
event stream's per-subscriber caps are tested in ``tests/test_service_limits.py``."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from test_service import ServiceProcess

from timmy.errors import ConfigError, QueueFull


def test_posts_past_the_cap_are_refused_and_lose_nothing(make_swarm):
    swarm = make_swarm(max_queued=10)          # no runners: every task stays queued
    posted = swarm.post_many([f"fix bug {i}" for i in range(8)])
    with pytest.raises(QueueFull) as refused:
        swarm.post_many([f"write docs {i}" for i in range(3)])
    assert "8 tasks are unfinished and the cap is 10" in refused.value.message
    assert "max_queued" in refused.value.hint
    assert len(swarm.tasks()) == 8             # the refused batch stored nothing
    swarm.post_many(["a", "b"])                # up to the cap still fits
    with pytest.raises(QueueFull):
        swarm.post("one too many")
    swarm.spawn("forge")
    for task in posted:
        swarm.wait(task.task_id, timeout=20)
    assert swarm.post("room again").task_id    # finished tasks free their place


def test_a_bad_cap_is_refused_up_front(make_swarm):
    with pytest.raises(ConfigError, match="max_queued"):
        make_swarm(max_queued=0)


def test_the_service_says_queue_full_to_an_attached_client(tmp_path):
    svc = ServiceProcess(tmp_path / "swarm.db", 0, "--no-spawn", "--max-queued", "5")
    try:
        with svc.attach() as swarm:
            swarm.post_many(["fix 1", "fix 2", "fix 3", "fix 4", "fix 5"])
            with pytest.raises(QueueFull) as refused:
                swarm.post("fix 6")
            assert "--max-queued" in refused.value.hint
            assert swarm.ping() == "pong" and len(swarm.tasks()) == 5
    finally:
        svc.stop()
