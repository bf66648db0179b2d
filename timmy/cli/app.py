"""The ``timmy`` command group: the same functions notebooks call, wrapped in click, one
module per group of commands (``timmy --help`` lists them; heavy imports wait for a command,
so it is instant), and `main`, which shows a `TimmyError` as one line plus its hint."""

from __future__ import annotations

from typing import Any

import click

from timmy import __version__
from timmy.cli.common import CONTEXT_SETTINGS
from timmy.errors import TimmyError
from timmy.textsafe import clean

EXIT_TIMMY_ERROR = 2


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

def _register_commands() -> None:
    from timmy.cli.data import export_cmd, personas_cmd, report_cmd
    from timmy.cli.doctor import doctor_cmd
    from timmy.cli.run import demo_cmd, run_cmd
    from timmy.cli.runner import runner_cmd
    from timmy.cli.service import (
        approve_cmd,
        dashboards_cmd,
        post_cmd,
        reject_cmd,
        serve_cmd,
        spawn_cmd,
        status_cmd,
    )
    from timmy.cli.sim import calibrate_cmd, simulate_cmd, sweep_cmd

    for name, command in [("demo", demo_cmd), ("run", run_cmd), ("export", export_cmd),
                          ("personas", personas_cmd), ("report", report_cmd),
                          ("simulate", simulate_cmd), ("sweep", sweep_cmd),
                          ("runner", runner_cmd), ("dashboards", dashboards_cmd),
                          ("serve", serve_cmd), ("status", status_cmd), ("post", post_cmd),
                          ("spawn", spawn_cmd), ("doctor", doctor_cmd),
                          ("approve", approve_cmd), ("reject", reject_cmd),
                          ("calibrate", calibrate_cmd)]:
        cli.add_command(command, name)
    cli.add_command(__import__("timmy.cli.plan", fromlist=["plan_cmd"]).plan_cmd, "plan")


_register_commands()

if __name__ == "__main__":  # pragma: no cover
    main()
