"""An experiment of 4 variants x 30 replications x 1,000 tasks, serially vs. on local Dask.

The variants: the rules specialist_first, lowest and second_price, and specialist_first with
four times the execution time; each replication draws its own demo workload (the same for
every variant). The Dask time is given with the cluster's start-up and on a cluster that is
already running. Both runs must give the same tables; the script says whether they did.

    python benchmarks/experiment.py [--tasks 1000] [--replications 30] [--workers N]
"""

from __future__ import annotations

import argparse
import os
import time
from functools import partial

from timmy.sim import demo_descriptions
from timmy.sim.experiments import experiment
from timmy.sim.sweeps import local_cluster

VARIANTS = {
    "specialist_first": {"rule": "specialist_first"},
    "lowest": {"rule": "lowest"},
    "second_price": {"rule": "second_price"},
    "slow": {"rule": "specialist_first", "task_seconds": 0.2},
}


def workload(tasks: int, seed: int) -> list[str]:
    return demo_descriptions(tasks, seed)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", type=int, default=1000, help="tasks per run")
    ap.add_argument("--replications", type=int, default=30, help="replications per variant")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2,
                    help="local cluster workers (default: one per CPU)")
    ap.add_argument("--engine", default="auto", choices=["auto", "python", "compiled"],
                    help="simulation engine of every variant")
    args = ap.parse_args()

    from dask.distributed import Client

    variants = {name: {**spec, "engine": args.engine} for name, spec in VARIANTS.items()}
    runs = len(variants) * args.replications
    make = partial(workload, args.tasks)
    cpus = os.cpu_count()
    print(f"experiment: {len(variants)} variants x {args.replications} replications x "
          f"{args.tasks:,} tasks ({runs} runs, engine {args.engine}); this machine has {cpus} "
          f"CPU core{'s' if cpus != 1 else ''}; local cluster: {args.workers} worker "
          "processes x 1 thread")

    experiment(make, variants, replications=2, progress=False)   # warm-up (numba's cache)
    t0 = time.perf_counter()
    serial = experiment(make, variants, replications=args.replications, seed=1,
                        progress=False)
    t_serial = time.perf_counter() - t0
    print(f"  serial (one process)          {t_serial:7.2f} s   {runs / t_serial:6.1f} runs/s"
          f"   {runs * args.tasks / t_serial:9,.0f} tasks/s")

    t0 = time.perf_counter()
    with local_cluster(args.workers) as cluster, Client(cluster) as client:
        t_started = time.perf_counter()
        parallel = experiment(make, variants, replications=args.replications, seed=1,
                              client=client, progress=False)
        t_warm = time.perf_counter() - t_started
    t_cold = time.perf_counter() - t0
    print(f"  dask, cluster start included  {t_cold:7.2f} s   {runs / t_cold:6.1f} runs/s"
          f"   speed-up x{t_serial / t_cold:.2f}")
    print(f"  dask, cluster already up      {t_warm:7.2f} s   {runs / t_warm:6.1f} runs/s"
          f"   speed-up x{t_serial / t_warm:.2f}")
    same = all(getattr(serial, t).equals(getattr(parallel, t))
               for t in ("runs", "summary", "comparisons"))
    print(f"  per run (serial): {t_serial / runs * 1000:.0f} ms; "
          f"same tables serial and on Dask: {same}")
    significant = serial.comparisons[serial.comparisons["significant"]]
    print(f"  significant differences (Holm, alpha 0.05): {len(significant)} of "
          f"{len(serial.comparisons)} comparisons")


if __name__ == "__main__":   # Dask's worker processes import this file: keep the guard
    main()
