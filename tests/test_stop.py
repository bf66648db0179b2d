"""A SIGTERM (or Ctrl-C) of ``timmy serve`` with connections open is a quiet, clean stop:
every kind of connection (an attached client, a subscriber, a client blocked in ``wait``, a
remote runner, one that never authenticated) is closed, the service exits 0 and says nothing
on stderr about cancelled tasks."""

from __future__ import annotations

import signal
import socket
import time

import pytest
from test_remote import RunnerProcess, live
from test_service import ServiceProcess, wait_until
from test_service_security import request


def open_connection(svc: ServiceProcess, kind: str, keep: list) -> None:
    """Open one connection of ``kind`` to ``svc`` and wait until the service holds it."""
    if kind == "client":
        swarm = svc.attach()
        swarm.status()                               # its connection stays open, idle
        keep.append(swarm)
    elif kind == "subscriber":
        swarm = svc.attach()
        seen: list = []
        keep.append(swarm)
        keep.append(swarm.subscribe(seen.append))
        with svc.attach() as other:
            wait_until(lambda: other.status()["service"]["subscribers"] == 1)
            other.post("write the docs for the subscriber to see")
        wait_until(lambda: len(seen) >= 1)
    elif kind == "waiting":
        with svc.attach() as swarm:
            task = swarm.post("a task nobody takes: no runners")
            before = swarm.status()["service"]["connections"]
            sock = socket.create_connection(("127.0.0.1", svc.port), timeout=10)
            sock.sendall(request("wait", svc.token, task_id=task.task_id))
            keep.append(sock)
            wait_until(lambda: swarm.status()["service"]["connections"] == before + 1)
    elif kind == "runner":
        runner = RunnerProcess(svc, "forge", "--agent-id", "forge-r1")
        keep.append(runner)
        with svc.attach() as swarm:
            live(swarm, "forge-r1")
    elif kind == "unauthenticated":
        with svc.attach() as swarm:
            before = swarm.status()["service"]["connections"]
            sock = socket.create_connection(("127.0.0.1", svc.port), timeout=10)
            sock.sendall(b'{"id": 1, "token": "')     # half a request: still in the handshake
            keep.append(sock)
            wait_until(lambda: swarm.status()["service"]["connections"] == before + 1)
    else:
        raise AssertionError(kind)


def release(keep: list) -> None:
    for thing in keep:
        if isinstance(thing, RunnerProcess):
            thing.end()
        elif hasattr(thing, "close"):
            thing.close()
        else:
            thing()                          # an unsubscribe
    keep.clear()


KINDS = ["client", "subscriber", "waiting", "runner", "unauthenticated"]


def stop_with_open(tmp_path, kinds, sig: int, settle: float = 0.0):
    """Start `timmy serve`, open a connection of each of ``kinds``, send ``sig``; returns
    (service, stdout, stderr) once it has ended."""
    svc = ServiceProcess(tmp_path / "swarm.db", 0, "--no-spawn")
    keep: list = []
    try:
        for kind in kinds:
            open_connection(svc, kind, keep)
        time.sleep(settle)
        svc.proc.send_signal(sig)
        out, err = svc.proc.communicate(timeout=30)
    finally:
        if svc.proc.poll() is None:
            svc.proc.kill()
            svc.proc.wait(timeout=10)
        release(keep)
    return svc, out, err


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@pytest.mark.parametrize("kind", KINDS)
def test_a_stop_with_a_connection_open_is_quiet_and_clean(tmp_path, kind, sig):
    svc, out, err = stop_with_open(tmp_path, [kind], sig)
    assert svc.proc.returncode == 0, err
    assert "Traceback" not in err and "CancelledError" not in err, err
    assert "timmy serve: stopped" in out


def test_a_stop_with_every_kind_of_connection_open_at_once(tmp_path):
    svc, _out, err = stop_with_open(tmp_path, KINDS, signal.SIGTERM, settle=0.2)
    assert svc.proc.returncode == 0, err
    assert "Traceback" not in err and "CancelledError" not in err, err
