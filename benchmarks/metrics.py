"""The cost of Prometheus metrics on throughput: A/B in one run.

A real ``timmy serve`` subprocess (nine runners, simulated executor, zero task time, a
SQLite file in a temporary directory) runs ``--tasks`` tasks posted by one attached client,
three ways, alternated ``--runs`` times: without metrics (A), with ``--metrics-port`` and
nobody scraping (B), and with a scraper fetching /metrics every ``--scrape-every`` seconds
(C, much more often than Prometheus's usual 15 s). Prints tasks/s (median) for each and
the ratio to A, the service's CPU time per task (user + system, all its threads: what
the metrics add, and a figure other work on a shared machine disturbs less than the
wall clock), and the median time of one scrape.

    python benchmarks/metrics.py [--tasks 1000] [--runs 3] [--scrape-every 0.05]
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--scrape-every", type=float, default=0.05)
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


if __name__ == "__main__":
    main()
