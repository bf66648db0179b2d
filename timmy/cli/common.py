"""What the ``timmy`` commands share: click settings and options, the console, tables."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any

import click

from timmy.engine.executors import EXECUTORS
from timmy.errors import ConfigError
from timmy.market.auction import check_rule
from timmy.storage.address import DEFAULT_DB
from timmy.textsafe import clean, text

RUN_DB = DEFAULT_DB
CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def make_console():
    from rich.console import Console

    console = Console(highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = 120  # piped or captured: rich's 80 columns would wrap every table
    return console


def status_line(status: dict) -> str:
    counts = status.get("tasks", {})
    tasks = ", ".join(f"{n} {state}" for state, n in sorted(counts.items())) or "no tasks"
    return (f"status: tasks {tasks} · runners live {status.get('runners_live', 0)} · "
            f"protocol errors {status.get('protocol_errors', 0)} · rule {status.get('rule')} · "
            f"executor {status.get('executor')} · seed {status.get('seed')}"
            + (f"\nspent {status['spent_sats']} sats (paid {status.get('paid_sats', 0)}, held "
               f"{status.get('held_sats', 0)})" + ("" if status.get("budget") is None else
                                                  f" · budget {status['budget']} sats · left "
                                                  f"{status.get('budget_left')} sats")
               if status.get("spent_sats") is not None else "")
            + (f"\nstalled: {status['stalled']}; spawn runners (`timmy spawn`, a dashboard's "
               "Spawn) and the waiting tasks run" if status.get("stalled") else ""))


SEQUENTIAL_HELP = (
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


def _load_plugins(_ctx, _param, modules: tuple[str, ...]) -> tuple[str, ...]:
    from timmy.service.host import load_plugins

    try:
        load_plugins(modules)
    except ConfigError as exc:
        raise click.BadParameter(f"{exc.message} (hint: {exc.hint})") from None
    return modules


def _check_rule(_ctx, _param, rule: str) -> str:
    try:
        return check_rule(rule)
    except ConfigError as exc:
        raise click.BadParameter(f"{exc.message} (hint: {exc.hint})") from None


#: ``--plugin MODULE`` (repeatable): imported before anything else (it may register the
#: mechanism ``--rule`` names).
plugin_option = click.option(
    "--plugin", "plugins", multiple=True, metavar="MODULE", is_eager=True,
    callback=_load_plugins,
    help="Import this module first (repeatable): one that registers clearing mechanisms "
         "with timmy.register_mechanism, for --rule.")
#: ``--rule NAME``: any registered clearing mechanism, with parameters ("score:w_price=0.7").
rule_option = click.option(
    "--rule", default="specialist_first", show_default=True, metavar="NAME[:K=V,...]",
    callback=_check_rule,
    help="Clearing rule of every auction: specialist_first, lowest, second_price, "
         "first_price, reputation, score (e.g. score:w_price=0.7), or one registered by a "
         "--plugin.")


def swarm_options(command):
    """--seed, --rule, --executor, --task-seconds, --model: how a live swarm behaves (run,
    serve)."""
    options = [
        click.option("--seed", default=1, show_default=True, type=int,
                     help="Seeds the bids and the simulated executions."),
        rule_option,
        plugin_option,
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



def frame_table(frame):
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
        table.add_row(*(cell(column, value) for column, value in zip(frame.columns, row,
                                                                      strict=True)))
    if frame.empty:
        table.caption, table.caption_justify = "no rows", "left"
    return table


def cell(column: str, value: Any):
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


def create_option(command):
    """``--create``: make the missing directories of a ``--db`` SQLite file (`check_db_dir`)."""
    return click.option("--create", is_flag=True,
                        help="Create the missing directories of the --db SQLite file (without "
                             "it, a --db in a directory that does not exist is refused).")(command)


def check_db_dir(db: str, create: bool = False) -> None:
    """Refuse a ``--db`` SQLite file whose directory does not exist, unless ``create``.

    A --db given on the command line never has directories made for it silently: without
    --create it is a `ConfigError` that says which directory is missing. The command's own
    default database (data/timmy.db) gets its directory made, and this says so on stderr.
    A server URL, an in-memory database or a URL timmy cannot read is left to the store.
    """
    from click.core import ParameterSource

    from timmy.storage.address import DatabaseAddress

    try:
        path = DatabaseAddress.parse(db).file
    except ConfigError:
        return                                   # the store says what is wrong with it
    if path is None or str(path) in ("", ":memory:") or str(path).startswith("file:"):
        return
    parent = path.expanduser().absolute().parent
    if parent.exists():
        return                                   # a directory, or something the store refuses
    ctx = click.get_current_context(silent=True)
    given = ctx is not None and ctx.get_parameter_source("db") not in (
        None, ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP)
    if given and not create:
        raise ConfigError(f"--db {db}: the directory {parent} does not exist",
                          hint=f"create it (mkdir -p {parent}) or pass --create to have timmy "
                               "make it")
    from timmy.storage.private import private_dirs

    try:
        private_dirs(parent)
    except OSError as exc:
        raise ConfigError(f"cannot create the directory {parent} for --db {db}: "
                          f"{exc.strerror or exc}",
                          hint="pass --db with a path you can write to") from exc
    click.echo(clean(f"created the directory {parent} for the database"), err=True)
