"""The service's limits on clients that do not play along: a connection that sends nothing
(or half a line), a subscriber that stops reading, a client that leaves during a long
``wait``. Each is let go; the service keeps serving everyone else and loses nothing."""

from __future__ import annotations

import socket
import time

import pytest
from test_service import ServiceProcess, wait_until
from test_service_security import answer, closed, request


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    """No runners (tasks stay queued), short timeouts so the tests are quick."""
    svc = ServiceProcess(tmp_path_factory.mktemp("limits") / "swarm.db", 0, "--no-spawn",
                         "--first-line-timeout", "0.5", "--send-timeout", "1")
    yield svc
    svc.stop()


def service_counts(svc) -> dict:
    with svc.attach() as swarm:
        return swarm.status()["service"]


@pytest.mark.parametrize("first", [b"", b'{"id": 1, "token": "'], ids=["silent", "half-line"])
def test_a_connection_that_sends_no_whole_request_is_closed(service, first):
    sock = socket.create_connection(("127.0.0.1", service.port), timeout=10)
    sock.sendall(first)
    started = time.monotonic()
    reply = answer(sock)
    assert not reply["ok"]
    assert "no request for 0.5s" in reply["error"]["message"]
    assert "right after connecting" in reply["error"]["hint"]
    assert closed(sock)
    assert time.monotonic() - started < 8
    sock.close()
    wait_until(lambda: service_counts(service)["connections"] == 1)   # only the status one


def test_a_subscriber_that_stops_reading_is_dropped_and_others_carry_on(service):
    """A raw subscriber with a tiny receive buffer never reads; 4 MB of events later it is
    dropped after --send-timeout, while a well-behaved subscriber got every event."""
    token = service.token
    slow = socket.socket()
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.connect(("127.0.0.1", service.port))
    slow.sendall(request("subscribe", token))
    assert answer(slow)["ok"]
    seen = []
    with service.attach() as swarm:
        unsubscribe = swarm.subscribe(lambda e: seen.append(e.event_id))
        wait_until(lambda: swarm.status()["service"]["subscribers"] == 2)
        posted = []
        padding = "x" * 1000
        for start in range(0, 4_000, 1_000):
            posted += swarm.post_many([f"write docs {i} {padding}"
                                       for i in range(start, start + 1_000)])
        wait_until(lambda: swarm.status()["service"]["dropped"] >= 1, timeout=30)
        assert swarm.status()["service"]["subscribers"] == 1
        wait_until(lambda: len(seen) >= len(posted), timeout=30)
        assert seen == sorted(set(seen)), "the good subscriber saw each event once, in order"
        assert len(list(swarm.iter_tasks(status="queued"))) >= len(posted)   # 4 pages
        unsubscribe()
    slow.settimeout(10)
    got = 0
    while chunk := slow.recv(1 << 20):   # what was sent before the drop, then EOF
        got += len(chunk)
    assert got > 0
    slow.close()


def test_a_client_that_leaves_during_a_wait_is_not_waited_for(service):
    with service.attach() as swarm:
        task = swarm.post("a task nobody can take: no runners")
        before = swarm.status()["service"]["connections"]
    sock = socket.create_connection(("127.0.0.1", service.port), timeout=10)
    sock.sendall(request("wait", service.token, task_id=task.task_id))
    wait_until(lambda: service_counts(service)["connections"] == before + 1)
    sock.close()
    wait_until(lambda: service_counts(service)["connections"] == before, timeout=5)
    with service.attach() as swarm:
        assert swarm.task(task.task_id).status == "queued"   # leaving cancels the wait only
