"""One live swarm per database: an exclusive lock held for the swarm's lifetime.

Two coordinators on one database would re-queue each other's running tasks and
number events from their own counters (event ids are the coordinator's, handed
out in memory and written in batches), and each keeps its open auctions, its
runners' queues and what they learned in memory. So a database has one owner
at a time, whatever it is, and a second swarm is refused with a `StoreError`
that names the owner:

- An SQLite file: ``flock`` on the database file itself, however the URL spells it
  (see `_claim_file`): a symlink, a hard link, a relative path from another directory
  and a ``file:`` URI all reach the same inode, so the same lock. The OS frees it if
  the owner dies, so a crashed swarm never leaves a stale lock. Its writes are fenced
  by an ownership epoch too, like a server's (below), so a swarm that got in anyway
  (an older timmy, a lock the file system does not keep) can never write over it.
- PostgreSQL: a session-level advisory lock (``pg_try_advisory_lock``) held on a
  connection of its own for the swarm's lifetime, keyed by the schema the URL
  works in (so swarms in different schemas of one database do not collide). The
  server frees it when that connection ends: at once when the owner's process
  dies, and within about half a minute when its machine vanishes (the
  connection asks the server for TCP keepalives). The lock connection carries
  ``application_name`` "timmy swarm pid N on HOST", which is how a refused
  swarm learns whom to name. A thread checks the connection every few seconds
  and, should it have died (a server restart), takes the lock again.

Why not several coordinators sharing one PostgreSQL store, each claiming tasks
with ``FOR UPDATE SKIP LOCKED``? Auctions, runner queues and learned bids live
in a coordinator's memory, and event ids are its own: sharing would mean moving
all of that into the database and paying a round trip per bid. One owner
matches the SQLite behaviour exactly; scale-out is remote runners dialling in
to one swarm service, and a standby coordinator simply waits for the lock.

A lock alone is not enough, least of all on a server: if the lock connection drops (a server
restart, a network cut) the old owner may go on writing while a new one takes
over. The store therefore fences writes with an ownership epoch (see
`timmy.storage.store`): the new owner's first transaction bumps it, and every later
write of the old owner fails with `timmy.errors.OwnershipLost`.

Other URLs (MySQL, ...) are not guarded here: run one swarm per database.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import threading
import zlib
from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa

from timmy.errors import StoreError
from timmy.storage.address import sqlite_file
from timmy.storage.private import private_dirs

log = logging.getLogger("timmy.storage.ownership")

#: First half of the advisory lock key: "timm" in ASCII; the second half is the schema's.
LOCK_CLASS = 0x74696D6D
#: Seconds before a silent lock connection is probed, between probes, and probes lost
#: before the server drops it (and with it the lock).
KEEPALIVE = (10, 5, 3)
#: Seconds between checks that the lock's connection is still alive.
CHECK_EVERY = 5.0
#: Lock the SQLite database file itself (Linux: flock and SQLite's fcntl locks never meet).
INODE_LOCK = sys.platform.startswith("linux")


def whoami() -> str:
    """How a swarm names itself to others: its process and machine."""
    return f"timmy swarm pid {os.getpid()} on {socket.gethostname()}"


def lock_path(url: str) -> Path | None:
    """``<database as written>.lock`` for an SQLite file URL; None for memory databases and
    other URLs. Not the lock itself any more (see `_claim_file`): where the token file
    lives beside it (`timmy.service.tokens.token_path`)."""
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
    path = sqlite_file(url)
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
    from timmy.storage.store import safe_url

    return StoreError(
        f"cannot open {safe_url(url)}: it is in use by another swarm ({owner})",
        hint="close the other swarm using it (swarm.close(), or end its process), or "
        "pass another database (db=... / --db)",
    )


def _claim_file(url: str, path: Path) -> Callable[[], None]:
    """``flock`` the database file itself, then ``<real path>.lock`` beside it.

    Why the database file: a lock keyed by a name can be dodged by another name (a
    symlink, a hard link, a bind mount); the inode cannot. Why ``flock`` and not a
    byte-range lock: SQLite's own locks on the file are POSIX ``fcntl`` byte-range locks
    (around ``PENDING_BYTE``, 1 GiB in), which belong to the *process* and are all dropped
    when *any* descriptor of the file in that process closes (SQLite's own connections
    open and close some): a lock of ours of that kind would vanish under us. On Linux an
    ``flock`` lock belongs to the open file, never conflicts with POSIX locks (SQLite's
    locking is untouched) and goes away only with our descriptor (not inherited by the
    runners: Python's descriptors are close-on-exec). It shows in /proc/locks with its
    pid, which is how a refused swarm names the owner however it spelled the path.

    The ``.lock`` file beside the real path is what older timmy versions lock (so they
    and this one still exclude each other on the same spelling) and holds "pid N on HOST"
    for the message where /proc/locks is not there.

    Elsewhere than Linux (the BSDs, macOS) ``flock`` and ``fcntl`` locks may be one lock
    table, so an ``flock`` on the database would block SQLite's own locks: there only the
    ``.lock`` file beside the real path is locked (every spelling but a hard link or a
    bind mount meets it), and the ownership epoch fences out a swarm that got in anyway.
    """
    import fcntl

    real = Path(os.path.realpath(path))   # symlinks, "..", relative to this directory: out
    if not INODE_LOCK:
        with contextlib.suppress(OSError):   # creating the .lock file says why
            private_dirs(real.parent)
        return _claim_side_file(url, Path(f"{real}.lock"))
    try:
        private_dirs(real.parent)
        try:
            fd = os.open(real, os.O_RDWR | os.O_CREAT, 0o600)
        except PermissionError:   # a read-only file: lock it all the same, the store says
            fd = os.open(real, os.O_RDONLY)
    except OSError as exc:
        raise StoreError(
            f"cannot open {url}: the database file {real} cannot be opened: {exc.strerror}",
            hint="pass the path of a database file (it is created if missing) in a "
                 "directory you can write to (db=... / --db)",
        ) from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        st = os.fstat(fd)
        os.close(fd)
        raise _refused(url, _file_owner(st, real)) from None
    except OSError:   # a file system without flock: the .lock file and the epoch remain
        log.warning("cannot flock %s: relying on %s.lock and the ownership epoch", real, real)
    try:
        release_side = _claim_side_file(url, Path(f"{real}.lock"))
    except BaseException:
        os.close(fd)
        raise

    def release() -> None:
        try:
            release_side()
        finally:
            os.close(fd)  # closing the descriptor drops the lock

    return release


def _claim_side_file(url: str, path: Path) -> Callable[[], None]:
    import fcntl

    try:
        private_dirs(path.parent)   # new directories 0700, as the database's
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
            os.close(fd)

    return release


def _file_owner(st: os.stat_result, real: Path) -> str:
    """Who holds the flock on the database file ``st``: "pid N on HOST" from /proc/locks
    (Linux), else what the owner wrote in the ``.lock`` file beside this name or in the
    database, else "unknown"."""
    pids = _flock_holders(st.st_dev, st.st_ino)
    if pids:
        return ", ".join(f"pid {p}" for p in pids) + f" on {socket.gethostname()}"
    text = _held_side_file(Path(f"{real}.lock"))
    if text:
        return text
    import sqlite3

    with contextlib.suppress(sqlite3.Error), contextlib.closing(
            sqlite3.connect(f"file:{_quote(str(real))}?mode=ro", uri=True, timeout=1)) as conn:
        row = conn.execute("SELECT value FROM timmy_meta WHERE key = 'owner'").fetchone()
        if row:
            return f"{row[0][:200]}, as it last wrote"
    return "unknown"


def _held_side_file(path: Path) -> str | None:
    """What the owner wrote in a ``.lock`` file, if someone holds it now (else it is stale)."""
    import fcntl

    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return None   # nobody holds it: what it says is from an owner long gone
        except BlockingIOError:
            return os.pread(fd, 200, 0).decode(errors="replace").strip() or None
        except OSError:
            return None
    finally:
        os.close(fd)


def _quote(path: str) -> str:
    from urllib.parse import quote

    return quote(path, safe="/")


def _flock_holders(dev: int, ino: int) -> list[int]:
    """Pids holding an flock on the file (dev, ino), from Linux's /proc/locks."""
    want = f"{os.major(dev):02x}:{os.minor(dev):02x}:{ino}"
    pids = []
    try:
        with open("/proc/locks") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 6 and parts[1] == "FLOCK" and parts[5] == want \
                        and parts[4].isdigit():
                    pids.append(int(parts[4]))
    except OSError:
        return []
    return sorted(set(pids))


def _claim_postgres(url: str) -> Callable[[], None]:
    """The advisory lock, on a connection of its own, kept by a `_LockKeeper` thread."""
    from timmy.storage.store import explain

    engine = sa.create_engine(url, poolclass=sa.pool.NullPool, isolation_level="AUTOCOMMIT")
    try:
        conn, key = _lock_session(engine)
        if conn is None:
            raise _refused(url, key)
    except sa.exc.DBAPIError as exc:
        engine.dispose()
        raise explain(url, exc) from exc
    keeper = _LockKeeper(url, engine, conn)
    keeper.start()
    return keeper.release


def _lock_session(engine: sa.Engine):
    """Connect and try the lock: (connection, key) when taken, else (None, who holds it).

    Autocommit, so the connection idles outside any transaction: it holds no snapshot and
    blocks no vacuum, however long the swarm runs.
    """
    conn = engine.connect()
    try:
        idle, interval, count = KEEPALIVE
        conn.exec_driver_sql(f"SET tcp_keepalives_idle = {idle}")
        conn.exec_driver_sql(f"SET tcp_keepalives_interval = {interval}")
        conn.exec_driver_sql(f"SET tcp_keepalives_count = {count}")
        with contextlib.suppress(sa.exc.DBAPIError):   # PostgreSQL < 14 has no such setting
            conn.exec_driver_sql("SET idle_session_timeout = 0")   # idle is all it does
        conn.execute(sa.text("SELECT set_config('application_name', :me, false)"),
                     {"me": whoami()[:63]})
        schema = conn.execute(sa.text("SELECT current_schema()")).scalar() or ""
        key = zlib.crc32(schema.encode()) & 0x7FFFFFFF
        if conn.execute(sa.text("SELECT pg_try_advisory_lock(:a, :b)"),
                        {"a": LOCK_CLASS, "b": key}).scalar():
            return conn, key
        owner = _lock_holder(conn, key)
    except BaseException:
        conn.close()
        raise
    conn.close()
    return None, owner


class _LockKeeper(threading.Thread):
    """Checks the lock connection every few seconds; if it died (a server restart, a network
    cut), takes the lock again on a new one, so a swarm started meanwhile is refused rather
    than taking over. Should another swarm have got the lock in the gap, this one is fenced
    out at its next write (see `timmy.storage.store`) and the keeper says so in the log."""

    def __init__(self, url: str, engine: sa.Engine, conn) -> None:
        super().__init__(name="timmy-lock-keeper", daemon=True)
        self.url, self.engine, self.conn = url, engine, conn
        self.stopping = threading.Event()
        self.lock = threading.Lock()   # the connection: the keeper's, or release()'s

    def run(self) -> None:
        while not self.stopping.wait(CHECK_EVERY):
            with self.lock:
                if self.stopping.is_set():
                    return
                self._check()

    def _check(self) -> None:
        from timmy.storage.store import safe_url

        if self.conn is not None:
            try:
                self.conn.exec_driver_sql("SELECT 1")
                return
            except sa.exc.DBAPIError:
                with contextlib.suppress(sa.exc.DBAPIError):
                    self.conn.close()
                self.conn = None
                log.warning("lost the lock connection to %s: taking the lock again",
                            safe_url(self.url))
        try:
            conn, key = _lock_session(self.engine)
        except sa.exc.DBAPIError as exc:
            log.warning("cannot take the lock on %s again yet: %s", safe_url(self.url),
                        str(exc.orig or exc).strip().splitlines()[0][:200])
            return
        if conn is None:
            log.error("%s is now locked by %s: this swarm will stop at its next write",
                      safe_url(self.url), key)
            self.stopping.set()
            return
        self.conn = conn
        log.warning("took the lock on %s again", safe_url(self.url))

    def release(self) -> None:
        self.stopping.set()
        with self.lock:
            if self.conn is not None:
                with contextlib.suppress(sa.exc.DBAPIError):
                    self.conn.close()   # ending the session frees the lock
                self.conn = None
            self.engine.dispose()


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
