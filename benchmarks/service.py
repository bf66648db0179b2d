"""The swarm service's control endpoint: post requests/s and latency, events/s to subscribers,
time from ``timmy serve`` to its first answer.

A real ``timmy serve`` subprocess on a free loopback port with a SQLite file in a temporary
directory, nine runners, the simulated executor with zero task time.

- post: one client posts ``--posts`` tasks one request at a time (round trip each):
  requests/s, p50 and p99 latency.
- events: 1 and then 10 attached subscribers, while ``--tasks`` tasks run; events/s
  delivered to each subscriber (all events from its start to the last event of the run).
- startup: from spawning ``timmy serve`` to the first answered ``status`` (nine runners
  spawned first), median of ``--starts``.

    python benchmarks/service.py [--posts 1000] [--tasks 1000] [--starts 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path

import timmy
from timmy.ops.chaos import Service
from timmy.sim.workloads import demo_descriptions


def start(db: Path) -> Service:
    service = Service(db, "benchmark", ["--task-seconds", "0", "--seed", "1"])
    service.start()
    return service


def bench_posts(url: str, token: str, n: int) -> None:
    with timmy.Swarm.attach(url, token=token) as swarm:
        work = demo_descriptions(n, 3)
        lat = []
        t0 = time.perf_counter()
        for d in work:
            t = time.perf_counter()
            swarm.post(d)
            lat.append(time.perf_counter() - t)
        elapsed = time.perf_counter() - t0
        q = statistics.quantiles(lat, n=100)
        print(f"post over the control endpoint: {n / elapsed:,.0f} requests/s, "
              f"p50 {q[49] * 1000:.2f} ms, p99 {q[98] * 1000:.2f} ms ({n} posts, one client)")
        for task in swarm.tasks(limit=n):          # let them finish before the next figure
            swarm.wait(task.task_id, timeout=120)


def bench_events(url: str, token: str, n_tasks: int, n_subs: int) -> None:
    with timmy.Swarm.attach(url, token=token) as swarm:
        counts = [0] * n_subs
        done = [threading.Event() for _ in range(n_subs)]
        target = {"last": None}
        seen = [0] * n_subs
        ends = [0.0] * n_subs

        def make(i: int):
            def on_event(event) -> None:
                counts[i] += 1
                seen[i] = event.event_id
                last = target["last"]
                if last is not None and event.event_id >= last:
                    ends[i] = time.perf_counter()
                    done[i].set()
            return on_event

        subs = [timmy.Swarm.attach(url, token=token) for _ in range(n_subs)]
        for i, sub in enumerate(subs):
            sub.subscribe(make(i))
        t0 = time.perf_counter()
        swarm.run(demo_descriptions(n_tasks, 5), timeout=300)
        target["last"] = swarm.events()[-1].event_id
        elapsed_run = time.perf_counter() - t0
        for i in range(n_subs):
            if seen[i] >= target["last"] and not done[i].is_set():
                ends[i] = time.perf_counter()      # it had them all before we knew the last
                done[i].set()
            done[i].wait(30)
        rates = [counts[i] / max(ends[i] - t0, 1e-9) for i in range(n_subs)]
        print(f"events to {n_subs:>2} subscriber(s): {statistics.median(rates):,.0f} events/s "
              f"each (median), {sum(counts):,} events delivered in all "
              f"({n_tasks} tasks run in {elapsed_run:.2f}s)")
        for sub in subs:
            sub.close()


def bench_startup(tmp: Path, n: int) -> None:
    times = []
    for i in range(n):
        db = tmp / f"start{i}.db"
        t0 = time.perf_counter()
        service = start(db)
        with timmy.Swarm.attach(service.url, token=service.token()) as swarm:
            swarm.status()
        times.append(time.perf_counter() - t0)
        service.stop()
    print(f"timmy serve to first answer: {statistics.median(times):.2f}s median of {n} "
          f"(nine runners spawned first)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--posts", type=int, default=1000)
    ap.add_argument("--tasks", type=int, default=1000)
    ap.add_argument("--starts", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        service = start(tmp / "bench.db")
        url, token = service.url, service.token()
        try:
            bench_posts(url, token, args.posts)
            bench_events(url, token, args.tasks, 1)
            bench_events(url, token, args.tasks, 10)
        finally:
            service.stop()
        bench_startup(tmp, args.starts)


if __name__ == "__main__":
    main()
