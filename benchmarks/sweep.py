"""A 64-point sweep, serially in one process vs. on a local Dask cluster.

The grid: jitter (4 values) x load (2) x runners (2) x seeds (4), under the
specialist_first rule, 1000 tasks per point. The Dask time is given twice: with
the cluster's start-up (what `sweep(grid)` costs from cold) and on a cluster
that is already running (what a notebook pays for the second sweep). Both runs
must give the same table; the script says whether they did.

    python benchmarks/sweep.py [--tasks 1000] [--seeds 4] [--workers N]
"""

from __future__ import annotations

import argparse
import os
import time

from timmy.sim.sweeps import local_cluster, sweep


def grid(seeds: int) -> dict[str, list]:
    return {"rule": ["specialist_first"], "jitter": [0, 0.5, 1, 2], "load": [50, 400],
            "runners": [1, 2], "seed": list(range(seeds))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", type=int, default=1000, help="tasks per point")
    ap.add_argument("--seeds", type=int, default=4, help="seeds per point (4 -> 64 points)")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2,
                    help="local cluster workers (default: one per CPU)")
    args = ap.parse_args()

    from dask.distributed import Client

    g = grid(args.seeds)
    points = len(g["jitter"]) * len(g["load"]) * len(g["runners"]) * len(g["seed"])
    cpus = os.cpu_count()
    print(f"sweep: {points} points x {args.tasks:,} tasks, this machine has {cpus} CPU "
          f"core{'s' if cpus != 1 else ''}; local cluster: {args.workers} worker processes "
          "x 1 thread")

    t0 = time.perf_counter()
    serial = sweep(g, serial=True, progress=False, tasks=args.tasks)
    t_serial = time.perf_counter() - t0
    print(f"  serial (one process)          {t_serial:7.2f} s   "
          f"{points / t_serial:6.1f} points/s")

    t0 = time.perf_counter()
    with local_cluster(args.workers) as cluster, Client(cluster) as client:
        t_started = time.perf_counter()
        parallel = sweep(g, client=client, progress=False, tasks=args.tasks)
        t_warm = time.perf_counter() - t_started
    t_cold = time.perf_counter() - t0
    print(f"  dask, cluster start included  {t_cold:7.2f} s   {points / t_cold:6.1f} points/s"
          f"   speed-up x{t_serial / t_cold:.2f}")
    print(f"  dask, cluster already up      {t_warm:7.2f} s   {points / t_warm:6.1f} points/s"
          f"   speed-up x{t_serial / t_warm:.2f}")
    print(f"  per point (serial): {t_serial / points * 1000:.0f} ms; "
          f"same table serial and on Dask: {serial.equals(parallel)}")


if __name__ == "__main__":   # Dask's worker processes import this file: keep the guard
    main()
