"""Connections that never authenticate: they have their own small cap (``--max-handshakes``),
apart from the ``--max-connections`` of runners and clients, and one deadline for the whole
handshake, from accept to the first request that carries the token. Garbage senders cannot
lock an authenticated client out, and a slow drip of garbage lines is cut at the deadline."""

from __future__ import annotations

import contextlib
import json
import select
import socket
import time

import pytest
from test_service import ServiceProcess, wait_until
from test_service_security import answer

import timmy
from timmy.service.server import MAX_HANDSHAKES, MAX_STRIKES


def garbage_sender(svc: ServiceProcess) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", svc.port), timeout=10)
    sock.sendall(b"garbage\n")
    return sock


def replies_until_closed(sock: socket.socket, timeout: float = 30) -> list[dict]:
    """Every answer the service sends on ``sock`` until it closes it."""
    sock.settimeout(timeout)
    data = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            data += chunk
    return [json.loads(line) for line in data.splitlines()]


@pytest.fixture
def service(tmp_path):
    """A small authenticated cap and a long handshake deadline: what garbage senders hold,
    they would hold for a long time."""
    svc = ServiceProcess(tmp_path / "swarm.db", 0, "--no-spawn", "--max-connections", "8",
                         "--handshake-timeout", "60")
    yield svc
    svc.stop()


def test_garbage_senders_do_not_lock_out_an_authenticated_client(service):
    flood = [garbage_sender(service) for _ in range(5 * MAX_HANDSHAKES)]
    try:
        for sock in flood[-MAX_HANDSHAKES:]:     # the newest hold the handshake slots
            assert answer(sock)["error"]["type"] == "ProtocolError"
        # A client with the token gets in, and so do 7 more: their slots are not the
        # garbage senders'.
        clients = [service.attach() for _ in range(8)]
        try:
            for swarm in clients:
                status = swarm.status()["service"]
                assert status["handshakes"] <= MAX_HANDSHAKES
        finally:
            for swarm in clients:
                swarm.close()
        # The oldest garbage senders were told why they were let go, and closed.
        evicted = [replies_until_closed(s) for s in flood[:MAX_HANDSHAKES]]
        for replies in evicted:
            assert replies[-1]["error"]["type"] == "ServiceBusy"
            assert f"{MAX_HANDSHAKES} connections" in replies[-1]["error"]["message"]
            assert "--max-handshakes" in replies[-1]["error"]["hint"]
    finally:
        for sock in flood:
            sock.close()
    with service.attach() as swarm:
        wait_until(lambda: swarm.status()["service"]["connections"] == 1)
        assert swarm.status()["service"]["refused"] >= 4 * MAX_HANDSHAKES


def test_the_authenticated_cap_still_holds_beside_the_handshake_cap(service):
    clients = [service.attach() for _ in range(8)]
    try:
        for swarm in clients:
            swarm.status()                   # each holds one of the 8 slots, idle
        flood = [garbage_sender(service) for _ in range(MAX_HANDSHAKES)]
        with pytest.raises(timmy.errors.TimmyError) as err:
            service.attach().status()
        assert type(err.value).__name__ == "ServiceBusy"
        assert "already serves 8 connections" in err.value.message
        for sock in flood:
            sock.close()
    finally:
        for swarm in clients:
            swarm.close()


def test_the_handshake_cap_is_configurable(tmp_path):
    svc = ServiceProcess(tmp_path / "swarm.db", 0, "--no-spawn", "--max-handshakes", "2")
    try:
        first, second, third = (garbage_sender(svc) for _ in range(3))
        replies = replies_until_closed(first)
        assert replies[-1]["error"]["type"] == "ServiceBusy"
        assert "2 connections are already waiting to authenticate" in \
            replies[-1]["error"]["message"]
        with svc.attach() as swarm:          # evicts the second; the third stays
            status = swarm.status()["service"]
            assert status["handshakes"] <= 2
        assert answer(third)["error"]["type"] == "ProtocolError"
        for sock in (second, third):
            sock.close()
    finally:
        svc.stop()


def test_a_slow_drip_of_garbage_is_cut_at_the_handshake_deadline(tmp_path):
    """One garbage line every 0.25 s never leaves the connection quiet for a whole
    first-line timeout, and stays under the strikes that would close it; the one
    handshake deadline (2 s from accept) cuts it."""
    svc = ServiceProcess(tmp_path / "swarm.db", 0, "--no-spawn", "--first-line-timeout", "2")
    try:
        sock = socket.create_connection(("127.0.0.1", svc.port), timeout=10)
        data, eof = b"", False
        for _ in range(MAX_STRIKES - 1):
            try:
                sock.sendall(b"x\n")
            except OSError:
                break
            time.sleep(0.25)
            while not eof and select.select([sock], [], [], 0)[0]:
                try:
                    chunk = sock.recv(65536)
                except ConnectionResetError:
                    chunk = b""
                data += chunk
                eof = not chunk
            if eof:
                break
        sock.settimeout(10)
        with contextlib.suppress(ConnectionResetError):
            while not eof and (chunk := sock.recv(65536)):
                data += chunk
        sock.close()
        replies = [json.loads(line) for line in data.splitlines()]
        last = replies[-1]["error"]
        assert last["type"] == "ProtocolError"
        assert "no request for 2s after connecting" in last["message"]
        assert "handshake" in last["message"] and "token" in last["hint"]
        assert len(replies) <= MAX_STRIKES - 1          # cut by the deadline, not the strikes
    finally:
        svc.stop()
