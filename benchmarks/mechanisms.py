"""Simulated auctions per second for each clearing mechanism, on each engine that runs it.

The simulated side of "throughput per mechanism" (the live side is
``benchmarks/throughput.py --rule all``): the same demo workload, posted one task at a time,
is simulated under every built-in mechanism (or the ``--rule`` names given) with the Python
reference engine, and with the compiled (numba) engine where it clears that rule
(`timmy.sim.simulator.COMPILED_RULES`; any other mechanism runs on the Python engine only).
Tables are streamed to Parquet, as in ``benchmarks/simulate.py``.

    python benchmarks/mechanisms.py [--tasks 200000] [--reference-tasks 20000]
        [--rule NAME ...] [--strategy adaptive] [--plugin MODULE ...]

``--strategy`` makes every persona bid with that strategy (e.g. ``shade:0.2``,
``bandit:0.1``); the compiled engine bids ``adaptive`` only, so for any other strategy
only the Python engine is timed.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import tempfile
import time

import pyarrow.parquet as pq

from timmy.market.mechanisms import check_rule, mechanism_names
from timmy.market.personas import PERSONAS
from timmy.sim.simulator import COMPILED_RULES, simulate
from timmy.sim.workloads import demo_descriptions


def timed(work: list[str], rule: str, engine: str, personas) -> tuple[float, int]:
    """Seconds to simulate ``work`` and the auctions it held."""
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        simulate(work, seed=1, task_seconds=0.05, rule=rule, engine=engine,
                 personas=personas, out=tmp)
        elapsed = time.perf_counter() - t0
        bids = pq.read_table(f"{tmp}/bids.parquet", columns=["auction_id"])
        auctions = len(set(bids.column("auction_id").to_pylist()))
    return elapsed, auctions


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", type=int, default=200_000,
                    help="demo tasks per mechanism on the compiled engine")
    ap.add_argument("--reference-tasks", type=int, default=20_000,
                    help="demo tasks per mechanism on the Python engine")
    ap.add_argument("--rule", action="append", metavar="NAME",
                    help="mechanism to measure (repeatable, with parameters: "
                         "score:w_price=0.7); default every built-in")
    ap.add_argument("--strategy", default="adaptive",
                    help="the strategy every persona bids with (default adaptive)")
    ap.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                    help="import this module first (it registers mechanisms); repeatable")
    args = ap.parse_args()
    for module in args.plugin:
        importlib.import_module(module)
    rules = [check_rule(r) for r in (args.rule or mechanism_names())]
    personas = None
    if args.strategy != "adaptive":
        personas = {pid: dataclasses.replace(p, strategy=args.strategy)
                    for pid, p in PERSONAS.items()}
    compiled_ok = personas is None   # the compiled engine bids adaptive only
    if compiled_ok:
        try:
            simulate(demo_descriptions(500, 9), engine="compiled")   # compile (disk-cached)
        except Exception as exc:   # numba missing: the Python engine only
            print(f"compiled engine unavailable ({exc}); timing the Python engine only")
            compiled_ok = False

    sizes = f"python: {args.reference_tasks:,} demo tasks"
    if compiled_ok:
        sizes += f", compiled: {args.tasks:,} demo tasks"
    print(f"strategy {args.strategy}; {sizes} per mechanism")
    print(f"{'mechanism':<34} {'python auctions/s':>18} {'compiled auctions/s':>26}")
    for rule in rules:
        elapsed, auctions = timed(demo_descriptions(args.reference_tasks, 1), rule, "python",
                                  personas)
        python = f"{auctions / elapsed:,.0f}"
        if rule not in COMPILED_RULES:
            compiled = "- (rule: python only)"
        elif not compiled_ok:
            compiled = "- (strategy: python only)"
        else:
            elapsed, auctions = timed(demo_descriptions(args.tasks, 1), rule, "compiled",
                                      personas)
            compiled = f"{auctions / elapsed:,.0f}"
        print(f"{rule:<34} {python:>18} {compiled:>26}")


if __name__ == "__main__":
    main()
