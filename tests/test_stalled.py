"""A wait that could never end says so: when no runner is live or on its way back (all
stopped or failed, or none spawned), `wait` and `run` raise `NoRunners` with the fix, the
tasks stay queued, and they run once a runner is spawned. Real runners, a real SQLite file,
a real ``timmy serve`` for the attached and CLI cases."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest
from test_service import ServiceProcess

import timmy
from timmy.engine.coordinator import WaitTimeout
from timmy.engine.supervisor import RestartPolicy
from timmy.errors import NoRunners
from timmy.market.models import AgentInfo
from timmy.widgets.render import status_line


def until(predicate, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)
    return value


def test_no_runner_spawned_raises_at_once_and_the_task_waits(tmp_path):
    with timmy.Swarm(tmp_path / "s.db", seed=1, task_seconds=0) as swarm:
        t0 = time.monotonic()
        with pytest.raises(NoRunners) as err:
            swarm.run(["write the docs"], timeout=60)  # at once, not after the timeout
        assert time.monotonic() - t0 < 30
        assert "no runner was spawned" in str(err.value)
        assert "spawn_all()" in err.value.hint
        task = swarm.tasks()[0]
        assert task.status == "queued"
        assert swarm.status()["stalled"] == "no runner was spawned"
        swarm.spawn("forge")
        assert swarm.wait(task.task_id, timeout=30).status == "completed"
        assert swarm.status()["stalled"] is None


def test_stopping_the_last_runner_wakes_the_wait(tmp_path):
    with timmy.Swarm(tmp_path / "s.db", seed=1, task_seconds=1.0) as swarm:
        agent = swarm.spawn("forge")
        first, second = swarm.post_many(["fix the bug", "fix another bug"])
        until(lambda: swarm.task(first.task_id).status == "running")
        threading.Timer(0.3, swarm.stop, [agent.agent_id]).start()
        with pytest.raises(NoRunners) as err:
            swarm.wait(second.task_id, timeout=60)
        assert "every runner was stopped" in str(err.value)
        # stopped on purpose: both back in the queue, no attempt used
        for t in (first, second):
            now = swarm.task(t.task_id)
            assert now.status == "queued" and now.attempts == 0
        swarm.spawn("forge")
        done = [swarm.wait(t.task_id, timeout=30) for t in (first, second)]
        assert [t.status for t in done] == ["completed", "completed"]


def test_a_runner_given_up_on_is_named_with_the_crash_loop_hint(tmp_path):
    policy = RestartPolicy(max_restarts=0)       # the first crash is one too many
    with timmy.Swarm(tmp_path / "s.db", seed=1, task_seconds=1.0, restart=policy) as swarm:
        agent = swarm.spawn("forge")
        task = swarm.post("fix the bug")
        until(lambda: swarm.task(task.task_id).status == "running")
        threading.Timer(0.2, swarm.kill, [agent.agent_id]).start()
        with pytest.raises(NoRunners) as err:
            swarm.wait(task.task_id, timeout=60)
        assert "forge-1 kept dying" in str(err.value)
        assert "--max-restarts" in err.value.hint
        assert [a.status for a in swarm.agents()] == ["failed"]
        now = swarm.task(task.task_id)
        assert now.status == "queued" and now.attempts == 1
        swarm.spawn("forge")
        done = swarm.wait(task.task_id, timeout=30)
        assert done.status == "completed" and done.assigned_agent == "forge-2"


def test_a_service_with_no_agents_waits_for_remote_runners_and_timmy_spawn_starts_them(
        tmp_path):
    svc = ServiceProcess(tmp_path / "s.db", 0, "--no-spawn")
    try:
        with svc.attach() as swarm:
            task = swarm.post("fix the bug")
            with pytest.raises(WaitTimeout):         # not NoRunners: a runner may dial in
                swarm.wait(task.task_id, timeout=0.5)
            assert swarm.status()["stalled"] is None
            spawn = subprocess.run(
                [sys.executable, "-m", "timmy", "spawn", "forge", "--url", svc.url,
                 "--token", svc.token], capture_output=True, text=True, timeout=60)
            assert spawn.returncode == 0, spawn.stderr
            assert spawn.stdout.startswith("forge-1 idle")
            assert swarm.wait(task.task_id, timeout=30).status == "completed"
            # stopped through the service: the error crosses the wire as the same class
            swarm.stop("forge-1")
            later = swarm.post("fix another bug")
            with pytest.raises(NoRunners, match="every runner was stopped"):
                swarm.wait(later.task_id, timeout=30)
            status = subprocess.run(
                [sys.executable, "-m", "timmy", "status", "--url", svc.url, "--token",
                 svc.token], capture_output=True, text=True, timeout=60,
                env={**os.environ, "COLUMNS": "200"})
            assert "stalled: every runner was stopped" in status.stdout
    finally:
        svc.stop()


def test_the_dashboard_header_says_when_waiting_tasks_have_no_runner():
    failed = [AgentInfo(agent_id="forge-1", persona="forge", name="Forge", status="failed")]
    idle = [AgentInfo(agent_id="forge-2", persona="forge", name="Forge", status="idle")]
    assert "No runner can take the 3 waiting tasks" in status_line({"queued": 3}, failed)
    assert "No runner" not in status_line({"queued": 3}, failed + idle)
    assert "No runner" not in status_line({"completed": 3}, failed)   # nothing waiting
    assert "No runner" not in status_line({"queued": 3}, [])          # a service, no agents yet
