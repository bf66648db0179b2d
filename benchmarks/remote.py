"""Throughput with nine runners over TCP (``timmy runner --connect``) vs nine over pipes.

Both through a real ``timmy serve`` subprocess on a loopback port with a SQLite file in a
temporary directory, the simulated executor with zero task time:

- pipes: ``timmy serve`` spawns the nine personas as its own children (stdin/stdout pipes);
- tcp: ``timmy serve --no-spawn`` and nine ``timmy runner --connect`` processes, one per
  persona, that dial in over loopback TCP.

Each run: a fresh database, ``--warmup`` tasks, then ``--tasks`` tasks posted at once with
one ``run`` request and timed until all are finished; median of ``--runs`` runs each. The
ratio says what the socket costs over the pipe (the wire protocol is the same).

    python benchmarks/remote.py [--tasks 1000] [--warmup 200] [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import timmy
from timmy.market.personas import PERSONAS
from timmy.ops.chaos import Service
from timmy.sim.workloads import demo_descriptions


def one_run(tmp: Path, over: str, n: int, warmup: int, seed: int) -> float:
    service = Service(tmp / f"{over}-{seed}.db", "benchmark",
                      ["--task-seconds", "0", "--seed", "1",
                       "--spawn" if over == "pipes" else "--no-spawn"])
    service.start()
    url, token = service.url, service.token()
    runners: list[subprocess.Popen] = []
    try:
        if over == "tcp":
            env = {**os.environ, "TIMMY_TOKEN": token}   # not in argv, where ps shows it
            runners = [subprocess.Popen([sys.executable, "-m", "timmy", "runner", "--connect",
                                         url, "--persona", persona], env=env,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                       for persona in PERSONAS]
        with timmy.Swarm.attach(url, token=token) as swarm:
            deadline = time.monotonic() + 60
            while swarm.status()["runners_live"] < len(PERSONAS):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{over}: the nine runners did not join in 60s")
                time.sleep(0.05)
            if warmup:
                swarm.run(demo_descriptions(warmup, seed + 1000), timeout=120)
            work = demo_descriptions(n, seed)
            t0 = time.perf_counter()
            done = swarm.run(work, timeout=300)
            elapsed = time.perf_counter() - t0
            lost = sum(t.status not in ("completed", "failed") for t in done)
            assert lost == 0, f"{lost} tasks unfinished"
            if over == "tcp":
                assert swarm.status()["runners_remote"] == len(PERSONAS)
    finally:
        for r in runners:
            r.send_signal(signal.SIGTERM)
        service.stop()
        for r in runners:
            r.wait(timeout=30)
    return n / elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", type=int, default=1000)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    medians = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.runs):        # interleaved, so a noisy moment hits both
            for over in ("pipes", "tcp"):
                rate = one_run(Path(tmp), over, args.tasks, args.warmup, seed=i + 1)
                medians.setdefault(over, []).append(rate)
                print(f"run {i + 1} {over:>5}: {rate:,.0f} tasks/s")
    for over, rates in medians.items():
        print(f"{over:>5}: median {statistics.median(rates):,.0f} tasks/s over {args.runs} runs "
              f"of {args.tasks} tasks, 9 runners (min {min(rates):,.0f}, max {max(rates):,.0f})")
    ratio = statistics.median(medians["tcp"]) / statistics.median(medians["pipes"])
    print(f"tcp/pipes: {ratio:.2f}")


if __name__ == "__main__":
    main()
