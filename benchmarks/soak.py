"""Chaos soak figures: tasks/s and lost / duplicated counts while runners and the service are
SIGKILLed, and the coordinator's RSS over a long soak (its slope must be flat).

1. ``--tasks`` tasks through `timmy.ops.chaos.soak`: runners SIGKILLed every ~200 ms, the
   service SIGKILLed and restarted twice; prints tasks/s, how tasks ended, lost or
   duplicated tasks and orphan processes (from the audit of the store). ``--stall 40``
   also SIGSTOPs the service for 40 s halfway through and prints what that cost (it must
   be no attempt and no runner).
2. ``--minutes`` of steady load on one ``timmy serve`` (no service kills, so one
   coordinator process lives throughout): a backlog of about 200 tasks kept topped up,
   a runner SIGKILLed every ~``--kill-every`` s (0.2); the service's RSS sampled every ``--sample``
   seconds. Prints the RSS at start and end, and the least-squares slope over the
   second half of the run (after warm-up) in MB per hour. The issue's 1-hour figure:
   ``--minutes 60``.

    python benchmarks/soak.py [--tasks 2000] [--minutes 2] [--sample 5]
"""

from __future__ import annotations

import argparse
import random
import signal
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import psutil

import timmy
from timmy.engine.procid import signal_if
from timmy.ops.chaos import Service, audit, marked_processes, soak
from timmy.sim.workloads import demo_descriptions


def chaos_figures(n: int, stall: float = 0.0) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        report = soak(Path(tmp) / "soak.db", demo_descriptions(n, 5), kill_every=0.2,
                      service_kills=2, task_seconds=0.02, seed=5, progress=True, stall=stall,
                      timeout=600 + stall)
    for line in report.lines():
        print(line)


def rss_figures(minutes: float, sample: float, kill_every: float = 0.2) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "rss.db"
        marker = uuid.uuid4().hex
        service = Service(db, marker, ["--task-seconds", "0.02", "--seed", "9",
                                       "--max-restarts", "1000000"])
        service.start()
        proc = psutil.Process(service.proc.pid)
        rng = random.Random(9)
        posted, kills, samples = [], 0, []
        swarm = timmy.Swarm.attach(service.url, token=service.token())
        t0 = time.monotonic()
        next_sample = next_kill = t0
        try:
            while (now := time.monotonic()) - t0 < minutes * 60:
                counts = swarm.status()["tasks"]
                waiting = sum(counts.get(s, 0) for s in ("queued", "bidding", "assigned",
                                                          "running"))
                if waiting < 100:
                    batch = demo_descriptions(200, len(posted))
                    swarm.post_many(batch)
                    posted += batch
                if now >= next_kill:
                    live = [a.pid for a in swarm.agents() if a.pid and a.status in
                            ("idle", "busy")]
                    if live and signal_if(rng.choice(live), signal.SIGKILL, "TIMMY_SOAK",
                                          marker):   # a runner of this soak, nobody else
                        kills += 1
                    next_kill = now + kill_every * rng.uniform(0.5, 1.5)
                if now >= next_sample:
                    samples.append((now - t0, proc.memory_info().rss / 1e6))
                    next_sample = now + sample
                time.sleep(0.05)
            wait_until = time.monotonic() + 120
            while time.monotonic() < wait_until:
                counts = swarm.status()["tasks"]
                if not sum(counts.get(s, 0) for s in ("queued", "bidding", "assigned",
                                                       "running")):
                    break
                time.sleep(0.2)
        finally:
            swarm.close()
            service.stop()
        result = audit(db, posted)
        orphans = marked_processes(marker)
    half = [s for s in samples if s[0] >= samples[-1][0] / 2]
    xs, ys = [s[0] / 3600 for s in half], [s[1] for s in half]
    slope = statistics.linear_regression(xs, ys).slope if len(half) >= 2 else float("nan")
    print(f"steady soak: {minutes:g} min, {len(posted):,} tasks, {kills} runner SIGKILLs, "
          f"{len(samples)} RSS samples")
    print(f"coordinator RSS: {samples[0][1]:.1f} MB at start, {max(ys):.1f} MB peak and "
          f"{samples[-1][1]:.1f} MB at the end of the second half; slope over the second "
          f"half {slope:+.2f} MB/hour")
    step = max(1, len(samples) // 10)
    print("RSS over the run: " + ", ".join(f"{t / 60:.0f} min {mb:.1f} MB"
                                           for t, mb in samples[::step] + samples[-1:]))
    print(f"audit: {result.by_status}; problems {len(result.problems)}; orphan processes "
          f"{len(orphans)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", type=int, default=2000)
    ap.add_argument("--minutes", type=float, default=2.0)
    ap.add_argument("--sample", type=float, default=5.0)
    ap.add_argument("--kill-every", type=float, default=0.2,
                    help="seconds between runner SIGKILLs in the steady soak")
    ap.add_argument("--skip-chaos", action="store_true", help="only the steady soak")
    ap.add_argument("--stall", type=float, default=0.0, metavar="SECONDS",
                    help="SIGSTOP the service this long halfway through the chaos soak")
    ap.add_argument("--skip-steady", action="store_true", help="only the chaos soak")
    args = ap.parse_args()
    if not args.skip_chaos:
        chaos_figures(args.tasks, args.stall)
    if args.skip_steady:
        return
    rss_figures(args.minutes, args.sample, args.kill_every)


if __name__ == "__main__":
    main()
