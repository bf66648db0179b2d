"""The cost of Prometheus metrics on throughput: A/B in one run.

A real ``timmy serve`` subprocess (nine runners, simulated executor, zero task time, a
SQLite file in a temporary directory) runs ``--tasks`` tasks posted by one attached client,
three ways, alternated ``--runs`` times: without metrics (A), with ``--metrics-port`` and
nobody scraping (B), and with a scraper fetching /metrics every ``--scrape-every`` seconds
(C, much more often than Prometheus's usual 15 s). Prints tasks/s (median) for each and
the ratio to A, the service's CPU time per task (user + system, all its threads: what
the metrics add, and a figure other work on a shared machine disturbs less than the
wall clock), and the median time of one scrape. Then the collector's own cost on the
engine's thread: one task's events (posted, auction opened, nine bids, auction closed,
assigned, started, completed) emitted through a real `Journal`, without and with
`SwarmMetrics` counting them (best of 30 rounds of 1,000 tasks).

    python benchmarks/metrics.py [--tasks 1000] [--runs 3] [--scrape-every 0.05]
                                 [--engine-rounds 30]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import statistics
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from types import SimpleNamespace

import psutil

import timmy
from timmy.ops.chaos import Service
from timmy.sim.workloads import demo_descriptions


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(proc: psutil.Process) -> float:
    """CPU time of every thread of ``proc``: from Linux's schedstat (nanoseconds), else
    psutil's (clock ticks, 10 ms: too coarse for short runs)."""
    try:
        total = 0
        for tid in os.listdir(f"/proc/{proc.pid}/task"):
            with contextlib.suppress(FileNotFoundError, ProcessLookupError), \
                    open(f"/proc/{proc.pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        return total / 1e9
    except OSError:
        times = proc.cpu_times()
        return times.user + times.system


def one_run(tmp: Path, tasks: int, mode: str,
            scrape_every: float) -> tuple[float, float, list[float]]:
    db = tmp / f"{mode}-{uuid.uuid4().hex[:6]}.db"
    args = ["--task-seconds", "0", "--seed", "1"]
    port = None
    if mode != "A":
        port = free_port()
        args += ["--metrics-port", str(port)]
    svc = Service(db, uuid.uuid4().hex, args)
    svc.start()
    scrapes: list[float] = []
    stop = threading.Event()

    def scraper() -> None:
        url = f"http://127.0.0.1:{port}/metrics"
        while not stop.wait(scrape_every):
            t0 = time.perf_counter()
            with urllib.request.urlopen(url, timeout=10) as resp:
                resp.read()
            scrapes.append(time.perf_counter() - t0)

    try:
        with timmy.Swarm.attach(svc.url, token=svc.token()) as swarm:
            descriptions = demo_descriptions(tasks, seed=1)
            swarm.run(descriptions[:20], timeout=60)      # warm up
            thread = threading.Thread(target=scraper, daemon=True)
            if mode == "C":
                thread.start()
            proc = psutil.Process(svc.proc.pid)
            cpu0, t0 = cpu_seconds(proc), time.perf_counter()
            swarm.run(descriptions, timeout=600)
            elapsed, cpu = time.perf_counter() - t0, cpu_seconds(proc) - cpu0
            stop.set()
            if mode == "C":
                thread.join()
    finally:
        svc.stop()
    return tasks / elapsed, cpu / tasks, scrapes


def engine_cost(rounds: int) -> tuple[float, float]:
    """Seconds per task of emitting one task's events, without and with the collector.

    The engine around the journal is reduced to what the collector reads: the auctions'
    bid counter (bumped here as `Auctions.bid` does) and the finished tasks."""
    import anyio

    from timmy.engine.journal import Journal
    from timmy.market.models import Task
    from timmy.service.metrics import SwarmMetrics

    accepted = [0, 0]

    def one_task(journal: Journal, tid: int) -> None:
        journal.emit("task_posted", tid, description="write the docs for module 3")
        journal.emit("auction_opened", tid, attempt=1, eligible=9)
        for n in range(9):
            accepted[n == 3] += 1
            journal.emit("bid", tid, f"p{n}-1", sats=10 + n, on_spec=n == 3, attempt=1)
        journal.emit("auction_closed", tid, "p3-1", price_sats=13, rule="specialist_first",
                     why="on-spec", bids=9, closed_by="all_bid", attempt=1)
        journal.emit("task_assigned", tid, "p3-1", price_sats=13, attempt=1)
        journal.emit("task_started", tid, "p3-1")
        journal.emit("task_completed", tid, "p3-1", price_sats=13, attempt=1)

    async def measure() -> tuple[float, float]:
        journal = Journal(None, lambda _: None, lambda _: None)
        finished = {i: Task(task_id=i, description="x", created_at=time.time())
                    for i in range(1000)}
        engine = SimpleNamespace(journal=journal, active={}, finished=finished,
                                 auctions=SimpleNamespace(accepted=accepted))

        def best() -> float:
            out = float("inf")
            for _ in range(rounds):
                t0 = time.perf_counter()
                for tid in range(1000):
                    one_task(journal, tid)
                out = min(out, (time.perf_counter() - t0) / 1000)
                journal.batch.events.clear()
            return out

        without = best()
        metrics = SwarmMetrics(SimpleNamespace(engine=engine))
        with_metrics = best()
        metrics.close()
        return without, with_metrics

    return anyio.run(measure)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--scrape-every", type=float, default=0.05)
    ap.add_argument("--engine-rounds", type=int, default=30)
    a = ap.parse_args()
    rates: dict[str, list[float]] = {"A": [], "B": [], "C": []}
    cpus: dict[str, list[float]] = {"A": [], "B": [], "C": []}
    scrapes: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(a.runs):
            for mode in rates:
                rate, cpu, s = one_run(Path(tmp), a.tasks, mode, a.scrape_every)
                rates[mode].append(rate)
                cpus[mode].append(cpu)
                scrapes += s
    base, base_cpu = statistics.median(rates["A"]), statistics.median(cpus["A"])
    names = {"A": "no metrics", "B": "--metrics-port, not scraped",
             "C": f"--metrics-port, scraped every {a.scrape_every:g}s"}
    print(f"{a.tasks:,} tasks per run, {a.runs} runs each (median), one client, 9 runners")
    for mode, label in names.items():
        med, cpu = statistics.median(rates[mode]), statistics.median(cpus[mode])
        print(f"  {mode} {label:<38} {med:8.1f} tasks/s  ({med / base:.2f}x of A); "
              f"service CPU {cpu * 1e6:6.1f} us/task ({cpu / base_cpu:.2f}x)")
    if scrapes:
        print(f"  one scrape of /metrics: median {statistics.median(scrapes) * 1000:.2f} ms "
              f"({len(scrapes)} scrapes)")
    without, with_metrics = engine_cost(a.engine_rounds)
    print(f"  on the engine's thread, one task's 15 events: {without * 1e6:.2f} us, "
          f"{with_metrics * 1e6:.2f} us with the collector "
          f"(+{(with_metrics - without) * 1e6:.2f} us a task)")


if __name__ == "__main__":
    main()
