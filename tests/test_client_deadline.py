"""Every call of an attached client has a deadline: a stopped service is an error, not a
hang (real `timmy serve` processes, SIGSTOPped as a laptop's sleep or a stuck host would)."""

from __future__ import annotations

import os
import signal
import threading

import pytest
from test_service import ServiceProcess

from timmy.service.wire import ServiceUnavailable


@pytest.fixture
def stopped_service(tmp_path):
    svc = ServiceProcess(tmp_path / "swarm.db", 0, "--no-spawn")
    try:
        yield svc
    finally:
        os.kill(svc.proc.pid, signal.SIGCONT)
        svc.stop()


def call_in_thread(fn, limit: float):
    """Run fn on a thread; (finished, result or exception) after at most ``limit`` seconds."""
    out: list = []
    thread = threading.Thread(target=lambda: out.append(_outcome(fn)), daemon=True)
    thread.start()
    thread.join(limit)
    return (not thread.is_alive()), (out[0] if out else None)


def _outcome(fn):
    try:
        return fn()
    except Exception as exc:   # the test looks at what it was
        return exc


@pytest.mark.timeout(60)
def test_a_call_to_a_stopped_service_fails_at_its_deadline_and_the_next_one_works(
        stopped_service):
    swarm = stopped_service.attach(request_timeout=1.0)
    try:
        assert swarm.status()["service"]["connections"] >= 1   # it answers while it runs
        os.kill(stopped_service.proc.pid, signal.SIGSTOP)
        finished, outcome = call_in_thread(swarm.status, 20)
        assert finished, "status() on a stopped service never returned"
        assert isinstance(outcome, ServiceUnavailable), outcome
        assert "no answer" in str(outcome) and "1s" in str(outcome)
        assert "request_timeout" in outcome.hint
        os.kill(stopped_service.proc.pid, signal.SIGCONT)
        assert isinstance(swarm.status(), dict)   # the late answer is not read as this one
        assert swarm.post("fix the bug").task_id == 1
    finally:
        swarm.close()


@pytest.mark.timeout(60)
def test_a_wait_gets_its_own_timeout_on_top_of_the_deadline(stopped_service):
    swarm = stopped_service.attach(request_timeout=1.0)
    try:
        task = swarm.post("fix the bug")          # no runner: it stays queued
        finished, outcome = call_in_thread(lambda: swarm.wait(task.task_id, timeout=2.5), 20)
        assert finished and type(outcome).__name__ == "WaitTimeout", outcome
    finally:
        swarm.close()
