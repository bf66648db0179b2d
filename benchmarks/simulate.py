"""Simulated auctions per second, and memory, for a long run with nine personas.

The compiled engine (numba) over 1M demo tasks posted one at a time, streamed to
Parquet; the Python reference engine over a smaller run for comparison. Memory is
the peak RSS growth during the run (the workload list itself is built first).

    python benchmarks/simulate.py [--tasks 1000000] [--reference-tasks 20000]
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time

import pyarrow.parquet as pq

from timmy.sim.simulator import simulate
from timmy.sim.workloads import demo_descriptions


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(work, **kwargs) -> tuple[float, int]:
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        simulate(work, seed=1, task_seconds=0.05, out=tmp, **kwargs)
        elapsed = time.perf_counter() - t0
        auctions = pq.read_metadata(f"{tmp}/bids.parquet").num_rows // 9
    return elapsed, auctions


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", type=int, default=1_000_000)
    ap.add_argument("--reference-tasks", type=int, default=20_000)
    args = ap.parse_args()
    simulate(demo_descriptions(500, 9), engine="compiled")   # compile (cached on disk after)
    for n in sorted({max(1, args.tasks // 5), args.tasks}):
        work = demo_descriptions(n, 1)
        before = peak_mb()
        elapsed, auctions = timed(work, engine="compiled")
        print(f"compiled: {n:,} tasks, {auctions:,} auctions in {elapsed:.2f}s: "
              f"{auctions / elapsed:,.0f} auctions/s; peak RSS growth "
              f"{max(0.0, peak_mb() - before):,.0f} MB (streamed to Parquet)")
    work = demo_descriptions(args.reference_tasks, 1)
    elapsed, auctions = timed(work, engine="python")
    print(f"python reference: {args.reference_tasks:,} tasks, {auctions:,} auctions in "
          f"{elapsed:.2f}s: {auctions / elapsed:,.0f} auctions/s")


if __name__ == "__main__":
    main()
