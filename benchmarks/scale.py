"""Does throughput stay flat as history grows and runners multiply? And how small is a runner?

1. Throughput (tasks/s, 1,000 tasks, 9 runners, zero task time) with 0, 100k
   and 1M bids already in the database (plus 1 task per 9 bids and 1 event
   per bid): adaptive bidding keeps counters, so history must not matter.
2. Throughput with 9, 27 and 54 runners.
3. Runner start-up (spawn() until its hello) and memory per runner (RSS, USS).

    python benchmarks/scale.py [--tasks 1000] [--history 0,100000,1000000] [--runners 9,27,54]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import psutil

import timmy
from timmy.sim.workloads import demo_descriptions
from timmy.storage.store import Batch, Store


def prefill(url: str, n_bids: int) -> None:
    """Write n_bids old bids (and their tasks and events) in chunks, as a long run would."""
    if not n_bids:
        return
    store = Store(url)
    now = time.time() - 86_400
    chunk = 9 * 20_000
    written = 0
    while written < n_bids:
        n = min(chunk, n_bids - written)
        tasks = store.insert_tasks(["old work: write the readme"] * (n // 9 or 1), now)
        batch = Batch()
        for t in tasks:
            batch.tasks[t.task_id] = {"status": "completed", "assigned_agent": "quill-1",
                                      "price_sats": 30, "attempts": 1, "result": "ok",
                                      "reason": None, "assigned_at": now, "completed_at": now}
        base = store.next_event_id()
        for i in range(n):
            tid = tasks[i // 9 % len(tasks)].task_id
            agent = f"old-{i % 9}"
            batch.bids.append((tid, 1, base + i - i % 9, agent, 30 + i % 50, i % 2 == 0,
                               i % 9 == 0, "specialist_first", now))
            batch.events.append((base + i, now, "bid", tid, agent, '{"sats":30}'))
        store.apply(batch)
        written += n


def throughput(url: str, n: int, copies: int = 1, seed: int = 1) -> float:
    with timmy.Swarm(url, seed=seed, task_seconds=0) as swarm:
        for _ in range(copies):
            swarm.spawn_all()
        swarm.run(demo_descriptions(200, seed + 1000), timeout=120)
        t0 = time.perf_counter()
        swarm.run(demo_descriptions(n, seed), timeout=300)
        return n / (time.perf_counter() - t0)


def runner_footprint(url: str) -> tuple[list[float], list[float], list[float]]:
    startup, rss, uss = [], [], []
    with timmy.Swarm(url, seed=1, task_seconds=0) as swarm:
        for pid in timmy.PERSONAS:
            t0 = time.perf_counter()
            swarm.spawn(pid)
            startup.append(time.perf_counter() - t0)
        swarm.run(demo_descriptions(500, 3), timeout=120)
        for agent in swarm.agents():
            info = psutil.Process(agent.pid).memory_full_info()
            rss.append(info.rss / 2**20)
            uss.append(info.uss / 2**20)
    return startup, rss, uss


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", type=int, default=1000)
    ap.add_argument("--history", default="0,100000,1000000")
    ap.add_argument("--runners", default="9,27,54")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for n_bids in (int(x) for x in args.history.split(",")):
            url = f"sqlite:///{Path(tmp) / f'hist{n_bids}.db'}"
            t0 = time.perf_counter()
            prefill(url, n_bids)
            fill = time.perf_counter() - t0
            rate = throughput(url, args.tasks)
            print(f"history {n_bids:>9,} bids (prefilled in {fill:.1f}s): {rate:,.0f} tasks/s")
        for runners in (int(x) for x in args.runners.split(",")):
            url = f"sqlite:///{Path(tmp) / f'runners{runners}.db'}"
            rate = throughput(url, args.tasks, copies=max(1, runners // 9))
            print(f"{runners:>3} runners: {rate:,.0f} tasks/s")
        startup, rss, uss = runner_footprint(f"sqlite:///{Path(tmp) / 'foot.db'}")
        med = statistics.median(startup) * 1000
        print(f"runner start-up (spawn -> hello): median {med:.0f} ms,"
              f" max {max(startup) * 1000:.0f} ms")
        print(f"runner memory: RSS median {statistics.median(rss):.1f} MB (max {max(rss):.1f}),"
              f" USS median {statistics.median(uss):.1f} MB")


if __name__ == "__main__":
    main()
