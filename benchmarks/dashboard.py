"""The dashboards: time from a page request to the first rendered swarm table in headless
Chromium, Voilà's kernel start included, for the desktop (1280×800) and the mobile (390×844)
page.

`timmy.ops.launcher.Dashboards` starts a real ``timmy serve`` (nine runners, a SQLite file in a
temporary directory, ``--tasks`` tasks run first so the tables have rows) and a real Voilà on
free loopback ports; Playwright drives the system's Chromium. Each load is a fresh browser
context (no cache, no cookie but the token), so each one starts a kernel, runs the notebook,
attaches to the service and draws.

- desktop: until the agents table shows a runner and the task table a task.
- mobile: until the status header shows the runners and the latest results a task.
- ``cold``: Voilà starts a kernel per request (``--preheat 0``).
- ``preheated``: as `timmy dashboards` runs it by default, with Voilà's pre-heated kernels
  (``--preheat_kernel``, a pool of one per notebook), which run the notebook before the
  request arrives; each load waits until the pool is full again (every kernel of Voilà
  holds its subscriber on the service), as a visitor arriving a few seconds later would.

Prints the median, min and max of ``--loads`` loads per page and mode.

    python benchmarks/dashboard.py [--loads 5] [--tasks 50] [--modes cold,preheated]
"""

from __future__ import annotations

import argparse
import socket
import statistics
import tempfile
import time
from pathlib import Path

import timmy
from timmy.ops.browser import launch
from timmy.ops.launcher import Dashboards, kernel_processes
from timmy.sim.workloads import demo_descriptions

ROOT = Path(__file__).resolve().parent.parent
PAGES = {
    "desktop": ({"width": 1280, "height": 800}, False,
                ".timmy-agents td:text-is('forge-1')", ".timmy-tasks td:text-is('1')"),
    "mobile": ({"width": 390, "height": 844}, True,
               ".timmy-header :text('9 runners')", ".timmy-results b:text-matches('^#[0-9]+$')"),
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pool_full(dash: Dashboards, swarm, timeout: float = 120.0) -> None:
    """Until every kernel of Voilà has run its notebook (holds a subscriber), for 2 s."""
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        seen.append((len(kernel_processes(dash.voila.pid)),
                     swarm.status()["service"]["subscribers"]))
        if len(seen) >= 5 and len(set(seen[-5:])) == 1 and seen[-1][0] == seen[-1][1]:
            return
        time.sleep(0.5)
    raise RuntimeError(f"the kernel pool did not fill in {timeout:.0f}s: {seen[-1]}")


def load_times(browser, url: str, kind: str, loads: int, ready=None) -> list[float]:
    viewport, mobile, first, second = PAGES[kind]
    times = []
    for _ in range(loads):
        if ready is not None:
            ready()
        ctx = browser.new_context(viewport=viewport, is_mobile=mobile, has_touch=mobile)
        page = ctx.new_page()
        t0 = time.perf_counter()
        page.goto(url)
        page.wait_for_selector(first, timeout=120_000)
        page.wait_for_selector(second, timeout=120_000)
        times.append(time.perf_counter() - t0)
        ctx.close()
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--loads", type=int, default=5)
    ap.add_argument("--tasks", type=int, default=50)
    ap.add_argument("--modes", default="cold,preheated",
                    help="comma-separated: cold, preheated")
    args = ap.parse_args()
    for mode in args.modes.split(","):
        run_mode(mode.strip(), args.loads, args.tasks)


def run_mode(mode: str, loads: int, tasks: int) -> None:
    from playwright.sync_api import sync_playwright

    preheat = {"cold": 0, "preheated": 1}[mode]
    with tempfile.TemporaryDirectory() as tmp:
        dash = Dashboards(f"sqlite:///{Path(tmp) / 'swarm.db'}", ROOT / "dashboards", port=0,
                          voila_port=free_port(), preheat=preheat,
                          serve_args=("--task-seconds", "0", "--seed", "1"),
                          echo=lambda line: None)
        t0 = time.perf_counter()
        running = dash.start()
        print(f"{mode}: service + Voilà up in {time.perf_counter() - t0:.2f}s", flush=True)
        try:
            with timmy.Swarm.attach(running.service_url, token=dash._service_token()) as swarm:
                swarm.run(demo_descriptions(tasks, 1), timeout=60)
                with sync_playwright() as p:
                    browser = launch(p)
                    for kind in PAGES:
                        url = running.desktop_url if kind == "desktop" else running.mobile_url
                        times = load_times(browser, url, kind, loads,
                                           ready=lambda: pool_full(dash, swarm))
                        print(f"{mode:9} {kind:8} request -> first swarm table: median "
                              f"{statistics.median(times):.2f}s (min {min(times):.2f}s, "
                              f"max {max(times):.2f}s, {len(times)} loads)", flush=True)
                    browser.close()
        finally:
            dash.stop()


if __name__ == "__main__":
    main()
