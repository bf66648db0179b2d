"""One live swarm per database: an exclusive lock held for the swarm's lifetime.

Two coordinators on one SQLite file would re-queue each other's running tasks
and number events from their own counters. So a swarm takes ``flock`` on
``<database>.lock`` (the OS frees it if the owner dies, so a crashed swarm never
leaves a stale lock) and a second one is refused with the owner's pid. Other
URLs (a PostgreSQL store shared by several hosts) are coordinated in the
database itself, not here.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa

from .errors import StoreError


def lock_path(url: str) -> Path | None:
    """The lock file for an SQLite file URL; None for memory databases and other URLs."""
    try:
        parsed = sa.engine.make_url(url)
    except sa.exc.ArgumentError:
        return None  # not a URL: opening the store says so, with a hint
    db = parsed.database
    if parsed.get_backend_name() != "sqlite" or db in (None, "", ":memory:"):
        return None
    if db.startswith("file:"):
        return None
    return Path(os.path.abspath(db) + ".lock")


def claim(url: str) -> Callable[[], None]:
    """Take the database for this process, or raise `StoreError` naming the owner.

    Returns a function that gives it back.
    """
    path = lock_path(url)
    if path is None:
        return lambda: None
    import fcntl

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise StoreError(
            f"cannot open {url}: cannot create its lock file {path}: {exc.strerror}",
            hint="pass a database in a directory you can write to (db=... / --db)",
        ) from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        owner = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise StoreError(
            f"cannot open {url}: it is in use by another swarm ({owner})",
            hint="close the other swarm using it (swarm.close(), or end its process), or "
            "pass another database (db=... / --db)",
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)

    def release() -> None:
        try:
            os.ftruncate(fd, 0)
        finally:
            os.close(fd)  # closing the descriptor drops the lock

    return release
