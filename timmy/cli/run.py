"""``timmy demo`` and ``timmy run``: a live swarm in this process, then a table by persona."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import click

from timmy.cli.common import (
    CONTEXT_SETTINGS,
    RUN_DB,
    SEQUENTIAL_HELP,
    check_db_dir,
    create_option,
    make_console,
    model_option,
    plugin_option,
    rule_option,
    say_executor,
    status_line,
    swarm_options,
    task_timeout_option,
)
from timmy.errors import ConfigError, StoreError
from timmy.market.models import TERMINAL_STATES
from timmy.storage.address import db_url, describe_db
from timmy.textsafe import clean, text

DEMO_DB = "data/demo.db"
DEMO_EXPORT = "data/demo-export"


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


def demo_export_dir(db: str | None) -> Path:
    """Where `timmy demo` exports by default: ``X-export`` beside a --db SQLite file ``X.db``
    (so a demo on another database leaves data/demo-export alone), else data/demo-export."""
    from timmy.storage.address import DatabaseAddress

    if db is not None:
        try:
            path = DatabaseAddress.parse(db).file
        except ConfigError:
            path = None
        if path is not None and str(path) not in ("", ":memory:") \
                and not str(path).startswith("file:"):
            return path.expanduser().with_name(f"{path.stem}-export")
    return Path(DEMO_EXPORT)


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


def summary_table(rows: list[dict[str, Any]], catalog: dict, title: str):
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


def run_tasks(swarm, descriptions: Sequence[str], timeout: float, sequential: bool) -> list:
    """Run the tasks with a progress bar, all at once or one after another, within ``timeout``."""
    import time

    from tqdm.auto import tqdm

    from timmy.errors import WaitTimeout

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


def bid_mark(swarm) -> int:
    """The newest bid_id before a run: the run's own bids are the ones after it."""
    newest = swarm.bids(limit=1)
    return newest[-1]["bid_id"] if newest else 0


def report_run(swarm, results: Sequence, catalog: dict, title: str, mark: int = 0) -> None:
    """Print the per-persona table and the swarm's status line.

    Reads only the bids written since ``mark`` (`bid_mark` before the run), a page at a
    time, never the database's whole history.
    """
    ids = {t.task_id for t in results}
    bids = (b for b in swarm.iter_bids(after=mark) if b["task_id"] in ids)
    agent_personas = {a.agent_id: a.persona for a in swarm.agents()}
    rows = persona_summary(results, bids, agent_personas, catalog)
    console = make_console()
    console.print(summary_table(rows, catalog, title))
    console.print(text(status_line(swarm.status())))



@click.command(context_settings=CONTEXT_SETTINGS,
               short_help="Run a seeded workload through the nine personas; show who won.")
@click.option("--db", default=None, metavar="URL",
              help=f"SQLAlchemy URL or SQLite path. Default: {DEMO_DB}, deleted and "
                   "recreated on every run so ids and results start fresh; a --db you "
                   "give is kept and added to.")
@create_option
@click.option("--tasks", "n_tasks", default=200, show_default=True,
              type=click.IntRange(1, 1_000_000), help="How many tasks the workload has.")
@click.option("--seed", default=1, show_default=True, type=int,
              help="Seeds the workload, the bids and the simulated executions.")
@click.option("--out", default=None, metavar="DIR",
              type=click.Path(file_okay=False, path_type=Path),
              help=f"Directory for the Parquet export (tasks, bids, agents, events). Default: "
                   f"{DEMO_EXPORT}; with --db X.db, X-export beside it.")
@rule_option
@plugin_option
@click.option("--task-seconds", default=0.01, show_default=True,
              type=click.FloatRange(0, 3600), help="Mean simulated task duration.")
@click.option("--timeout", default=600.0, show_default=True, type=click.FloatRange(min=0.001),
              help="Seconds to wait for the whole workload.")
@click.option("--sequential/--concurrent", default=True, show_default=True,
              help=SEQUENTIAL_HELP)
@task_timeout_option
def demo_cmd(db: str | None, n_tasks: int, seed: int, out: Path | None, rule: str,
         task_seconds: float, timeout: float, sequential: bool,
         task_timeout: float | None = None, plugins: tuple[str, ...] = (),
         create: bool = False) -> None:
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
        check_db_dir(db, create)
        url = db_url(db)
    if out is None:
        out = demo_export_dir(db)
    descriptions = demo_descriptions(n_tasks, seed)
    click.echo(clean(f"timmy demo: {n_tasks} tasks, seed {seed}, rule {rule}, "
                     f"database {describe_db(url)}"), err=True)
    with Swarm(url, seed=seed, task_seconds=task_seconds, rule=rule,
               task_timeout=task_timeout) as swarm:
        swarm.spawn_all()
        mark = bid_mark(swarm)
        results = run_tasks(swarm, descriptions, timeout, sequential)
        report_run(swarm, results, PERSONAS,
                    f"Winners and prices by persona ({len(results)} tasks, rule {rule}, "
                    f"seed {seed})", mark)
        written = swarm.export(out)
    click.echo(clean(f"database: {describe_db(url)}"))
    click.echo(clean(f"parquet export: {out.resolve()}/ "
                     f"({', '.join(p.name for p in written.values())})"))


@click.command(context_settings=CONTEXT_SETTINGS,
               short_help="Run the tasks of a text file (one per line) through a swarm.")
@click.argument("tasks_file", metavar="TASKS.txt", type=click.Path(path_type=Path))
@click.option("--db", default=RUN_DB, show_default=True, metavar="URL",
              help="SQLAlchemy URL or SQLite path; the tasks are added to what it holds.")
@create_option
@swarm_options
@click.option("--timeout", default=600.0, show_default=True, type=click.FloatRange(min=0.001),
              help="Seconds to wait for all the tasks.")
@click.option("--personas", "personas_file", default=None, metavar="FILE",
              type=click.Path(dir_okay=False, path_type=Path),
              help="Spawn the personas of this TOML/JSON file instead of the built-ins.")
@click.option("--show", default=50, show_default=True, type=click.IntRange(min=0),
              help="Show at most this many tasks in the results table.")
@click.option("--sequential/--concurrent", default=False, show_default=True,
              help=SEQUENTIAL_HELP)
def run_cmd(tasks_file: Path, db: str, seed: int, rule: str, executor: str, task_seconds: float,
        models: tuple[str, ...], timeout: float, personas_file: Path | None, show: int,
        sequential: bool, task_timeout: float | None = None,
        plugins: tuple[str, ...] = (), create: bool = False) -> None:
    """Run the tasks in TASKS.txt through a live swarm, one task per line.

    Empty lines and lines starting with # are skipped. One runner per persona
    is spawned, the tasks run with a progress bar, and a table shows each
    task's outcome, winner and price, then a summary by persona.
    """
    from rich.table import Table

    from timmy.engine.swarm import Swarm
    from timmy.market.personas import PERSONAS
    from timmy.storage.persona_files import load_personas

    descriptions = read_tasks_file(tasks_file)
    catalog = load_personas(personas_file) if personas_file is not None else dict(PERSONAS)
    check_db_dir(db, create)   # after every other check: nothing is made for a refused run
    url = db_url(db)
    with Swarm(url, seed=seed, executor=executor, task_seconds=task_seconds, rule=rule,
               personas=catalog, model=model_option(models, catalog),
               task_timeout=task_timeout) as swarm:
        say_executor(swarm)
        swarm.spawn_all()
        mark = bid_mark(swarm)
        results = run_tasks(swarm, descriptions, timeout, sequential)
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
        console = make_console()
        console.print(table)
        if len(results) > show:
            console.print(f"... and {len(results) - show} more tasks (see the database or "
                          "`timmy export`)")
        report_run(swarm, results, catalog, "By persona", mark)
    click.echo(clean(f"database: {describe_db(url)}"))
