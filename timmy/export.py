"""Export a store's tables (tasks, bids, agents, events) to Parquet or CSV files.

Times are epoch seconds (float64). Rows are streamed in chunks, so an export
of millions of bids does not hold them all in memory.
"""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa

from .errors import ConfigError, require
from .store import Store, agents_table, bids_table, events_table, tasks_table

TABLES = {"tasks": tasks_table, "bids": bids_table, "agents": agents_table,
          "events": events_table}
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
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create export directory {out}: {exc.strerror}",
                          hint="choose a directory you can write to") from exc
    written: dict[str, Path] = {}
    for name, table in TABLES.items():
        schema = pa.schema([(c.name, _arrow_type(pa, c)) for c in table.columns])
        path = out / f"{name}.{fmt}"
        tmp = path.with_suffix(path.suffix + ".tmp")
        key = next(iter(table.primary_key.columns))
        stmt = sa.select(table).order_by(key)
        writer = pq.ParquetWriter(tmp, schema) if fmt == "parquet" else None
        csv_writer = None
        try:
            with store.engine.connect() as conn:
                result = conn.execution_options(yield_per=CHUNK).execute(stmt)
                for rows in _with_empty(result.partitions()):
                    cols = list(zip(*rows, strict=True)) if rows else [[] for _ in schema]
                    batch = pa.table({f.name: pa.array(list(col), f.type)
                                      for f, col in zip(schema, cols, strict=True)},
                                     schema=schema)
                    if writer is not None:
                        writer.write_table(batch)
                    else:
                        if csv_writer is None:
                            csv_writer = pacsv.CSVWriter(tmp, schema)
                        csv_writer.write_table(batch)
        finally:
            if writer is not None:
                writer.close()
            if csv_writer is not None:
                csv_writer.close()
        tmp.replace(path)
        written[name] = path
    return written


def _with_empty(chunks):
    """The chunks, or one empty chunk when there are none (so every file has a schema)."""
    empty = True
    for rows in chunks:
        empty = False
        yield rows
    if empty:
        yield []
