"""Export a store's tables (tasks, bids, agents, events, ledger, reputation) to Parquet or CSV
files, or read them into Arrow tables (`read_tables`), streamed in chunks; times are epoch
seconds (float64).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa

from timmy.errors import ConfigError, ExportError, require
from timmy.storage.private import private_dirs, private_file
from timmy.storage.store import Store
from timmy.storage.tables import (
    agents_table,
    bids_table,
    events_table,
    ledger_table,
    reputation_table,
    tasks_table,
)

if TYPE_CHECKING:
    import pyarrow as pa

TABLES = {"tasks": tasks_table, "bids": bids_table, "agents": agents_table,
          "events": events_table, "ledger": ledger_table, "reputation": reputation_table}
CHUNK = 100_000


def _arrow_type(pa, column: sa.Column):
    t = column.type
    if isinstance(t, sa.Boolean):
        return pa.bool_()
    if isinstance(t, sa.Integer):
        return pa.int64()
    if isinstance(t, sa.Float):
        return pa.float64()
    return pa.string()


def export_store(store: Store, out_dir: str | Path, fmt: str = "parquet") -> dict[str, Path]:
    """Write one file per table into ``out_dir``; returns {table: path}."""
    if fmt not in ("parquet", "csv"):
        raise ConfigError(f"unknown export format {fmt!r}", hint="use 'parquet' or 'csv'")
    pa = require("pyarrow", "analysis")

    out = Path(out_dir)
    try:
        private_dirs(out)   # a directory made here is 0700, the files 0600 (timmy.storage.private)
    except OSError as exc:
        raise ConfigError(f"cannot create export directory {out}: {exc.strerror}",
                          hint="choose a directory you can write to") from exc
    def run() -> dict[str, Path]:
        # One read transaction for all the tables: a consistent snapshot of a running swarm.
        with store.engine.connect() as conn, conn.begin():
            return {name: _export_table(pa, conn, table, out / f"{name}.{fmt}", fmt)
                    for name, table in TABLES.items()}

    return store.guard(run)


def read_tables(store: Store) -> dict[str, pa.Table]:
    """The store's tables as in-memory Arrow tables, with the export's schema.

    One read transaction (a consistent snapshot of a running swarm), the same rows
    and types `export_store` writes: what `timmy.analysis.queries.connect` reads a live
    database through.
    """
    pa = require("pyarrow", "analysis")

    def run() -> dict[str, pa.Table]:
        with store.engine.connect() as conn, conn.begin():
            return {name: pa.concat_tables(_arrow_chunks(pa, conn, table))
                    for name, table in TABLES.items()}

    return store.guard(run)


def reputation_arrow(records) -> pa.Table:
    """A simulated run's reputation (agent_id -> counters, as ``SimRun.reputation``) as an
    Arrow table with the export's ``reputation`` schema, a row per agent with an outcome
    (as a live store keeps them); ``updated_at`` is NaN: the simulator records no time."""
    pa = require("pyarrow", "analysis")
    counters = [c.name for c in reputation_table.columns][1:-1]
    rows = [(a, r) for a, r in sorted((records or {}).items())
            if any(int(r.get(c) or 0) for c in counters)]
    columns = {"agent_id": [a for a, _ in rows],
               **{c: [int(r.get(c) or 0) for _, r in rows] for c in counters},
               "updated_at": [float("nan")] * len(rows)}
    return pa.table(columns, schema=_schema(pa, reputation_table))


def _schema(pa, table: sa.Table):
    return pa.schema([(c.name, _arrow_type(pa, c)) for c in table.columns])


def _arrow_chunks(pa, conn, table: sa.Table):
    """The table's rows in primary-key order, as Arrow tables of up to `CHUNK` rows
    (one empty table when there are none, so every reader gets the schema)."""
    schema = _schema(pa, table)
    key = next(iter(table.primary_key.columns))
    result = conn.execution_options(yield_per=CHUNK).execute(sa.select(table).order_by(key))
    for rows in _with_empty(result.partitions()):
        cols = list(zip(*rows, strict=True)) if rows else [[] for _ in schema]
        yield pa.table(
            {f.name: _arrow_column(pa, table, f, col) for f, col in zip(schema, cols, strict=True)},
            schema=schema)


def _arrow_column(pa, table: sa.Table, field, values) -> pa.Array:
    """One column of a chunk, or `ExportError` for a value of another type (SQLite keeps
    whatever is written into a column, by hand too)."""
    try:
        return pa.array(list(values), field.type)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError) as exc:
        raise ExportError(
            f"column {field.name!r} of the {table.name} table holds a value that is not "
            f"{field.type}: {' '.join(str(exc).split())[:200]}",
            hint="the database holds a value timmy does not write (edited by hand, or by "
                 "another program?): fix or delete that row") from None


def _export_table(pa, conn, table: sa.Table, path: Path, fmt: str) -> Path:
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    schema = _schema(pa, table)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.unlink(missing_ok=True)
    private_file(tmp)   # 0600 before the writer opens it (O_TRUNC keeps the mode)
    writer = pq.ParquetWriter(tmp, schema) if fmt == "parquet" else pacsv.CSVWriter(tmp, schema)
    try:
        for chunk in _arrow_chunks(pa, conn, table):
            writer.write_table(chunk)
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)    # no half-written file left behind
        raise
    writer.close()
    tmp.replace(path)
    return path


def _with_empty(chunks):
    """The chunks, or one empty chunk when there are none (so every file has a schema)."""
    empty = True
    for rows in chunks:
        empty = False
        yield rows
    if empty:
        yield []
