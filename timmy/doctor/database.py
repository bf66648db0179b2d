"""The doctor's database check: a SQLite file probed for writing (its write lock taken and
rolled back, or a file created and removed where a new one would go), or a server database
connected to; nothing in it is changed.
"""

from __future__ import annotations

import sqlite3
import tempfile
from pathlib import Path

from timmy.doctor.report import Finding
from timmy.errors import ConfigError


def check(db: str, timeout: float) -> Finding:
    """``db`` (a path or an SQLAlchemy URL) can be written (SQLite) or connected to."""
    try:
        import sqlalchemy as sa
    except ImportError as exc:
        return ("database", "core", False, f"cannot check it: sqlalchemy does not import ({exc})",
                "pip install -e .  (reinstall timmy into this environment)")
    from timmy.storage.address import DatabaseAddress

    fix = "pass a database you can write to: timmy doctor --db PATH (or db=... in Python)"
    try:
        address = DatabaseAddress.parse(db)
    except ConfigError as exc:
        return ("database", "core", False, f"{db!r} is not a database URL: {exc.message}",
                "pass a file path (data/timmy.db) or an SQLAlchemy URL")
    if address.is_sqlite:
        return _sqlite(address.database or "", fix)
    return _server_database(sa, address, timeout)


def _sqlite(database: str, fix: str) -> Finding:
    if database in ("", ":memory:") or database.startswith("file:"):
        return ("database", "core", True, f"SQLite {database or 'in memory'}: nothing to probe",
                "")
    path = Path(database).expanduser().absolute()
    if path.exists():
        if not path.is_file():
            return ("database", "core", False, f"{path} is not a file", fix)
        problem = _probe_dir(path.parent) or _probe_sqlite(path)
        if problem:
            return ("database", "core", False, f"{path}: {problem}", fix)
        return ("database", "core", True, f"{path} (writable; {_task_count(path)})", "")
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        return ("database", "core", False,
                f"{path} cannot be created: {parent} is a file, not a directory", fix)
    problem = _probe_dir(parent)
    if problem:
        return ("database", "core", False, f"{path} cannot be created: {problem}", fix)
    return ("database", "core", True, f"{path} (not created yet; {parent} is writable)", "")


def _probe_dir(directory: Path) -> str | None:
    """None if a file can be created in ``directory`` (and was removed), else why not.

    A real attempt, not os.access(): root passes os.access() on a read-only filesystem.
    """
    try:
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".timmy-doctor-"):
            pass
    except OSError as exc:
        return f"cannot write in {directory} ({exc.strerror or exc})"
    return None


def _probe_sqlite(path: Path) -> str | None:
    """Take SQLite's write lock and roll back: the file is writable and not locked."""
    try:
        conn = sqlite3.connect(f"{path.as_uri()}?mode=rw", uri=True, timeout=0.5)
    except sqlite3.Error as exc:
        return f"cannot open it for writing ({exc})"
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.rollback()
    except sqlite3.Error as exc:
        return f"cannot write to it ({exc})"
    finally:
        conn.close()
    return None


def _task_count(path: Path) -> str:
    try:
        with sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True) as conn:
            # tasks are never deleted: the newest rowid (task_id) is their number, read off
            # the table's b-tree in one step, where count(*) reads every row
            n = conn.execute("select coalesce(max(rowid), 0) from tasks").fetchone()[0]
        return f"{n:,} tasks"
    except sqlite3.Error:
        return "no timmy tables yet"


def _server_database(sa, address, timeout: float) -> Finding:
    shown = address.display
    connect_args = {"connect_timeout": max(1, round(timeout))} \
        if address.backend == "postgresql" else {}
    try:
        engine = sa.create_engine(address.url, connect_args=connect_args)
    except (ImportError, sa.exc.NoSuchModuleError) as exc:
        return ("database", "core", False, f"{shown}: no driver ({exc})",
                'pip install "timmy[postgres]"')
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("select 1"))
    except Exception as exc:
        return ("database", "core", False, f"{shown}: cannot connect ({_first_line(exc)})",
                "start the database server, or fix the URL / credentials in --db")
    finally:
        engine.dispose()
    return ("database", "core", True,
            f"{shown} (connected; write access is not probed on a server database)", "")


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]

