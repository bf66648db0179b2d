"""Is pid N still the process we started? `ProcessId` (pid, start time, boot id), `marked`
(processes carrying our marker) and `send_checked` (a signal only after the check). Linux only.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")


@dataclass(frozen=True)
class ProcessId:
    """A pid with its start time and boot id: equal only for the very same process.

    A pid written to a file (``dashboards.json``) outlives its process: after a crash or
    a reboot the same number names some unrelated process, and signalling it (or its
    process group) kills a stranger. So the pid is kept with what cannot be reused
    together with it: its start time (``/proc/PID/stat`` field 22, clock ticks since
    boot) and the boot it belongs to (``/proc/sys/kernel/random/boot_id``). Elsewhere
    than Linux nothing is ever "ours", so nothing is signalled.
    """

    pid: int
    start: int
    boot: str


def boot_id() -> str:
    try:
        return (PROC / "sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _stat(pid: int) -> list[str] | None:
    """Fields 3.. of /proc/PID/stat (state first), or None when the process is gone."""
    try:
        raw = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    return raw.rsplit(")", 1)[1].split()


def identify(pid: int) -> ProcessId | None:
    """The identity of live process ``pid`` (None when it is gone or a zombie)."""
    fields = _stat(pid)
    if fields is None or fields[0] in ("Z", "X"):
        return None
    return ProcessId(pid, int(fields[19]), boot_id())


def is_same(pid: int, start: int, boot: str) -> bool:
    """True when ``pid`` is still the process that started at ``start`` in boot ``boot``."""
    if not pid or not start or not boot:
        return False
    return identify(pid) == ProcessId(pid, start, boot)


def environ_has(pid: int, name: str, value: str) -> bool:
    """True when live process ``pid`` has ``name=value`` in its environment (as started)."""
    try:
        env = (PROC / str(pid) / "environ").read_bytes()
    except OSError:            # gone, or another user's
        return False
    return f"{name}={value}".encode() in env.split(b"\0")


def marked(name: str, value: str) -> list[int]:
    """Pids of live processes (not zombies) whose environment carries ``name=value``.

    A marker (``NAME=VALUE``) is inherited by every descendant (runners, kernels), which
    is how a launcher finds what it started even when the leader is gone.
    """
    if not value:
        return []
    pids = []
    for entry in PROC.iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            pid = int(entry.name)
            if environ_has(pid, name, value) and identify(pid) is not None:
                pids.append(pid)
    return pids


def send_checked(pid: int, sig: int, check) -> bool:
    """Send ``sig`` to ``pid`` if ``check(pid)`` holds; True if sent.

    The process is pinned by a pidfd before the check where the system has them, so a pid
    reused between check and signal is never signalled.
    """
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return False
    except (AttributeError, OSError):   # no pidfds here: check, then signal by pid
        fd = None
    try:
        if not check(pid):
            return False
        if fd is not None:
            signal.pidfd_send_signal(fd, sig)
        else:
            os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        return False
    finally:
        if fd is not None:
            os.close(fd)
    return True


def signal_if(pid: int, sig: int, name: str, value: str) -> bool:
    """Send ``sig`` to ``pid`` only if it carries the marker ``name=value``; True if sent."""
    return send_checked(pid, sig, lambda p: environ_has(p, name, value))


def signal_marked(name: str, value: str, sig: int = signal.SIGTERM) -> list[int]:
    """Send ``sig`` to every process carrying ``name=value``; the pids signalled."""
    return [pid for pid in marked(name, value) if signal_if(pid, sig, name, value)]
