"""One live swarm per database: an exclusive lock held for the swarm's lifetime.

Two coordinators on one database would re-queue each other's running tasks and
number events from their own counters (event ids are the coordinator's, handed
out in memory and written in batches), and each keeps its open auctions, its
runners' queues and what they learned in memory. So a database has one owner
at a time, whatever it is, and a second swarm is refused with a `StoreError`
that names the owner:

- An SQLite file: ``flock`` on ``<database>.lock``. The OS frees it if the owner
  dies, so a crashed swarm never leaves a stale lock.
- PostgreSQL: a session-level advisory lock (``pg_try_advisory_lock``) held on a
  connection of its own for the swarm's lifetime, keyed by the schema the URL
  works in (so swarms in different schemas of one database do not collide). The
  server frees it when that connection ends: at once when the owner's process
  dies, and within about half a minute when its machine vanishes (the
  connection asks the server for TCP keepalives). The lock connection carries
  ``application_name`` "timmy swarm pid N on HOST", which is how a refused
  swarm learns whom to name.

Why not several coordinators sharing one PostgreSQL store, each claiming tasks
with ``FOR UPDATE SKIP LOCKED``? Auctions, runner queues and learned bids live
in a coordinator's memory, and event ids are its own: sharing would mean moving
all of that into the database and paying a round trip per bid. One owner
matches the SQLite behaviour exactly; scale-out is remote runners dialling in
to one swarm service, and a standby coordinator simply waits for the lock.

A lock alone is not enough on a server: if the lock connection drops (a server
restart, a network cut) the old owner may go on writing while a new one takes
over. The store therefore fences writes with an ownership epoch (see
`timmy.store`): the new owner's first transaction bumps it, and every later
write of the old owner fails with `timmy.errors.OwnershipLost`.

Other URLs (MySQL, ...) are not guarded here: run one swarm per database.
"""

from __future__ import annotations

import os
import socket
import zlib
from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa

from .errors import StoreError

#: First half of the advisory lock key: "timm" in ASCII; the second half is the schema's.
LOCK_CLASS = 0x74696D6D
#: Seconds before a silent lock connection is probed, between probes, and probes lost
#: before the server drops it (and with it the lock).
KEEPALIVE = (10, 5, 3)


def whoami() -> str:
    """How a swarm names itself to others: its process and machine."""
    return f"timmy swarm pid {os.getpid()} on {socket.gethostname()}"


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
    if path is not None:
        return _claim_file(url, path)
    try:
        backend = sa.engine.make_url(url).get_backend_name()
    except sa.exc.ArgumentError:
        return lambda: None
    if backend == "postgresql":
        return _claim_postgres(url)
    return lambda: None


def _refused(url: str, owner: str) -> StoreError:
    from .store import safe_url

    return StoreError(
        f"cannot open {safe_url(url)}: it is in use by another swarm ({owner})",
        hint="close the other swarm using it (swarm.close(), or end its process), or "
        "pass another database (db=... / --db)",
    )


def _claim_file(url: str, path: Path) -> Callable[[], None]:
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
        raise _refused(url, owner) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)

    def release() -> None:
        try:
            os.ftruncate(fd, 0)
        finally:
            os.close(fd)  # closing the descriptor drops the lock

    return release


def _claim_postgres(url: str) -> Callable[[], None]:
    """The advisory lock on a connection of its own (not pooled: it lives as long as the swarm).

    Autocommit, so the connection idles outside any transaction: it holds no snapshot
    and blocks no vacuum, however long the swarm runs.
    """
    from .store import explain

    engine = sa.create_engine(url, poolclass=sa.pool.NullPool,
                              isolation_level="AUTOCOMMIT")
    conn = None
    try:
        conn = engine.connect()
        idle, interval, count = KEEPALIVE
        conn.exec_driver_sql(f"SET tcp_keepalives_idle = {idle}")
        conn.exec_driver_sql(f"SET tcp_keepalives_interval = {interval}")
        conn.exec_driver_sql(f"SET tcp_keepalives_count = {count}")
        conn.execute(sa.text("SELECT set_config('application_name', :me, false)"),
                     {"me": whoami()[:63]})
        schema = conn.execute(sa.text("SELECT current_schema()")).scalar() or ""
        key = zlib.crc32(schema.encode()) & 0x7FFFFFFF
        got = conn.execute(sa.text("SELECT pg_try_advisory_lock(:a, :b)"),
                           {"a": LOCK_CLASS, "b": key}).scalar()
        if not got:
            owner = _lock_holder(conn, key)
            conn.close()
            engine.dispose()
            raise _refused(url, owner)
    except sa.exc.DBAPIError as exc:
        if conn is not None:
            conn.close()
        engine.dispose()
        raise explain(url, exc) from exc

    def release() -> None:
        try:
            conn.close()   # ending the session frees the lock, even if the unlock would fail
        except sa.exc.DBAPIError:
            pass
        finally:
            engine.dispose()

    return release


def _lock_holder(conn, key: int) -> str:
    """The session holding the lock, as it named itself (and where it connects from)."""
    row = conn.execute(sa.text(
        "SELECT a.application_name, a.client_addr, a.pid FROM pg_locks l "
        "JOIN pg_stat_activity a ON a.pid = l.pid "
        "WHERE l.locktype = 'advisory' AND l.granted AND l.classid = :a AND l.objid = :b "
        "AND l.objsubid = 2"), {"a": LOCK_CLASS, "b": key}).first()
    if row is None:
        return "unknown: it let go just now, try again"
    name = row.application_name or "a session without a name"
    where = f"from {row.client_addr}" if row.client_addr else "over a local socket"
    return f"{name}; server session {row.pid}, {where}"
