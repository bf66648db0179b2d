"""A dashboard soak: the service's and Voilà's RSS while a page is reloaded every few seconds
over a swarm under steady load (their slopes must be flat).

`timmy.launcher.Dashboards` starts a real ``timmy serve`` (a SQLite file in a temporary
directory) and a real Voilà; a backlog of about 100 tasks is kept topped up through an
attached client; headless Chromium reloads the desktop page every ``--reload`` seconds (each
reload ends the old page's kernel and starts a new one), and every ``--sample`` seconds the
RSS of the service and of Voilà with all its kernels is sampled. Prints both at start, peak
and end, the least-squares slope over the second half in MB per hour, and the number of
kernels alive at the end (closed pages' kernels must not pile up).

    python benchmarks/dashboard_soak.py [--minutes 10] [--reload 10] [--sample 30]

The issue's figure: ``--minutes 60``.
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
from timmy.browser import launch
from timmy.launcher import Dashboards
from timmy.workload import demo_descriptions

ROOT = Path(__file__).resolve().parent.parent
WAITING = ("queued", "bidding", "assigned", "running")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tree_rss_mb(proc: psutil.Process) -> tuple[float, int]:
    """RSS of a process and all its descendants in MB, and how many descendants there are."""
    total, children = proc.memory_info().rss, proc.children(recursive=True)
    for child in children:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += child.memory_info().rss
    return total / 1e6, len(children)


def slope_mb_per_hour(samples: list[tuple[float, float]]) -> float:
    """Least-squares slope over the second half of the samples (after warm-up)."""
    half = [s for s in samples if s[0] >= samples[-1][0] / 2]
    if len(half) < 2:
        return float("nan")
    return statistics.linear_regression([t / 3600 for t, _ in half],
                                        [mb for _, mb in half]).slope


def describe(name: str, samples: list[tuple[float, float]]) -> str:
    peak = max(mb for _, mb in samples)
    return (f"{name}: {samples[0][1]:.1f} MB at start, {peak:.1f} MB peak, "
            f"{samples[-1][1]:.1f} MB at the end; slope over the second half "
            f"{slope_mb_per_hour(samples):+.2f} MB/hour")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--reload", type=float, default=10.0, help="seconds between page reloads")
    ap.add_argument("--sample", type=float, default=30.0, help="seconds between RSS samples")
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        dash = Dashboards(f"sqlite:///{Path(tmp) / 'swarm.db'}", ROOT / "dashboards", port=0,
                          voila_port=free_port(), log_dir=Path(tmp),
                          serve_args=("--task-seconds", "0.02", "--seed", "3"),
                          echo=lambda line: None)
        running = dash.start()
        service = psutil.Process(running.service_pid)
        voila = psutil.Process(running.voila_pid)
        svc_rss: list[tuple[float, float]] = []
        voila_rss: list[tuple[float, float]] = []
        posted = reloads = kernels = 0
        try:
            with timmy.Swarm.attach(running.service_url, token=dash._service_token()) as swarm, \
                    sync_playwright() as p:
                browser = launch(p)
                page = browser.new_context(viewport={"width": 1280, "height": 800}).new_page()
                page.goto(running.desktop_url)
                t0 = time.monotonic()
                next_reload = next_sample = t0
                with tqdm(total=round(args.minutes * 60), unit="s", desc="dashboard soak") as bar:
                    while (now := time.monotonic()) - t0 < args.minutes * 60:
                        counts = swarm.status()["tasks"]
                        if sum(counts.get(s, 0) for s in WAITING) < 50:
                            swarm.post_many(demo_descriptions(100, posted))
                            posted += 100
                        if now >= next_reload:
                            page.reload(wait_until="domcontentloaded")
                            reloads += 1
                            next_reload = now + args.reload
                        if now >= next_sample:
                            svc_rss.append((now - t0, service.memory_info().rss / 1e6))
                            mb, kernels = tree_rss_mb(voila)
                            voila_rss.append((now - t0, mb))
                            next_sample = now + args.sample
                        bar.update(round(time.monotonic() - t0) - bar.n)
                        time.sleep(0.2)
                browser.close()
        finally:
            dash.stop()
    print(f"dashboard soak: {args.minutes:g} min, {posted:,} tasks posted, {reloads} page "
          f"reloads, {len(svc_rss)} RSS samples")
    print(describe("service RSS", svc_rss))
    print(describe("Voilà + kernels RSS", voila_rss))
    print(f"Voilà's child processes at the last sample: {kernels}")


if __name__ == "__main__":
    main()
