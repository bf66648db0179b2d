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


def _runners(_ctx, _param, value: str | None):
    """``--runners``: None, a count for every persona, or ``persona=count,...``."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit() and int(value) >= 1:
        return int(value)
    counts = {}
    for part in value.split(","):
        name, _, count = part.partition("=")
        if not name.strip() or not count.strip().isdigit():
            raise click.BadParameter(f"{value!r}: give a count (2) or persona=count pairs "
                                     "(quill=3,forge=2)")
        counts[name.strip()] = int(count)
    return counts


@click.command(context_settings=CONTEXT_SETTINGS,
               short_help="Simulate N seeded tasks with the live rules; show who won.")
@click.option("--tasks", "n_tasks", default=100_000, show_default=True,
              type=click.IntRange(min=1), help="How many demo tasks to simulate.")
@rule_option
@plugin_option
@click.option("--seed", default=1, show_default=True, type=int,
              help="Seeds the workload, the bids and the simulated executions.")
@click.option("--runners", default=None, metavar="N|P=N,...", callback=_runners,
              help="Runners per persona: one count for all (default 1), or per persona "
                   "(quill=3,forge=2); with --model, default the recorded mix.")
@click.option("--task-seconds", default=0.05, show_default=True, type=click.FloatRange(min=0),
              help="Mean simulated task duration (virtual seconds).")
@click.option("--out", default=None, metavar="DIR", type=click.Path(path_type=Path),
              help="Stream the tables to Parquet files in DIR (read them with `timmy report`).")
@click.option("--engine", type=click.Choice(["auto", "python", "compiled"]), default="auto",
              show_default=True, help="compiled (numba) or the python reference.")
@click.option("--model", "model_file", default=None, metavar="FILE",
              type=click.Path(path_type=Path),
              help="A calibrated model (`timmy calibrate`): durations, failures and overhead "
                   "drawn from it, tasks arriving as it recorded them.")
@click.option("--rate", default=None, type=click.FloatRange(min=0, min_open=True),
              help="With --model: arrivals per second instead of the recorded rate.")
@click.option("--overload", is_flag=True,
              help="With --model: simulate a rate above the modelled capacity anyway.")
def simulate_cmd(n_tasks: int, rule: str, seed: int, runners, task_seconds: float,
                 out: Path | None, engine: str, plugins: tuple[str, ...] = (),
                 model_file: Path | None = None, rate: float | None = None,
                 overload: bool = False) -> None:
    """Simulate the demo workload, one task at a time, with the live engine's rules.

    The same seed gives the same winners and prices as `timmy demo --sequential`
    with that many tasks. Prints earnings by persona and the price by on/off-spec.
    With --model FILE, the tasks arrive as the model's recorded posts did (or at
    --rate), and the run's throughput, post-to-done percentiles, cost and utilisation
    are printed too.
    """
    from timmy.analysis import queries as analytics
    from timmy.sim.simulator import simulate
    from timmy.sim.workloads import demo_descriptions

    model = None
    if model_file is not None:
        from timmy.sim.model import Model
        from timmy.sim.twin_draws import model_arrivals

        model = Model.load(model_file)
        if not overload:   # a rate the runners cannot keep up with: said, unless asked for
            model.check_rate(model.arrivals.rate if rate is None else rate, runners)
        work = model_arrivals(model, n_tasks, seed, rate=rate)
    else:
        if rate is not None:
            raise click.UsageError("--rate needs --model")
        work = demo_descriptions(n_tasks, seed)
        runners = 1 if runners is None else runners
    t0 = time.perf_counter()
    run = simulate(work, seed=seed, rule=rule, runners=runners, task_seconds=task_seconds,
                   out=out, engine=engine, progress=True, model=model)
    elapsed = time.perf_counter() - t0
    con = analytics.connect(run)
    console = make_console()
    for name in ("earnings_by_persona", "price_by_spec"):
        console.print(f"[bold]{analytics.title(name)}[/bold]")
        console.print(frame_table(analytics.REPORTS[name](con)))
    auctions = con.execute("select count(distinct auction_id) from bids").fetchone()[0]
    console.print(f"{n_tasks:,} tasks, {auctions:,} auctions in {elapsed:.2f}s "
                  f"({auctions / elapsed:,.0f} auctions/s), rule {rule}, seed {seed}")
    if model is not None:
        _print_summary(console, run.summary())
    if out is not None:
        console.print(text(f"tables: {out}/ (tasks, bids, agents, events .parquet)"))


def _print_summary(console, s: dict) -> None:
    """A simulated run's figures (`SimRun.summary`)."""
    busy = [v for v in s["utilisation"].values() if v == v]
    console.print(text(
        f"{s['completed']:,} of {s['tasks']:,} completed, {s['throughput']:.4g} tasks/s; "
        f"post to done p50 {s['p50']:.4g}s, p95 {s['p95']:.4g}s, p99 {s['p99']:.4g}s; "
        f"{s['cost_per_task']:.4g} sats per task; runners busy "
        f"{(sum(busy) / len(busy) if busy else float('nan')):.0%} on average, the busiest "
        f"{max(busy, default=float('nan')):.0%}; at most "
        f"{max((n for _, n in s['queue']), default=0):,} tasks in the swarm"))


@click.command(context_settings=CONTEXT_SETTINGS,
               short_help="Fit a digital twin's model from a recorded run.")
@click.argument("source", metavar="SOURCE")
@click.option("-o", "--out", "out", required=True, metavar="FILE",
              type=click.Path(path_type=Path), help="Write the model to FILE (.toml or .json).")
@click.option("--min-tasks", default=50, show_default=True, type=click.IntRange(min=2),
              help="Completed tasks the fit needs.")
def calibrate_cmd(source: str, out: Path, min_tasks: int) -> None:
    """Fit a model of the swarm from what SOURCE recorded (an export directory, a SQLite
    file or a database URL): per persona the execution time, success on and off its
    speciality, crashes; the arrivals; the coordinator's overhead. Simulate with it:
    `timmy simulate --model FILE`.
    """
    from timmy.sim.calibration import calibrate

    model = calibrate(source, min_tasks=min_tasks)
    model.save(out)
    console = make_console()
    console.print(text(model.summary()))
    console.print(text(f"model: {out}"))


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
