"""Completed tasks per second through a live swarm, and post -> assign latency.

Nine runner processes, the simulated executor with zero task time, an SQLite
file store. Each run: a fresh database, 200 warm-up tasks, then 1,000 tasks
posted at once and timed until all are finished; median of 3 runs. Latency is
measured separately with one task in flight at a time (post, wait, repeat),
from the task's created_at to its assigned_at as stored.

    python benchmarks/throughput.py [--tasks 1000] [--runs 3] [--latency-tasks 500]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import timmy
from timmy.sim.workloads import demo_descriptions


def one_run(db: str, n: int, seed: int) -> float:
    with timmy.Swarm(db, seed=seed, task_seconds=0) as swarm:
        swarm.spawn_all()
        swarm.run(demo_descriptions(200, seed + 1000), timeout=120)
        work = demo_descriptions(n, seed)
        t0 = time.perf_counter()
        done = swarm.run(work, timeout=300)
        elapsed = time.perf_counter() - t0
        lost = sum(t.status not in ("completed", "failed") for t in done)
        assert lost == 0, f"{lost} tasks unfinished"
    return n / elapsed


def latency(db: str, n: int, seed: int) -> list[float]:
    with timmy.Swarm(db, seed=seed, task_seconds=0) as swarm:
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
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rates = []
        for i in range(args.runs):
            rate = one_run(f"sqlite:///{Path(tmp) / f'run{i}.db'}", args.tasks, seed=i + 1)
            rates.append(rate)
            print(f"run {i + 1}: {rate:,.0f} tasks/s")
        med = statistics.median(rates)
        print(f"throughput: median {med:,.0f} tasks/s over {args.runs} runs of {args.tasks} "
              f"tasks (min {min(rates):,.0f}, max {max(rates):,.0f})")
        print(f"vs the old system's 30 auctions/s: {med / 30:,.0f}x")
        lat = latency(f"sqlite:///{Path(tmp) / 'lat.db'}", args.latency_tasks, seed=99)
        print(f"post->assign latency, one task in flight ({len(lat)} tasks): "
              f"p50 {pct(lat, 0.5):.2f} ms, p99 {pct(lat, 0.99):.2f} ms, max {max(lat):.2f} ms")


if __name__ == "__main__":
    main()
