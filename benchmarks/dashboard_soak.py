"""A dashboard left open and reloaded for a long time: is memory flat?

`timmy.ops.launcher.Dashboards` (as `timmy dashboards` runs it: pre-heated kernels, kernels
of closed pages culled) with nine runners kept busy; headless Chromium reloads the
desktop page every ``--reload`` seconds (each reload is a new kernel; the old page's
kernel is culled about a minute later). Every ``--sample`` seconds: the RSS of the
service, of Voilà, of all Voilà's kernels together, the kernel count and the service's
subscriber count. Prints the least-squares slope (MB/hour) of each RSS over the run after
the first ``--warmup`` minutes, and the counts' ranges.

    python benchmarks/dashboard_soak.py [--minutes 60] [--reload 10] [--sample 10] [--rate 10]
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import statistics
import tempfile
import time
from pathlib import Path

import psutil
from tqdm import tqdm

import timmy
from timmy.ops.browser import launch
from timmy.ops.launcher import Dashboards, kernel_processes
from timmy.sim.workloads import demo_descriptions

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kernel_rss(voila_pid: int) -> tuple[float, int]:
    """The RSS (MB) of Voilà's live kernels together, and how many there are."""
    total, ks = 0, kernel_processes(voila_pid)
    for k in ks:
        with contextlib.suppress(psutil.Error):   # culled while it is read
            total += k.memory_info().rss
    return total / 1e6, len(ks)


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MB) in MB/hour."""
    if len(points) < 2:
        return 0.0
    return statistics.linear_regression([t / 3600 for t, _ in points],
                                        [v for _, v in points]).slope


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=60.0)
    ap.add_argument("--reload", type=float, default=10.0)
    ap.add_argument("--sample", type=float, default=10.0)
    ap.add_argument("--rate", type=int, default=10, help="tasks posted a second")
    ap.add_argument("--warmup", type=float, default=3.0, help="minutes left out of the slopes")
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        dash = Dashboards(f"sqlite:///{Path(tmp) / 'swarm.db'}", ROOT / "dashboards", port=0,
                          voila_port=free_port(), serve_args=("--task-seconds", "0.05"),
                          echo=lambda line: None)
        running = dash.start()
        service, voila = psutil.Process(dash.service.pid), psutil.Process(dash.voila.pid)
        rows: list[tuple[float, float, float, float, int, int]] = []
        try:
            with timmy.Swarm.attach(running.service_url, token=dash._service_token()) as swarm, \
                    sync_playwright() as p:
                browser = launch(p)
                page = browser.new_context(viewport={"width": 1280, "height": 800}).new_page()
                page.goto(running.desktop_url)
                t0 = time.monotonic()
                next_reload = next_sample = next_post = t0
                posted = 0
                bar = tqdm(total=int(args.minutes * 60), unit="s", desc="dashboard soak")
                while (now := time.monotonic()) - t0 < args.minutes * 60:
                    if args.rate and now >= next_post:   # about --rate tasks a second
                        swarm.post_many(demo_descriptions(args.rate, posted))
                        posted += args.rate
                        next_post = now + 1.0
                    if now >= next_reload:
                        page.reload()
                        page.wait_for_selector(".timmy-header", timeout=120_000)
                        next_reload = now + args.reload
                    if now >= next_sample:
                        kernels_mb, kernels_n = kernel_rss(voila.pid)
                        rows.append((now - t0, service.memory_info().rss / 1e6,
                                     voila.memory_info().rss / 1e6, kernels_mb, kernels_n,
                                     swarm.status()["service"]["subscribers"]))
                        next_sample = now + args.sample
                    bar.update(int(now - t0) - bar.n)
                    time.sleep(0.2)
                bar.close()
                browser.close()
        finally:
            dash.stop()
    late = [r for r in rows if r[0] >= args.warmup * 60] or rows
    print(f"{args.minutes:g} min, a reload every {args.reload:g} s, {posted} tasks posted, "
          f"{len(rows)} samples ({len(late)} after the {args.warmup:g}-minute warm-up)")
    for i, name in ((1, "service"), (2, "Voilà"), (3, "kernels (sum)")):
        values = [r[i] for r in late]
        print(f"{name:14} RSS {min(values):7.1f}..{max(values):7.1f} MB, slope "
              f"{slope([(r[0], r[i]) for r in late]):+8.1f} MB/hour")
    print(f"kernels {min(r[4] for r in late)}..{max(r[4] for r in late)}, "
          f"subscribers {min(r[5] for r in late)}..{max(r[5] for r in late)}")


if __name__ == "__main__":
    main()
