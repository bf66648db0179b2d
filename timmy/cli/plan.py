"""``timmy plan``: the cheapest runners per persona that keep p95 under a target at a rate, a
thin wrapper over `timmy.sim.plan.plan`; registered by `timmy.cli.app`."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from timmy.cli.common import CONTEXT_SETTINGS, frame_table, make_console, plugin_option, rule_option
from timmy.textsafe import text


@click.command(context_settings=CONTEXT_SETTINGS,
               short_help="Find the cheapest runner mix that keeps p95 under a target.")
@click.option("--model", "model_file", required=True, metavar="FILE",
              type=click.Path(path_type=Path, dir_okay=False),
              help="A model saved by `timmy calibrate` (.toml or .json).")
@click.option("--rate", required=True, type=click.FloatRange(min=0, min_open=True),
              metavar="TASKS/S", help="Arrival rate to plan for (Poisson), tasks per second.")
@click.option("--target-p95", required=True, type=click.FloatRange(min=0, min_open=True),
              metavar="SECONDS", help="Post-to-done p95 to stay at or under.")
@click.option("--persona", "personas", multiple=True, metavar="ID",
              help="A persona to give runners (repeatable); default every one the model knows.")
@click.option("--max-runners", default=8, show_default=True, type=click.IntRange(min=1),
              help="The most runners per persona.")
@click.option("--replications", default=5, show_default=True, type=click.IntRange(min=2),
              help="Simulations per candidate mix (for the confidence intervals).")
@click.option("--tasks", default=500, show_default=True, type=click.IntRange(min=20),
              help="Arrivals per simulation.")
@click.option("--search", type=click.Choice(["greedy", "grid"]), default="greedy",
              show_default=True, help="greedy: add runners where they cut p95 most; grid: "
                                      "every mix up to --max-runners.")
@rule_option
@plugin_option
@click.option("--confident", is_flag=True,
              help="Hold the upper end of p95's 95 % confidence interval to the target, not "
                   "its mean.")
@click.option("--seed", default=0, show_default=True, type=int,
              help="Seeds the arrivals and the simulations.")
@click.option("--scheduler", default=None, metavar="ADDR",
              help="Simulate on Dask: a scheduler (tcp://host:8786) or 'local'.")
def plan_cmd(model_file: Path, rate: float, target_p95: float, personas: tuple[str, ...],
             max_runners: int, replications: int, tasks: int, search: str, rule: str,
             seed: int, scheduler: str | None, confident: bool = False,
             plugins: tuple[str, ...] = ()) -> None:
    """Simulate runner mixes with a calibrated model and print the cheapest (fewest runners)
    whose mean p95 over the replications meets --target-p95 at --rate, with its predicted
    throughput, p50, p95 and cost per task (95 % confidence intervals) and every mix tried.

    Exits 1 when no mix within --max-runners meets the target; a rate no such mix keeps up
    with is an error that says by how much.
    """
    from timmy.sim.plan import plan

    result = plan(model_file, rate=rate, target_p95=target_p95,
                  personas=list(personas) or None, max_runners=max_runners,
                  replications=replications, tasks=tasks, rule=rule, search=search,
                  seed=seed, scheduler=scheduler, confident=confident,
                  progress=scheduler is not None)
    console = make_console()
    table = result.table()
    shown = [c for c in table.columns if not c.endswith(("_low", "_high"))]
    console.print(frame_table(table[shown].round(4)))
    console.print(text(result.summary()))
    if not result.met:
        sys.exit(1)
