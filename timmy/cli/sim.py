"""``timmy simulate`` and ``timmy sweep``: thin wrappers over `timmy.sim.simulator.simulate`,
`timmy.sim.sweeps.sweep` and the analytics queries, printed like ``timmy report``; registered
by `timmy.cli.app`.
"""

from __future__ import annotations

import time
from pathlib import Path

import click

from timmy.cli.common import (
    CONTEXT_SETTINGS,
    frame_table,
    make_console,
    plugin_option,
    rule_option,
)
from timmy.textsafe import text


@click.command(context_settings=CONTEXT_SETTINGS,
               short_help="Simulate N seeded tasks with the live rules; show who won.")
@click.option("--tasks", "n_tasks", default=100_000, show_default=True,
              type=click.IntRange(min=1), help="How many demo tasks to simulate.")
@rule_option
@plugin_option
@click.option("--seed", default=1, show_default=True, type=int,
              help="Seeds the workload, the bids and the simulated executions.")
@click.option("--runners", default=1, show_default=True, type=click.IntRange(min=1),
              help="Runners per persona.")
@click.option("--task-seconds", default=0.05, show_default=True, type=click.FloatRange(min=0),
              help="Mean simulated task duration (virtual seconds).")
@click.option("--out", default=None, metavar="DIR", type=click.Path(path_type=Path),
              help="Stream the tables to Parquet files in DIR (read them with `timmy report`).")
@click.option("--engine", type=click.Choice(["auto", "python", "compiled"]), default="auto",
              show_default=True, help="compiled (numba) or the python reference.")
def simulate_cmd(n_tasks: int, rule: str, seed: int, runners: int, task_seconds: float,
                 out: Path | None, engine: str, plugins: tuple[str, ...] = ()) -> None:
    """Simulate the demo workload, one task at a time, with the live engine's rules.

    The same seed gives the same winners and prices as `timmy demo --sequential`
    with that many tasks. Prints earnings by persona and the price by on/off-spec.
    """
    from timmy.analysis import queries as analytics
    from timmy.sim.simulator import simulate
    from timmy.sim.workloads import demo_descriptions

    work = demo_descriptions(n_tasks, seed)
    t0 = time.perf_counter()
    run = simulate(work, seed=seed, rule=rule, runners=runners, task_seconds=task_seconds,
                   out=out, engine=engine, progress=True)
    elapsed = time.perf_counter() - t0
    con = analytics.connect(run)
    console = make_console()
    for name in ("earnings_by_persona", "price_by_spec"):
        console.print(f"[bold]{analytics.title(name)}[/bold]")
        console.print(frame_table(analytics.REPORTS[name](con)))
    auctions = con.execute("select count(distinct auction_id) from bids").fetchone()[0]
    console.print(f"{n_tasks:,} tasks, {auctions:,} auctions in {elapsed:.2f}s "
                  f"({auctions / elapsed:,.0f} auctions/s), rule {rule}, seed {seed}")
    if out is not None:
        console.print(text(f"tables: {out}/ (tasks, bids, agents, events .parquet)"))


@click.command(context_settings=CONTEXT_SETTINGS,
               short_help="Run a grid of simulations in parallel on Dask.")
@click.argument("grid_file", metavar="GRID.toml", type=click.Path(path_type=Path))
@click.option("--scheduler", default=None, metavar="ADDR",
              help="A Dask scheduler (tcp://host:8786); default: TIMMY_DASK_SCHEDULER, "
                   "else a local cluster.")
@click.option("--out", default=None, metavar="FILE", type=click.Path(path_type=Path),
              help="Also write the results to FILE (.csv or .parquet).")
@plugin_option
def sweep_cmd(grid_file: Path, scheduler: str | None, out: Path | None,
              plugins: tuple[str, ...] = ()) -> None:
    """Run every combination of GRID.toml's parameters as a simulation, on Dask.

    GRID.toml has a [grid] table (rule, jitter, load, runners, seed: lists or
    {start, stop, step} ranges) and an optional [settings] table (tasks,
    task_seconds, max_attempts, runner_queue). See examples/grid.toml.
    ``--plugin MODULE`` is imported here and on every Dask worker (on its PYTHONPATH).
    """
    from timmy.sim.sweeps import GRID_PARAMETERS, load_grid, sweep

    grid = load_grid(grid_file)
    results = sweep(grid, scheduler=scheduler, progress=True, plugins=plugins)
    varying = [p for p in GRID_PARAMETERS if len(grid.get(p, ())) > 1]
    shown = [*varying, "mean_price", "specialist_share", "success_rate", "latency_p95_s",
             "makespan_s"]
    make_console().print(frame_table(results[shown]))
    if out is not None:
        if out.suffix == ".parquet":
            results.to_parquet(out)
        else:
            results.to_csv(out, index=False)
        make_console().print(text(f"results: {out}"))
