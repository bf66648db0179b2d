"""What the swarm service refuses: no token, a wrong token, malformed requests, a line over
1 MiB, a flood of connections, a non-loopback bind. Each is refused with an error that says
why, the service keeps answering, and the tasks stored before are intact."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time

import pytest
from test_service import ServiceProcess

import timmy
from timmy.errors import ConfigError
from timmy.service.host import check_bind
from timmy.service.tokens import read_token
from timmy.service.wire import AuthenticationError, ServiceBusy


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    svc = ServiceProcess(tmp_path_factory.mktemp("security") / "swarm.db")
    with svc.attach() as swarm:
        swarm.run([f"fix bug {i}" for i in range(10)], timeout=30)
    yield svc
    svc.stop()


@pytest.fixture
def intact(service):
    """The tasks stored before the test are still there, unchanged, and the service answers."""
    with service.attach() as swarm:
        before = swarm.tasks()
    yield
    with service.attach() as swarm:
        assert swarm.tasks()[:len(before)] == before
        assert swarm.status()["runners_live"] == 9


def connect(service) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", service.port), timeout=10)
    return sock


def ask(sock: socket.socket, payload: bytes) -> dict:
    sock.sendall(payload)
    return answer(sock)


def answer(sock: socket.socket) -> dict:
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"connection closed after {data!r}")
        data += chunk
    return json.loads(data)


def closed(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def request(op: str, token: str, rid: int = 1, **args) -> bytes:
    return json.dumps({"id": rid, "token": token, "op": op, "args": args}).encode() + b"\n"


@pytest.mark.parametrize("token", ["", "wrong", "x" * 500])
def test_no_or_wrong_token_is_refused_and_the_connection_closed(service, intact, token):
    with connect(service) as sock:
        reply = ask(sock, request("post", token, description="rm -rf /"))
        assert reply["ok"] is False and reply["id"] == 1
        assert reply["error"]["type"] == "AuthenticationError"
        assert ("no token" if not token else "wrong token") in reply["error"]["message"]
        assert reply["error"]["hint"]
        assert closed(sock)


def test_a_token_too_long_to_be_one_is_a_malformed_request(service, intact):
    with connect(service) as sock:
        reply = ask(sock, request("post", "x" * 600, description="rm -rf /"))
        assert reply["error"]["type"] == "ProtocolError" and "token" in reply["error"]["message"]


def test_garbage_without_a_token_is_not_kept_forever(service, intact):
    with connect(service) as sock:
        for _ in range(16):
            assert ask(sock, b"garbage\n")["error"]["type"] == "ProtocolError"
        assert closed(sock)


def test_a_wrong_token_raises_authentication_error_in_the_client(service, intact):
    with pytest.raises(AuthenticationError, match="wrong token") as err:
        timmy.Swarm.attach(service.url, token="not-the-token").post("steal the swarm")
    assert "timmy serve" in err.value.hint


@pytest.mark.parametrize("line", [
    b"not json at all\n",
    b"[1, 2, 3]\n",
    b'{"id": 1}\n',
    b'{"id": -5, "token": "t", "op": "status"}\n',
    b"\xff\xfe\x00garbage\n",
    b"[" * 10_000 + b"\n",
    b'{"id": 1, "token": "t", "op": "status", "args": {}, "extra": 1}\n',
])
def test_malformed_requests_are_answered_and_the_connection_stays_usable(service, intact, line):
    with connect(service) as sock:
        reply = ask(sock, line)
        assert reply == {"id": None, "ok": False, "error": reply["error"]}
        assert reply["error"]["type"] == "ProtocolError" and reply["error"]["hint"]
        ok = ask(sock, request("status", service.token, rid=2))
        assert ok["ok"] is True and ok["id"] == 2


@pytest.mark.parametrize("op, args, needle", [
    ("launch_missiles", {}, "unknown op"),
    ("post", {"description": 42}, "bad arguments for post"),
    ("wait", {"task_id": -1}, "bad arguments for wait"),
    ("tasks", {"statuz": "queued"}, "bad arguments for tasks"),
    ("post", {"description": ""}, ""),
])
def test_bad_ops_and_arguments_are_answered_with_the_error(service, intact, op, args, needle):
    with connect(service) as sock:
        reply = ask(sock, request(op, service.token, rid=7, **args))
        assert reply["ok"] is False and reply["id"] == 7
        assert needle in reply["error"]["message"] and reply["error"]["hint"]


def test_a_line_over_one_mebibyte_is_refused_and_the_connection_closed(service, intact):
    huge = request("post", service.token, description="x" * (1024 * 1024 + 10))
    with connect(service) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(huge)
        reply = answer(sock)
        assert reply["ok"] is False and reply["error"]["type"] == "ProtocolError"
        assert "1048576-byte limit" in reply["error"]["message"]
        assert closed(sock)


def test_a_flood_of_connections_is_refused_past_the_cap(service, intact):
    """Authenticated connections past --max-connections are refused, with ServiceBusy. (Those
    that never authenticate have a cap of their own: tests/test_service_handshake.py.)"""
    socks, busy = [], []
    try:
        for _ in range(100):
            sock = connect(service)
            socks.append(sock)
            reply = ask(sock, request("ping", service.token))
            if not reply["ok"]:
                busy.append(reply["error"])
        # 64 are served; a connection of the previous test may still hold a slot for a moment.
        assert 36 <= len(busy) <= 37
        for error in busy:
            assert error["type"] == "ServiceBusy" and error["hint"]
            assert "already serves 64 connections" in error["message"]
        with pytest.raises(ServiceBusy):         # the client says so too
            timmy.Swarm.attach(service.url, token=service.token).status()
    finally:
        for sock in socks:
            sock.close()
    with service.attach() as swarm:              # the slots are given back
        for _ in range(100):
            try:
                status = swarm.status()
                break
            except ServiceBusy:
                time.sleep(0.01)
        assert status["service"]["refused"] >= 37


def test_a_non_loopback_bind_needs_allow_remote(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "timmy", "serve", "--db",
                           str(tmp_path / "x.db"), "--host", "0.0.0.0", "--port", "0"],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 2
    assert "refusing to listen on 0.0.0.0" in proc.stderr and "--allow-remote" in proc.stderr
    assert not (tmp_path / "x.db").exists()      # refused before anything was opened
    check_bind("0.0.0.0", allow_remote=True)
    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.2"):
        check_bind(host, allow_remote=False)
    for host in ("0.0.0.0", "::", "192.168.1.10", "example.com"):
        with pytest.raises(ConfigError):
            check_bind(host, allow_remote=False)


def test_a_token_file_others_can_read_is_refused(tmp_path):
    path = tmp_path / "t.token"
    path.write_text("secret\n")
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match="can be read by other users") as err:
        read_token(path)
    assert "chmod 600" in err.value.hint
    os.chmod(path, 0o600)
    assert read_token(path) == "secret"
