"""The ``timmy`` command: the same functions notebooks call, wrapped in click.

    timmy demo                  a seeded 200-task swarm run, then a table by persona
    timmy run TASKS.txt         one task per line through a live swarm
    timmy export DB DIR         a database's tables as Parquet (or CSV) files
    timmy personas              the persona catalog (built-in or from a file)
    timmy report DIR            the canned analytics tables of an export or a database
    timmy simulate              N seeded tasks through the simulator (the live rules)
    timmy sweep GRID.toml       a grid of simulations in parallel on Dask
    timmy doctor                what works on this machine, and the fix for what does not

Every `TimmyError` a command raises is shown as one line plus ``hint: ...`` on
stderr, with exit code 2 (the code click uses for bad usage), never a traceback.
Heavy imports (the engine, SQLAlchemy, pyarrow, rich, tqdm) happen inside the
commands, so ``timmy --help`` is instant.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import click

from timmy import __version__
from timmy.engine.executors import EXECUTORS
from timmy.errors import ConfigError, StoreError, TimmyError
from timmy.market.auction import RULES
from timmy.market.models import TERMINAL_STATES
from timmy.storage.address import DatabaseAddress, db_url, describe_db
from timmy.textsafe import clean, text

DEMO_DB = "data/demo.db"
DEMO_EXPORT = "data/demo-export"
RUN_DB = "sqlite:///data/timmy.db"
EXIT_TIMMY_ERROR = 2

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class _TimmyGroup(click.Group):
    """A click group that turns every `TimmyError` into a message, a hint and exit code 2."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except TimmyError as exc:
            report_error(exc)
            ctx.exit(EXIT_TIMMY_ERROR)
        except BaseExceptionGroup as group:
            # Concurrent work (spawn_all starts runners together) fails as a group.
            timmy_errors, others = group.split(TimmyError)
            if timmy_errors is None or others is not None:
                raise
            report_error(_first_leaf(timmy_errors))
            ctx.exit(EXIT_TIMMY_ERROR)


def _first_leaf(group: BaseExceptionGroup) -> BaseException:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


def report_error(exc: TimmyError) -> None:
    """Write ``Kind: message`` and ``hint: ...`` to stderr (one line each)."""
    message = " ".join(str(exc.message).split())
    click.echo(clean(f"{type(exc).__name__}: {message}", newlines=False), err=True)
    if exc.hint:
        click.echo(clean(f"hint: {' '.join(exc.hint.split())}", newlines=False), err=True)


@click.group(cls=_TimmyGroup, context_settings=CONTEXT_SETTINGS)
@click.version_option(__version__, "-V", "--version", prog_name="timmy")
def cli() -> None:
    """timmy: a swarm of persona agents that win work in sealed-bid auctions.

    Start with `timmy demo`; `timmy COMMAND --help` explains each command.
    """


def main() -> None:
    """Entry point of the ``timmy`` console script and of ``python -m timmy``."""
    from timmy.textsafe import install_log_handler

    install_log_handler()    # log lines through `clean`, like everything else printed
    cli(prog_name="timmy")


# -- helpers ------------------------------------------------------------------


def remove_sqlite(path: Path) -> bool:
    """Delete an SQLite file and its WAL/SHM companions; True when something was removed."""
    removed = False
    for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        try:
            p.unlink()
            removed = True
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise StoreError(f"cannot remove the old demo database {p}: {exc.strerror}",
                             hint="stop whatever holds it, or pass --db with another file") \
                from exc
    return removed


def read_tasks_file(path: Path) -> list[str]:
    """Task descriptions from a text file: one per non-empty line, ``#`` lines skipped."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"no tasks file at {path}",
                          hint="check the path; the file holds one task per line") from None
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise ConfigError(f"cannot read tasks file {path}: {why}",
                          hint="pass a readable UTF-8 text file, one task per line") from exc
    # read_text turned \r\n and \r into \n; str.splitlines would also break a line at
    # U+2028, U+0085, VT, FF..., which a text file's reader does not see as line ends
    tasks = [line.strip() for line in text.split("\n")]
    tasks = [t for t in tasks if t and not t.startswith("#")]
    if not tasks:
        raise ConfigError(f"{path} holds no tasks",
                          hint="write one task per line; lines starting with # are skipped")
    return tasks


def persona_summary(tasks: Sequence, bids: Iterable[dict], agent_personas: dict[str, str],
                    catalog: Iterable[str]) -> list[dict[str, Any]]:
    """One row per persona over the given tasks: auctions won, completed, failed, prices.

    ``won`` counts auctions (a re-auctioned task counts once per attempt won);
    ``failed`` counts won attempts that did not complete; ``avg_price`` and
    ``earned`` are over completed tasks (what was paid); ``on_spec`` is the
    share of wins on the persona's speciality.
    """
    by_id = {t.task_id: t for t in tasks}
    rows = {pid: {"persona": pid, "won": 0, "completed": 0, "failed": 0, "earned": 0,
                  "on_spec_wins": 0} for pid in catalog}
    for bid in bids:
        task = by_id.get(bid["task_id"])
        if task is None or not bid["won"]:
            continue
        persona = agent_personas.get(bid["agent_id"], bid["agent_id"].rsplit("-", 1)[0])
        row = rows.setdefault(persona, {"persona": persona, "won": 0, "completed": 0,
                                        "failed": 0, "earned": 0, "on_spec_wins": 0})
        row["won"] += 1
        row["on_spec_wins"] += bool(bid["on_spec"])
        if (task.status == "completed" and task.attempts == bid["attempt"]
                and task.assigned_agent == bid["agent_id"]):
            row["completed"] += 1
            row["earned"] += task.price_sats or 0
        elif task.status in TERMINAL_STATES or task.attempts > bid["attempt"]:
            row["failed"] += 1  # this attempt is over and did not complete the task
    out = []
    for row in rows.values():
        row["avg_price"] = row["earned"] / row["completed"] if row["completed"] else None
        row["on_spec"] = row.pop("on_spec_wins") / row["won"] if row["won"] else None
        out.append(row)
    return out


def _console():
    from rich.console import Console

    console = Console(highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = 120  # piped or captured: rich's 80 columns would wrap every table
    return console


def _summary_table(rows: list[dict[str, Any]], catalog: dict, title: str):
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    table.add_column("persona")
    table.add_column("role")
    for name in ("won", "completed", "failed", "avg price", "earned", "on-spec"):
        table.add_column(name, justify="right")
    total = {"won": 0, "completed": 0, "failed": 0, "earned": 0}
    for row in rows:
        persona = catalog.get(row["persona"])
        table.add_row(
            text(row["persona"]), text(persona.role if persona else ""),
            str(row["won"]), str(row["completed"]), str(row["failed"]),
            "-" if row["avg_price"] is None else f"{row['avg_price']:.1f}",
            str(row["earned"]),
            "-" if row["on_spec"] is None else f"{row['on_spec']:.0%}",
        )
        for k in total:
            total[k] += row[k]
    avg = f"{total['earned'] / total['completed']:.1f}" if total["completed"] else "-"
    table.add_section()
    table.add_row("all", "", str(total["won"]), str(total["completed"]), str(total["failed"]),
                  avg, str(total["earned"]), "", style="bold")
    table.caption = ("won: auctions won (a re-auctioned task counts again) · failed: won "
                     "attempts that did not complete · avg price, earned: sats paid for "
                     "completed tasks · on-spec: share of wins on the persona's speciality")
    table.caption_justify = "left"
    return table


def _status_line(status: dict) -> str:
    counts = status.get("tasks", {})
    tasks = ", ".join(f"{n} {state}" for state, n in sorted(counts.items())) or "no tasks"
    return (f"status: tasks {tasks} · runners live {status.get('runners_live', 0)} · "
            f"protocol errors {status.get('protocol_errors', 0)} · rule {status.get('rule')} · "
            f"executor {status.get('executor')} · seed {status.get('seed')}"
            + (f"\nstalled: {status['stalled']}; spawn runners (`timmy spawn`, a dashboard's "
               "Spawn) and the waiting tasks run" if status.get("stalled") else ""))


def _run_tasks(swarm, descriptions: Sequence[str], timeout: float, sequential: bool) -> list:
    """Run the tasks with a progress bar, all at once or one after another, within ``timeout``."""
    import time

    from tqdm.auto import tqdm

    from timmy.engine.swarm import WaitTimeout

    results: list = []
    deadline = time.monotonic() + timeout
    try:
        if not sequential:
            return swarm.run(descriptions, timeout=timeout, progress=True)
        with tqdm(total=len(descriptions), desc="tasks", unit="task") as bar:
            for description in descriptions:
                left = max(deadline - time.monotonic(), 0.001)
                results.extend(swarm.run([description], timeout=left))
                bar.update(1)
        return results
    except WaitTimeout as exc:
        message = exc.message if not sequential else (
            f"{len(descriptions) - len(results)} of {len(descriptions)} tasks unfinished "
            f"after the {timeout:g}s timeout")
        raise WaitTimeout(message, hint="pass a longer --timeout (what was done is kept in "
                                        "the database)") from exc


def _bid_mark(swarm) -> int:
    """The newest bid_id before a run: the run's own bids are the ones after it."""
    newest = swarm.bids(limit=1)
    return newest[-1]["bid_id"] if newest else 0


def _report_run(swarm, results: Sequence, catalog: dict, title: str, mark: int = 0) -> None:
    """Print the per-persona table and the swarm's status line.

    Reads only the bids written since ``mark`` (`_bid_mark` before the run), a page at a
    time, never the database's whole history.
    """
    ids = {t.task_id for t in results}
    bids = (b for b in swarm.iter_bids(after=mark) if b["task_id"] in ids)
    agent_personas = {a.agent_id: a.persona for a in swarm.agents()}
    rows = persona_summary(results, bids, agent_personas, catalog)
    console = _console()
    console.print(_summary_table(rows, catalog, title))
    console.print(text(_status_line(swarm.status())))


_SEQUENTIAL_HELP = (
    "--sequential posts one task at a time and waits for it: every auction hears every "
    "runner with the same history, so the same seed gives exactly the same table. "
    "--concurrent posts all tasks at once (fastest): every runner still bids and holds a "
    "queue of won tasks, so specialists keep their work until their queues fill, but the "
    "order in which outcomes reach the runners (and so what they learn) varies from run to run."
)


def model_option(values: Sequence[str], catalog: Iterable[str]) -> str | dict[str, str] | None:
    """``--model`` values as `timmy.Swarm`'s ``model=``: NAME for all, PERSONA=NAME for one.

    ``--model llama3.2 --model forge=qwen2.5-coder``: forge asks qwen2.5-coder, every other
    persona llama3.2. Personas left without one use TIMMY_OLLAMA_MODEL, else llama3.2.
    """
    catalog = list(catalog)
    default: str | None = None
    per_persona: dict[str, str] = {}
    for value in values:
        persona, sep, name = value.partition("=")
        if not sep:
            default = value
        elif persona not in catalog:
            raise ConfigError(f"--model {value}: no persona {persona!r} in this swarm",
                              hint=f"personas: {', '.join(catalog)}")
        else:
            per_persona[persona] = name
    if not per_persona:
        return default
    return {pid: per_persona.get(pid) or default for pid in catalog
            if per_persona.get(pid) or default}


def say_executor(swarm) -> None:
    """On stderr: what "auto" chose, and why (nothing for an executor given by name)."""
    if swarm.executor_reason:
        click.echo(clean(f"executor auto: {swarm.executor} ({swarm.executor_reason})"),
                   err=True)


task_timeout_option = click.option(
    "--task-timeout", default=None, type=click.FloatRange(0.01, 30 * 86400), metavar="SECONDS",
    help="Restart a runner that holds one task longer than this and auction the task again "
         "(an attempt spent; the tasks queued behind it keep theirs). Default: no limit.")


def swarm_options(command):
    """--seed, --rule, --executor, --task-seconds, --model: how a live swarm behaves (run,
    serve)."""
    options = [
        click.option("--seed", default=1, show_default=True, type=int,
                     help="Seeds the bids and the simulated executions."),
        click.option("--rule", type=click.Choice(RULES), default="specialist_first",
                     show_default=True, help="Clearing rule of every auction."),
        click.option("--executor", type=click.Choice(EXECUTORS), default="simulated",
                     show_default=True, help="What a runner does with a task it won."),
        click.option("--task-seconds", default=0.05, show_default=True,
                     type=click.FloatRange(0, 3600), help="Mean simulated task duration."),
        click.option("--model", "models", multiple=True, metavar="[PERSONA=]NAME",
                     help="Ollama model (executor ollama or auto): NAME for every persona, "
                          "PERSONA=NAME for one; repeatable. Default: TIMMY_OLLAMA_MODEL, "
                          "else llama3.2. The server is OLLAMA_HOST (default "
                          "http://127.0.0.1:11434)."),
        task_timeout_option,
    ]
    for option in reversed(options):
        command = option(command)
    return command


# -- commands -------------------------------------------------------------------


@cli.command(context_settings=CONTEXT_SETTINGS,
             short_help="Run a seeded workload through the nine personas; show who won.")
@click.option("--db", default=None, metavar="URL",
              help=f"SQLAlchemy URL or SQLite path. Default: {DEMO_DB}, deleted and "
                   "recreated on every run so ids and results start fresh; a --db you "
                   "give is kept and added to.")
@click.option("--tasks", "n_tasks", default=200, show_default=True,
              type=click.IntRange(1, 1_000_000), help="How many tasks the workload has.")
@click.option("--seed", default=1, show_default=True, type=int,
              help="Seeds the workload, the bids and the simulated executions.")
@click.option("--out", default=DEMO_EXPORT, show_default=True, metavar="DIR",
              type=click.Path(file_okay=False, path_type=Path),
              help="Directory for the Parquet export (tasks, bids, agents, events).")
@click.option("--rule", type=click.Choice(RULES), default="specialist_first",
              show_default=True, help="Clearing rule of every auction.")
@click.option("--task-seconds", default=0.01, show_default=True,
              type=click.FloatRange(0, 3600), help="Mean simulated task duration.")
@click.option("--timeout", default=600.0, show_default=True, type=click.FloatRange(min=0.001),
              help="Seconds to wait for the whole workload.")
@click.option("--sequential/--concurrent", default=True, show_default=True,
              help=_SEQUENTIAL_HELP)
@task_timeout_option
def demo(db: str | None, n_tasks: int, seed: int, out: Path, rule: str, task_seconds: float,
         timeout: float, sequential: bool, task_timeout: float | None = None) -> None:
    """Run a seeded workload through a live nine-persona swarm and show who won what.

    Starts one runner process per built-in persona on an embedded SQLite
    database, runs N seeded tasks (each persona's speciality, plus a few
    generic tasks nobody specialises in) with a progress bar, then prints
    winners and prices by persona, the swarm's status, and where the database
    and its Parquet export were written.
    """
    from timmy.engine.swarm import Swarm
    from timmy.market.personas import PERSONAS
    from timmy.sim.workloads import demo_descriptions

    if db is None:
        url = f"sqlite:///{DEMO_DB}"
        remove_sqlite(Path(DEMO_DB))
    else:
        url = db_url(db)
    descriptions = demo_descriptions(n_tasks, seed)
    click.echo(clean(f"timmy demo: {n_tasks} tasks, seed {seed}, rule {rule}, "
                     f"database {describe_db(url)}"), err=True)
    with Swarm(url, seed=seed, task_seconds=task_seconds, rule=rule,
               task_timeout=task_timeout) as swarm:
        swarm.spawn_all()
        mark = _bid_mark(swarm)
        results = _run_tasks(swarm, descriptions, timeout, sequential)
        _report_run(swarm, results, PERSONAS,
                    f"Winners and prices by persona ({len(results)} tasks, rule {rule}, "
                    f"seed {seed})", mark)
        written = swarm.export(out)
    click.echo(clean(f"database: {describe_db(url)}"))
    click.echo(clean(f"parquet export: {out.resolve()}/ "
                     f"({', '.join(p.name for p in written.values())})"))


@cli.command(context_settings=CONTEXT_SETTINGS,
             short_help="Run the tasks of a text file (one per line) through a swarm.")
@click.argument("tasks_file", metavar="TASKS.txt", type=click.Path(path_type=Path))
@click.option("--db", default=RUN_DB, show_default=True, metavar="URL",
              help="SQLAlchemy URL or SQLite path; the tasks are added to what it holds.")
@swarm_options
@click.option("--timeout", default=600.0, show_default=True, type=click.FloatRange(min=0.001),
              help="Seconds to wait for all the tasks.")
@click.option("--personas", "personas_file", default=None, metavar="FILE",
              type=click.Path(dir_okay=False, path_type=Path),
              help="Spawn the personas of this TOML/JSON file instead of the built-ins.")
@click.option("--show", default=50, show_default=True, type=click.IntRange(min=0),
              help="Show at most this many tasks in the results table.")
@click.option("--sequential/--concurrent", default=False, show_default=True,
              help=_SEQUENTIAL_HELP)
def run(tasks_file: Path, db: str, seed: int, rule: str, executor: str, task_seconds: float,
        models: tuple[str, ...], timeout: float, personas_file: Path | None, show: int,
        sequential: bool, task_timeout: float | None = None) -> None:
    """Run the tasks in TASKS.txt through a live swarm, one task per line.

    Empty lines and lines starting with # are skipped. One runner per persona
    is spawned, the tasks run with a progress bar, and a table shows each
    task's outcome, winner and price, then a summary by persona.
    """
    from rich.table import Table

    from timmy.engine.swarm import Swarm
    from timmy.market.personas import PERSONAS, load_personas

    descriptions = read_tasks_file(tasks_file)
    catalog = load_personas(personas_file) if personas_file is not None else dict(PERSONAS)
    url = db_url(db)
    with Swarm(url, seed=seed, executor=executor, task_seconds=task_seconds, rule=rule,
               personas=catalog, model=model_option(models, catalog),
               task_timeout=task_timeout) as swarm:
        say_executor(swarm)
        swarm.spawn_all()
        mark = _bid_mark(swarm)
        results = _run_tasks(swarm, descriptions, timeout, sequential)
        table = Table(title=f"Results ({len(results)} tasks)", title_justify="left")
        for name, justify in (("task", "right"), ("status", "left"), ("winner", "left"),
                              ("price", "right"), ("attempts", "right"),
                              ("description", "left"), ("result / reason", "left")):
            table.add_column(name, justify=justify)
        for task in results[:show]:
            note = task.reason if task.status != "completed" else task.result
            table.add_row(str(task.task_id), text(task.status), text(task.assigned_agent or "-"),
                          "-" if task.price_sats is None else str(task.price_sats),
                          str(task.attempts), text(task.description),
                          text((note or "")[:120]))
        console = _console()
        console.print(table)
        if len(results) > show:
            console.print(f"... and {len(results) - show} more tasks (see the database or "
                          "`timmy export`)")
        _report_run(swarm, results, catalog, "By persona", mark)
    click.echo(clean(f"database: {describe_db(url)}"))


@cli.command(context_settings=CONTEXT_SETTINGS,
             short_help="Export a database's tables to Parquet or CSV files.")
@click.argument("db", metavar="DB")
@click.argument("out_dir", metavar="DIR", type=click.Path(file_okay=False, path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["parquet", "csv"]), default="parquet",
              show_default=True, help="File format of the export.")
def export(db: str, out_dir: Path, fmt: str) -> None:
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


@cli.command(context_settings=CONTEXT_SETTINGS,
             short_help="Show the persona catalog (built-in or from a file).")
@click.option("--file", "file", default=None, metavar="PATH",
              type=click.Path(dir_okay=False, path_type=Path),
              help="A TOML ([[persona]] tables) or JSON (a list) persona file to show "
                   "instead of the built-ins; it is validated first.")
def personas(file: Path | None) -> None:
    """Show the persona catalog: id, role, rate, bid base, jitter and keywords."""
    from rich.table import Table

    from timmy.market.personas import PERSONAS, load_personas

    catalog = load_personas(file) if file is not None else PERSONAS
    where = f"from {file}" if file is not None else "built in"
    table = Table(title=text(f"{len(catalog)} personas {where}"), title_justify="left")
    table.add_column("id")
    table.add_column("role")
    for name in ("rate", "bid_base", "jitter"):
        table.add_column(name, justify="right")
    table.add_column("keywords")
    for p in catalog.values():
        keywords = " ".join(f'"{k}"' if " " in k else k for k in p.preferred_keywords)
        table.add_row(text(p.id), text(p.role), str(p.rate_sats), str(p.bid_base),
                      str(p.bid_jitter), text(keywords))
    _console().print(table)


@cli.command(context_settings=CONTEXT_SETTINGS,
             short_help="Print the canned analytics tables of an export or a database.")
@click.argument("source", metavar="DIR", required=False)
@click.option("--db", default=None, metavar="URL",
              help="Read this database (SQLAlchemy URL or SQLite path) on the fly instead "
                   "of DIR.")
def report(source: str | None, db: str | None) -> None:
    """Print the canned analytics tables of an export directory or a database.

    DIR is an export directory (written by `timmy export`, swarm.export or
    SimRun.export) or a timmy SQLite file, which is read on the fly. The
    tables are those of timmy.analysis.queries: win rate and earnings by persona,
    price by keyword and on/off-spec, latency percentiles, re-auctions and
    failures, bids per auction, price over time.
    """
    from rich.text import Text

    from timmy.analysis import queries as analytics

    if (source is None) == (db is None):
        raise ConfigError("pass an export directory or SQLite file as DIR, or --db URL "
                          "(not both)" if source else "nothing to report on",
                          hint="e.g. `timmy report data/demo-export` or "
                               "`timmy report --db sqlite:///data/timmy.db`")
    con = analytics.connect(db_url(db) if db is not None else source)
    try:
        tasks, bids, auctions, agents = con.execute(
            "SELECT (SELECT count(*) FROM tasks), (SELECT count(*) FROM bids), "
            "(SELECT count(DISTINCT auction_id) FROM bids), (SELECT count(*) FROM agents)"
        ).fetchone()
        console = _console()
        where = describe_db(db_url(db)) if db is not None else str(Path(source).resolve())
        console.print(text(f"report on {where}: {tasks:,} tasks, {auctions:,} auctions, "
                           f"{bids:,} bids, {agents:,} agents"))
        for name, query in analytics.REPORTS.items():
            # The title above the table, not in it: rich would wrap it to the table's width.
            console.print()
            console.print(Text(analytics.title(name), style="bold"))
            console.print(_frame_table(query(con)))
    finally:
        con.close()


def _frame_table(frame):
    """A DataFrame as a rich table: numbers right-aligned, rates as percentages."""
    import pandas as pd
    from rich.table import Table

    table = Table()
    numeric = {c: pd.api.types.is_numeric_dtype(frame[c]) and not
               pd.api.types.is_bool_dtype(frame[c]) for c in frame.columns}
    for column in frame.columns:
        table.add_column(text(column.replace("_", " ")),
                         justify="right" if numeric[column] else "left")
    for row in frame.itertuples(index=False):
        table.add_row(*(_cell(column, value) for column, value in zip(frame.columns, row,
                                                                      strict=True)))
    if frame.empty:
        table.caption, table.caption_justify = "no rows", "left"
    return table


def _cell(column: str, value: Any):
    import numbers

    import pandas as pd

    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return "-"
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return f"{value:,}"
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        if column.endswith(("rate", "share")):
            return f"{value:.1%}"
        if column.endswith("_s"):
            return f"{value:,.3f}"
        return f"{value:,.2f}" if column.endswith("_ms") else f"{value:,.1f}"
    return text(value)


def _register_simulator_commands() -> None:
    from timmy.cli.sim import simulate_cmd, sweep_cmd

    cli.add_command(simulate_cmd, "simulate")
    cli.add_command(sweep_cmd, "sweep")


def _register_service_commands() -> None:
    from timmy.cli.runner import runner_cmd
    from timmy.cli.service import dashboards_cmd, post_cmd, serve_cmd, spawn_cmd, status_cmd

    cli.add_command(runner_cmd, "runner")
    cli.add_command(dashboards_cmd, "dashboards")
    cli.add_command(serve_cmd, "serve")
    cli.add_command(status_cmd, "status")
    cli.add_command(post_cmd, "post")
    cli.add_command(spawn_cmd, "spawn")


def _register_doctor_command() -> None:
    from timmy.cli.doctor import doctor_cmd

    cli.add_command(doctor_cmd, "doctor")


_register_simulator_commands()
_register_service_commands()
_register_doctor_command()

if __name__ == "__main__":  # pragma: no cover
    main()

