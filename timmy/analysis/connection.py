"""Connecting DuckDB to a bid log: `connect` makes an in-memory connection with views
``tasks``, ``bids``, ``agents`` and ``events`` over an export directory, a live store (one
snapshot, streamed to temporary Parquet files) or a simulated run, checks their columns, and
builds ``task_keywords``. duckdb is imported on first use (extra ``analysis``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from timmy.errors import ConfigError, ExportError, StoreError, require

if TYPE_CHECKING:
    import duckdb

    from timmy.market.personas import Persona

#: The tables of an export, each a ``<name>.parquet`` file in the directory.
TABLES = ("tasks", "bids", "agents", "events")
#: Tables a newer export has: read when there, else an empty view of their columns (an
#: export made before they existed still works).
OPTIONAL_TABLES = ("ledger", "reputation")
EXPORT_HINT = "export one with swarm.export(dir) or `timmy export DB DIR`"
_SQLITE_MAGIC = b"SQLite format 3\x00"
# No DuckDB extension may be fetched from the network, even by a user's own query.
_DUCKDB_CONFIG = {"autoinstall_known_extensions": False, "autoload_known_extensions": False,
                  "allow_community_extensions": False}


# -- connecting ------------------------------------------------------------------------


def connect(source: str | os.PathLike | Any, *,
            personas: Mapping[str, Persona] | Iterable[Persona] | None = None
            ) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection over an export or a live store.

    ``source`` is an export directory (``tasks``/``bids``/``agents``/``events``
    ``.parquet``, as written by ``swarm.export``, ``timmy export`` or
    ``SimRun.export``), a SQLite file path, an SQLAlchemy URL (a database is
    exported in one snapshot, a chunk at a time, to temporary Parquet files kept
    as long as the connection: later writes are not seen, and however long its
    history, it is never held in memory), or an
    object with ``tasks``, ``bids``, ``agents`` and ``events`` DataFrames, such
    as a `timmy.sim.simulator.SimRun`. ``personas`` (default `timmy.PERSONAS`) is the
    catalog whose keywords fill ``task_keywords``.

    Raises `ExportError` for a path that is neither an export directory nor a
    database, or an export with a missing, unreadable or foreign table file,
    `StoreError` when a database cannot be read, `ConfigError` for anything else.

        con = connect("data/demo-export")          # an export directory (Parquet files)
        con = connect("data/timmy.db")             # or a live store, read on the fly
        con = connect(timmy.sim.simulate(descs))   # or a simulated run, without exporting it
        win_rate_by_persona(con)                   # -> pandas DataFrame
        con.sql("SELECT ... FROM bids JOIN agents USING (agent_id)")   # or your own SQL

    The connection has views ``tasks``, ``bids``, ``agents`` and ``events`` with the
    columns of `timmy.storage.store` (times in epoch seconds), and a table
    ``task_keywords(task_id, keyword, persona)``: which catalog keywords each task's
    description matches on word boundaries. The questions stay SQL run by DuckDB, so
    they hold at millions of bids. A bid's persona comes from ``agents`` (the
    ``<persona>-<n>`` agent id when an agent is missing); "price paid" is
    ``tasks.price_sats`` of completed tasks. DuckDB extensions that download
    (sqlite_scanner, httpfs) are never used: a live store is streamed through
    SQLAlchemy into temporary Parquet files (`timmy.storage.export.export_store`), and
    auto-installing extensions is switched off.
    """
    duckdb = require("duckdb", "analysis")
    con = duckdb.connect(":memory:", config=_DUCKDB_CONFIG)
    try:
        if isinstance(source, str | os.PathLike):
            url = _database_url(source)
            if url is None:
                _view_export(con, Path(source))
            else:
                _snapshot_store(con, url)
        elif all(hasattr(source, name) for name in TABLES):
            tables = {n: getattr(source, n) for n in TABLES + OPTIONAL_TABLES
                      if hasattr(source, n)}
            if isinstance(tables.get("reputation"), Mapping | type(None)):
                _reputation_frame(tables)   # a SimRun's: agent_id -> counters (or None)
            _register(con, tables, f"the {type(source).__name__}")
        else:
            raise ConfigError(f"cannot analyse a {type(source).__name__}",
                              hint="pass an export directory, a SQLite file or URL, or a "
                                   "SimRun")
        _empty_optional(con)
        _build_task_keywords(con, _catalog(personas))
    except BaseException:
        con.close()
        raise
    return con


def export_files(directory: str | Path) -> dict[str, Path]:
    """The four table files of an export directory, or `ExportError` naming what is missing."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ExportError(f"no export directory at {directory}", hint=EXPORT_HINT)
    files = {name: directory / f"{name}.parquet" for name in TABLES}
    for name, path in files.items():
        if not path.is_file():
            csv = directory / f"{name}.csv"
            hint = (f"{csv.name} is there, but analytics reads Parquet: export again "
                    "without --format csv" if csv.is_file() else EXPORT_HINT)
            raise ExportError(f"{directory} is not a timmy export: it has no {path.name}",
                              hint=hint)
    return files


def _database_url(source: str | Path) -> str | None:
    """The database URL ``source`` names, or None when it is an export directory."""
    if isinstance(source, str) and "://" in source:
        _check_sqlite_file(source)
        return source
    path = Path(source)
    if path.is_dir():
        return None
    if not path.exists():
        raise ExportError(f"no export directory or database at {path}",
                          hint=f"pass an export directory or a SQLite file; {EXPORT_HINT}")
    try:
        with path.open("rb") as f:
            head = f.read(len(_SQLITE_MAGIC))
    except OSError as exc:
        raise ExportError(f"cannot read {path}: {exc.strerror or exc}",
                          hint="check the file's permissions") from exc
    if head == _SQLITE_MAGIC:
        from timmy.storage.address import db_url

        return db_url(str(path))
    if path.suffix == ".parquet":
        raise ExportError(f"{path} is one table of an export, not the export",
                          hint=f"pass the directory that holds it: {path.parent}")
    raise ExportError(f"{path} is neither an export directory nor a SQLite database",
                      hint=f"pass an export directory or a timmy SQLite file; {EXPORT_HINT}")


def _check_sqlite_file(url: str) -> None:
    """Refuse a ``sqlite:///`` URL whose file does not exist (SQLite would create it)."""
    from timmy.storage.address import DatabaseAddress

    try:
        address = DatabaseAddress.parse(url)
    except ConfigError:
        return  # Store says what is wrong with the URL
    db = address.database
    if (address.is_sqlite and db and db != ":memory:"
            and not db.startswith("file:") and not Path(db).is_file()):
        raise StoreError(f"no database file at {db}",
                         hint="pass the path of a timmy SQLite file (e.g. data/timmy.db), "
                              "an SQLAlchemy URL or an export directory")


def _view_export(con: duckdb.DuckDBPyConnection, directory: Path) -> None:
    import duckdb

    files = export_files(directory)
    files.update({n: directory / f"{n}.parquet" for n in OPTIONAL_TABLES
                  if (directory / f"{n}.parquet").is_file()})
    for name, path in files.items():
        literal = _sql_string(_glob_literal(str(path.resolve())))
        try:
            con.execute(f"CREATE VIEW {name} AS SELECT * FROM read_parquet({literal})")
        except duckdb.Error as exc:
            raise ExportError(f"{path} is not a readable Parquet file "
                              f"({str(exc).splitlines()[0][:200]})",
                              hint=f"export it again; {EXPORT_HINT}") from exc
        _check_columns(con, name, str(path))


def _empty_optional(con: duckdb.DuckDBPyConnection) -> None:
    """An empty table, with the store's columns, for each optional table the source lacks."""
    import sqlalchemy as sa

    from timmy.storage.export import TABLES as SCHEMA

    have = {r[0] for r in con.execute(
        "SELECT table_name FROM information_schema.tables").fetchall()}
    for name in OPTIONAL_TABLES:
        if name in have:
            continue
        cols = ", ".join(
            f"{c.name} " + ("BOOLEAN" if isinstance(c.type, sa.Boolean) else
                            "BIGINT" if isinstance(c.type, sa.Integer) else
                            "DOUBLE" if isinstance(c.type, sa.Float) else "VARCHAR")
            for c in SCHEMA[name].columns)
        con.execute(f"CREATE TABLE {name} ({cols})")


def _glob_literal(path: str) -> str:
    """``path`` as a DuckDB file pattern that matches only itself: DuckDB globs every path it
    reads (``run[1]`` would read ``run1``), and a one-character class is literal."""
    return "".join(f"[{ch}]" if ch in "[*?" else ch for ch in path)


def _sql_string(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


# DuckDB's type names that a numeric column of timmy's may have (a DataFrame with a missing
# value turns an integer column into a float one, a decimal is a number too).
_NUMERIC = ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT",
            "UINTEGER", "UBIGINT", "UHUGEINT", "FLOAT", "DOUBLE", "DECIMAL", "NULL")


def _check_columns(con: duckdb.DuckDBPyConnection, name: str, where: str) -> None:
    """Refuse a table without the columns of timmy's, or with a number column that holds
    something else (the queries would fail obscurely, or sum text)."""
    import sqlalchemy as sa

    from timmy.storage.export import TABLES as SCHEMA

    columns = {row[0]: row[1] for row in con.execute(f"DESCRIBE {name}").fetchall()}
    missing = [c.name for c in SCHEMA[name].columns if c.name not in columns]
    if missing:
        raise ExportError(f"{where} has no column {missing[0]!r}: not a timmy {name} table",
                          hint=f"export it again with this timmy; {EXPORT_HINT}")
    for column in SCHEMA[name].columns:
        kind = str(columns[column.name]).upper()
        if isinstance(column.type, sa.Boolean):
            ok = kind == "BOOLEAN" or kind.startswith(_NUMERIC)
        elif isinstance(column.type, sa.Integer | sa.Float):
            ok = kind.startswith(_NUMERIC)
        else:
            continue
        if not ok:
            want = "true/false" if isinstance(column.type, sa.Boolean) else "numbers"
            raise ExportError(f"{where}: column {column.name!r} holds {kind}, not {want}: "
                              f"not a timmy {name} table",
                              hint=f"export it again with this timmy; {EXPORT_HINT}")


def _snapshot_store(con: duckdb.DuckDBPyConnection, url: str) -> None:
    """Views over a live store's export, in a temporary directory removed with ``con``."""
    import shutil
    import tempfile
    import weakref

    from timmy.storage.export import export_store
    from timmy.storage.store import Store

    store = Store(url, create=False)
    try:
        tmp = tempfile.mkdtemp(prefix="timmy-analytics-")   # owner-only (0700)
        weakref.finalize(con, shutil.rmtree, tmp, True)
        export_store(store, tmp)
    finally:
        store.dispose()
    _view_export(con, Path(tmp))


def _reputation_frame(tables: dict[str, Any]) -> None:
    """A SimRun's ``reputation`` (agent_id -> counters, as `Swarm.reputation` shows them) as
    a ``reputation`` table, as its export writes it; left out (then empty) when None."""
    from timmy.storage.export import reputation_arrow

    records = tables.pop("reputation")
    if records is not None:
        tables["reputation"] = reputation_arrow(records)


def _register(con: duckdb.DuckDBPyConnection, tables: Mapping[str, Any], where: str) -> None:
    """Views over in-memory tables (Arrow tables or pandas DataFrames)."""
    for name, table in tables.items():
        con.register(name, table)
        _check_columns(con, name, f"{name} of {where}")


def _catalog(personas) -> dict[str, Persona]:
    if personas is None:
        from timmy.market.personas import PERSONAS

        return dict(PERSONAS)
    if isinstance(personas, Mapping):
        return dict(personas)
    return {p.id: p for p in personas}


def _build_task_keywords(con: duckdb.DuckDBPyConnection, catalog: dict[str, Persona]) -> None:
    """``task_keywords``: each task's matched keywords, matched once per distinct description
    (workloads repeat templates, so there are far fewer descriptions than tasks)."""
    import pyarrow as pa

    descriptions, keywords, owners = [], [], []
    for (text,) in con.execute(
            "SELECT DISTINCT description FROM tasks WHERE description IS NOT NULL").fetchall():
        for pid, persona in catalog.items():
            for keyword in persona.matched_keywords(text):
                descriptions.append(text)
                keywords.append(keyword)
                owners.append(pid)
    matched = pa.table({"description": pa.array(descriptions, pa.string()),
                        "keyword": pa.array(keywords, pa.string()),
                        "persona": pa.array(owners, pa.string())})
    con.register("_description_keywords", matched)
    try:
        con.execute("""
            CREATE TABLE task_keywords AS
            SELECT t.task_id, d.keyword, d.persona
            FROM tasks t JOIN _description_keywords d USING (description)
            ORDER BY t.task_id, d.persona, d.keyword""")
    finally:
        con.unregister("_description_keywords")

