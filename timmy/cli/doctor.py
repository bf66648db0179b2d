"""``timmy doctor``: `timmy.doctor` as a command (registered by `timmy.cli.app`)."""

from __future__ import annotations

import click

from timmy.cli.common import CONTEXT_SETTINGS, RUN_DB, make_console
from timmy.doctor import REQUIRABLE, SERVICE_PORT, VOILA_PORT, doctor
from timmy.textsafe import text

STYLES = {"ok": "bold green", "warn": "bold yellow", "missing": "bold red"}


def _groups(ctx: click.Context, param: click.Parameter, value: str | None) -> list[str]:
    names = [n.strip() for n in (value or "").split(",") if n.strip()]
    unknown = [n for n in names if n not in (*REQUIRABLE, "all")]
    if unknown:
        raise click.BadParameter(f"unknown group {', '.join(unknown)}; "
                                 f"use some of: {', '.join(REQUIRABLE)}, or all")
    return names


@click.command(context_settings=CONTEXT_SETTINGS,
               short_help="Check this machine for timmy; print the fix for what is missing.")
@click.option("--db", default=RUN_DB, show_default=True, metavar="URL",
              help="The database to probe for write access (SQLAlchemy URL or SQLite path).")
@click.option("--require", default=None, metavar="GROUP,...", callback=_groups,
              help=f"Optional groups to treat as required (exit code 1 when they fail): "
                   f"{', '.join(REQUIRABLE)}, or all.")
@click.option("--ollama-host", default=None, metavar="URL",
              help="The Ollama server. Default: OLLAMA_HOST, else http://127.0.0.1:11434.")
@click.option("--service-port", default=SERVICE_PORT, show_default=True,
              type=click.IntRange(1, 65535), help="The port `timmy serve` will listen on.")
@click.option("--voila-port", default=VOILA_PORT, show_default=True,
              type=click.IntRange(1, 65535), help="The port Voilà will listen on.")
@click.option("--imports", is_flag=True,
              help="Import every module of every extra (in a child process; a few seconds) "
                   "instead of only finding them: catches broken installs.")
@click.option("--json", "as_json", is_flag=True, help="Print the checks as JSON.")
def doctor_cmd(db: str, require: list[str], ollama_host: str | None, service_port: int,
               voila_port: int, imports: bool, as_json: bool) -> None:
    """Check Python, the extras, the database, speech, Ollama, Chromium, Voilà and ports.

    Each line is OK, WARN (an optional feature will not work) or MISSING (a
    required one), with the exact fix. Required: Python >= 3.11, the core
    dependencies and a writable database, plus the groups given to --require.
    Exits with 1 when something required is missing, else 0.
    """
    from rich.table import Table
    from rich.text import Text

    report = doctor(db, require=require, ollama_host=ollama_host, service_port=service_port,
                    voila_port=voila_port, imports=imports)
    if as_json:
        click.echo(report.to_json())
    else:
        table = Table(title="timmy doctor", title_justify="left")
        for column in report.COLUMNS:
            table.add_column(column, overflow="fold")
        for check in report:
            # Text, not markup: a fix such as pip install "timmy[voice]" has brackets.
            table.add_row(text(check.name), text(check.status.upper(), STYLES[check.status]),
                          text(check.detail), text(check.fix))
        console = make_console()
        console.print(table)
        console.print(Text(report.summary(), STYLES["missing" if report.missing else "ok"]))
    click.get_current_context().exit(report.exit_code)
