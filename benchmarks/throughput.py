"""Completed tasks per second through a live swarm, and post -> assign latency.

Nine runner processes, the simulated executor with zero task time, an SQLite
file store. Each run: a fresh database, 200 warm-up tasks, then 1,000 tasks
posted at once and timed until all are finished; median of 3 runs. Latency is
measured separately with one task in flight at a time (post, wait, repeat),
from the task's created_at to its assigned_at as stored.

    python benchmarks/throughput.py [--tasks 1000] [--runs 3] [--latency-tasks 500]
        [--rule NAME ...] [--plugin MODULE ...]

``--rule`` (repeatable) measures each clearing mechanism in turn (any registered name, with
parameters: ``--rule lowest --rule score:w_price=0.7``; ``--rule all`` for every built-in);
``--plugin`` imports a module that registers more first.
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import tempfile
import time
from pathlib import Path

import timmy
from timmy.market.mechanisms import check_rule, mechanism_names
from timmy.sim.workloads import demo_descriptions


def one_run(db: str, n: int, seed: int, rule: str = "specialist_first") -> float:
    with timmy.Swarm(db, seed=seed, task_seconds=0, rule=rule) as swarm:
        swarm.spawn_all()
        swarm.run(demo_descriptions(200, seed + 1000), timeout=120)
        work = demo_descriptions(n, seed)
        t0 = time.perf_counter()
        done = swarm.run(work, timeout=300)
        elapsed = time.perf_counter() - t0
        lost = sum(t.status not in ("completed", "failed") for t in done)
        assert lost == 0, f"{lost} tasks unfinished"
    return n / elapsed


def latency(db: str, n: int, seed: int, rule: str = "specialist_first") -> list[float]:
    with timmy.Swarm(db, seed=seed, task_seconds=0, rule=rule) as swarm:
        swarm.spawn_all()
        for d in demo_descriptions(50, seed + 7):
            swarm.wait(swarm.post(d).task_id, timeout=10)
        ids = []
        for d in demo_descriptions(n, seed):
            t = swarm.post(d)
            swarm.wait(t.task_id, timeout=10)
            ids.append(t.task_id)
        wanted = set(ids)
        tasks = [t for t in swarm.iter_tasks(after=min(ids) - 1) if t.task_id in wanted]
    return [(t.assigned_at - t.created_at) * 1000 for t in tasks]


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--latency-tasks", type=int, default=500)
    ap.add_argument("--rule", action="append", metavar="NAME",
                    help="clearing mechanism to measure (repeatable; 'all': every built-in); "
                         "default specialist_first")
    ap.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                    help="import this module first (it registers mechanisms); repeatable")
    args = ap.parse_args()
    for module in args.plugin:
        importlib.import_module(module)
    rules = args.rule or ["specialist_first"]
    if "all" in rules:
        rules = [r for r in rules if r != "all"] + [
            r for r in mechanism_names()[:6] if r not in rules]
    rules = [check_rule(r) for r in rules]
    with tempfile.TemporaryDirectory() as tmp:
        for rule in rules:
            measure(Path(tmp), rule, args)


def measure(tmp: Path, rule: str, args) -> None:
    tag = rule.replace(":", "_").replace(",", "_").replace("=", "-")
    print(f"rule {rule}:")
    rates = []
    for i in range(args.runs):
        rate = one_run(f"sqlite:///{tmp / f'{tag}-run{i}.db'}", args.tasks, seed=i + 1,
                       rule=rule)
        rates.append(rate)
        print(f"run {i + 1}: {rate:,.0f} tasks/s")
    med = statistics.median(rates)
    print(f"throughput ({rule}): median {med:,.0f} tasks/s over {args.runs} runs of "
          f"{args.tasks} tasks (min {min(rates):,.0f}, max {max(rates):,.0f})")
    print(f"vs the old system's 30 auctions/s: {med / 30:,.0f}x")
    lat = latency(f"sqlite:///{tmp / f'{tag}-lat.db'}", args.latency_tasks, seed=99, rule=rule)
    print(f"post->assign latency ({rule}), one task in flight ({len(lat)} tasks): "
          f"p50 {pct(lat, 0.5):.2f} ms, p99 {pct(lat, 0.99):.2f} ms, max {max(lat):.2f} ms")


if __name__ == "__main__":
    main()
