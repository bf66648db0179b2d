"""``timmy export``, ``timmy personas`` and ``timmy report``: a database, the catalog, the
canned analytics tables."""

from __future__ import annotations

from pathlib import Path

import click

from timmy.cli.common import CONTEXT_SETTINGS, frame_table, make_console
from timmy.errors import ConfigError, StoreError
from timmy.storage.address import DatabaseAddress, db_url, describe_db
from timmy.textsafe import clean, text


@click.command(context_settings=CONTEXT_SETTINGS,
               short_help="Export a database's tables to Parquet or CSV files.")
@click.argument("db", metavar="DB")
@click.argument("out_dir", metavar="DIR", type=click.Path(file_okay=False, path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["parquet", "csv"]), default="parquet",
              show_default=True, help="File format of the export.")
def export_cmd(db: str, out_dir: Path, fmt: str) -> None:
    """Export a timmy database's tables (tasks, bids, agents, events) into DIR.

    DB is an SQLAlchemy URL (sqlite:///data/timmy.db, postgresql+psycopg://...)
    or the path of a SQLite file. One file per table is written; times are
    epoch seconds. DuckDB, pandas and pyarrow read the Parquet files directly.
    """
    from timmy.storage.export import export_store
    from timmy.storage.store import Store

    address = DatabaseAddress.parse(db)
    path = address.file
    if path is not None and not path.is_file():
        raise StoreError(f"no database file at {path}",
                         hint="pass the path of a timmy SQLite file (e.g. data/timmy.db) or "
                              "an SQLAlchemy URL")
    store = Store(address, create=False)
    try:
        written = export_store(store, out_dir, fmt)
    finally:
        store.dispose()
    for table, file in written.items():
        click.echo(clean(f"{table:<7} {file} ({_size(file.stat().st_size)})"))


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover


@click.command(context_settings=CONTEXT_SETTINGS,
               short_help="Show the persona catalog (built-in or from a file).")
@click.option("--file", "file", default=None, metavar="PATH",
              type=click.Path(dir_okay=False, path_type=Path),
              help="A TOML ([[persona]] tables) or JSON (a list) persona file to show "
                   "instead of the built-ins; it is validated first.")
def personas_cmd(file: Path | None) -> None:
    """Show the persona catalog: id, role, rate, bid base, jitter, strategy and keywords."""
    from rich.table import Table

    from timmy.market.personas import PERSONAS
    from timmy.storage.persona_files import load_personas

    catalog = load_personas(file) if file is not None else PERSONAS
    where = f"from {file}" if file is not None else "built in"
    table = Table(title=text(f"{len(catalog)} personas {where}"), title_justify="left")
    table.add_column("id")
    table.add_column("role")
    for name in ("rate", "bid_base", "jitter"):
        table.add_column(name, justify="right")
    table.add_column("strategy")
    table.add_column("keywords")
    for p in catalog.values():
        keywords = " ".join(f'"{k}"' if " " in k else k for k in p.preferred_keywords)
        table.add_row(text(p.id), text(p.role), str(p.rate_sats), str(p.bid_base),
                      str(p.bid_jitter), text(p.strategy), text(keywords))
    make_console().print(table)


@click.command(context_settings=CONTEXT_SETTINGS,
               short_help="Summarise an export or a database; --all prints every table.")
@click.argument("source", metavar="DIR", required=False)
@click.option("--db", default=None, metavar="URL",
              help="Read this database (SQLAlchemy URL or SQLite path) on the fly instead "
                   "of DIR.")
@click.option("--all", "show_all", is_flag=True,
              help="Print every canned table instead of the summary.")
@click.option("--table", "tables", multiple=True, metavar="NAME",
              help="Print this canned table (repeatable); one of: "
                   "win_rate_by_persona, earnings_by_persona, price_by_keyword, price_by_spec, "
                   "latency_percentiles, reauctions_and_failures, bids_per_auction, "
                   "price_over_time, balances, reputation.")
def report_cmd(source: str | None, db: str | None, show_all: bool = False,
               tables: tuple[str, ...] = ()) -> None:
    """Summarise an export directory or a database; print its canned tables on request.

    DIR is an export directory (written by `timmy export`, swarm.export or
    SimRun.export) or a timmy SQLite file, which is read on the fly. By
    default a short summary: tasks by state, on/off-spec wins, latency, and
    the personas that earned most. --all prints every table of
    timmy.analysis.queries (win rate and earnings by persona, price by keyword
    and on/off-spec, latency percentiles, re-auctions and failures, bids per
    auction, price over time, balances, reputation); --table NAME one of them.
    """
    from rich.text import Text

    from timmy.analysis import queries as analytics

    if (source is None) == (db is None):
        raise ConfigError("pass an export directory or SQLite file as DIR, or --db URL "
                          "(not both)" if source else "nothing to report on",
                          hint="e.g. `timmy report data/demo-export` or "
                               "`timmy report --db sqlite:///data/timmy.db`")
    unknown = [name for name in tables if name not in analytics.REPORTS]
    if unknown:
        raise ConfigError(f"--table {unknown[0]}: no such table",
                          hint=f"tables: {', '.join(analytics.REPORTS)}")
    if show_all and tables:
        raise ConfigError("pass --all or --table, not both",
                          hint="--all prints every table; --table NAME the ones named")
    con = analytics.connect(db_url(db) if db is not None else source)
    try:
        tasks, bids, auctions, agents = con.execute(
            "SELECT (SELECT count(*) FROM tasks), (SELECT count(*) FROM bids), "
            "(SELECT count(DISTINCT auction_id) FROM bids), (SELECT count(*) FROM agents)"
        ).fetchone()
        console = make_console()
        where = describe_db(db_url(db)) if db is not None else str(Path(source).resolve())
        console.print(text(f"report on {where}: {tasks:,} tasks, {auctions:,} auctions, "
                           f"{bids:,} bids, {agents:,} agents"))
        names = list(analytics.REPORTS) if show_all else list(dict.fromkeys(tables))
        if not names:
            console.print()
            console.print(Text("Summary", style="bold"))
            console.print(frame_table(report_summary(con)))
            console.print()
            console.print(text("every table: add --all; one: --table NAME ("
                               + ", ".join(analytics.REPORTS) + ")"))
        for name in names:
            # The title above the table, not in it: rich would wrap it to the table's width.
            console.print()
            console.print(Text(analytics.title(name), style="bold"))
            console.print(frame_table(analytics.REPORTS[name](con)))
    finally:
        con.close()


def report_summary(con, top: int = 3):
    """The summary `timmy report` prints: one row per figure (``figure``, ``value``), read
    from the canned tables so the two always agree."""
    import pandas as pd

    from timmy.analysis import queries as analytics

    rows: list[tuple[str, str]] = []
    outcomes = analytics.reauctions_and_failures(con)
    states = outcomes[outcomes.what == "status"]
    by_state = zip(states.value, states.tasks, strict=True)
    rows.append(("tasks by state", ", ".join(f"{int(n):,} {s}" for s, n in by_state) or "none"))
    again = outcomes[outcomes.what == "re-auctioned"].tasks.sum()
    rows.append(("re-auctioned tasks", f"{int(again):,}"))
    spec = analytics.price_by_spec(con).set_index("spec")
    for name in ("on-spec", "off-spec"):
        if name in spec.index:
            r = spec.loc[name]
            price = "-" if pd.isna(r.mean_price) else f"{r.mean_price:.1f} sats"
            rows.append((f"{name} wins", f"{int(r.wins):,} (mean price paid {price})"))
    latency = analytics.latency_percentiles(con).set_index("stage")
    for stage in ("post -> assign", "post -> complete"):
        r = latency.loc[stage]
        rows.append((f"{stage} p50 / p90", "-" if not r.tasks else
                     f"{r.p50_ms:,.1f} / {r.p90_ms:,.1f} ms"))
    earnings = analytics.earnings_by_persona(con)
    earnings = earnings[earnings.completed > 0].head(top)
    top_rows = zip(earnings.persona, earnings.sats_earned, earnings.earnings_share, strict=True)
    rows.append((f"top {top} earners", ", ".join(
        f"{p} {int(s):,} sats ({share:.0%})" for p, s, share in top_rows) or "none"))
    return pd.DataFrame(rows, columns=["figure", "value"])
