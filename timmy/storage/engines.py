"""One pooled SQLAlchemy engine per database URL per process, with SQLite's connection
settings (WAL, ``synchronous=NORMAL``, a busy timeout, no automatic checkpoints)."""

from __future__ import annotations

import contextlib
import os
import threading
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from timmy.errors import ConfigError, StoreError
from timmy.storage.address import DatabaseAddress

_engines: dict[str, Engine] = {}
_engines_lock = threading.Lock()


WAL_SIZE_LIMIT = 64 * 1024 * 1024   # bytes a WAL is truncated to when a checkpoint resets it


def _sqlite_pragmas(busy_timeout_ms: int):
    def on_connect(dbapi_conn, _record) -> None:
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute(f"PRAGMA busy_timeout={busy_timeout_ms}")
        # Checkpoints run off the write path (Store.checkpoint, from the coordinator), so no
        # commit pays for copying the WAL back into the database.
        cur.execute("PRAGMA wal_autocheckpoint=0")
        # A WAL is reused from its start after a checkpoint, but never shrinks on its own:
        # under steady load it reached 815 MB. Truncate it back to 64 MiB at each reset.
        cur.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
        cur.close()

    return on_connect


def address_of(url: str | DatabaseAddress) -> DatabaseAddress:
    """``url`` parsed (`DatabaseAddress.parse`); a URL it cannot read is a `StoreError`."""
    try:
        return DatabaseAddress.parse(url)
    except ConfigError as exc:
        raise StoreError(exc.message, hint=exc.hint) from None


def get_engine(url: str | DatabaseAddress, busy_timeout: float = 5.0) -> Engine:
    """The one pooled engine for ``url`` in this process (created on first use)."""
    address = address_of(url)
    url = address.url
    key = f"{url}#{busy_timeout}"
    with _engines_lock:
        engine = _engines.get(key)
        if engine is not None:
            return engine
        kwargs: dict[str, Any] = {}
        if address.is_sqlite:
            db = address.database
            if db and db != ":memory:" and not db.startswith("file:"):
                parent = os.path.dirname(os.path.abspath(db))
                from timmy.storage.private import private_dirs, private_file

                try:
                    private_dirs(parent)   # new directories 0700 (timmy.storage.private)
                except OSError as exc:
                    raise StoreError(
                        f"cannot create the directory {parent} for {url}: {exc.strerror}",
                        hint="pass --db with a path you can write to",
                    ) from exc
                with contextlib.suppress(OSError):   # else SQLite says why it cannot
                    private_file(db)   # 0600 before SQLite makes it, its -wal, -shm 0644
            kwargs["connect_args"] = {"check_same_thread": False}
        try:
            engine = sa.create_engine(url, **kwargs)
        except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError, ImportError) as exc:
            raise StoreError(
                f"cannot use database URL {url!r}: {exc}",
                hint="check the dialect name; PostgreSQL needs pip install 'timmy[postgres]'",
            ) from exc
        if address.is_sqlite:
            sa.event.listen(engine, "connect", _sqlite_pragmas(int(busy_timeout * 1000)))
        _engines[key] = engine
        return engine

