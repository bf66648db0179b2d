"""The dashboards against a trivial page: time from a page request to the first rendered swarm
table and to the first chart in headless Chromium, for the desktop (1280×800) and the mobile
(390×844) page, each beside a trivial one-table Voilà page served by the same Voilà in the
same run; the ratio page / trivial is what the dashboards cost over Voilà itself.

`timmy.ops.launcher.Dashboards` starts a real ``timmy serve`` (nine runners, a SQLite file in a
temporary directory, ``--tasks`` tasks run first so the tables and charts have data) and a real
Voilà on free loopback ports, over a temporary folder holding copies of ``dashboards/``'s two
notebooks and ``trivial.ipynb`` (written here: one ipywidgets HTML table, nothing of timmy).
Playwright drives the system's Chromium. Each load is a fresh browser context (no cache, no
cookie but the token). A script in the page stamps, at every animation frame, the first moment
each probe holds, counted from the navigation's start (``performance.now()``), so the table and
the chart are timed in the same load whichever draws first:

- desktop table: the agents table shows a runner and the task table a task;
  desktop chart: a bqplot chart (``.timmy-market-charts .timmy-chart``) has drawn a data
  point or bar (a legend's marker does not count).
- mobile table: the status header shows the runners and the latest results a task;
  mobile chart: the price chart (``.timmy-price-chart``) has drawn a bar.
- trivial table: the last cell of its table (loaded at each page's viewport, alternating with
  that page's loads).
- ``preheated`` (the default): as `timmy dashboards` runs it, with Voilà's pre-heated kernels
  (``--preheat_kernel``, a pool of one per notebook, the trivial one included), which run the
  notebook before the request arrives; each load waits until the pool is full again (every
  dashboard kernel holds its subscriber on the service, every trivial kernel has run), as a
  visitor arriving a few seconds later would.
- ``cold``: Voilà starts a kernel per request (``--preheat 0``).

Prints the median, min and max of ``--loads`` loads per page and mode, and the ratio of the
medians to the trivial page's table.

    python benchmarks/dashboard.py [--loads 5] [--tasks 50] [--modes preheated|cold,preheated]
"""

from __future__ import annotations

import argparse
import json
import shutil
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
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
TIMEOUT = 120_000   # ms

# JavaScript predicates, true once the page shows what is timed.
PROBES = {
    "desktop": {
        "table": "has('.timmy-agents td', /^forge-1$/) && has('.timmy-tasks td', /^1$/)",
        "chart": "[...document.querySelectorAll('.timmy-market-charts .timmy-chart .dot, "
                 ".timmy-market-charts .timmy-chart .bar')].some(e => !e.closest('.g_legend'))",
    },
    "mobile": {
        "table": "has('.timmy-header', /9 runners/) && has('.timmy-results b', /^#[0-9]+$/)",
        "chart": "!!document.querySelector('.timmy-price-chart svg rect[fill=\"#1565c0\"]')",
    },
    "trivial": {"table": "has('.timmy-trivial td', /^row 9 c$/)"},
}

STAMPS = """(() => {
  if (window !== window.top) return;
  const first = window.__timmyFirst = {};
  const has = (sel, re) => [...document.querySelectorAll(sel)]
      .some(e => re.test(e.textContent.trim()));
  const probes = {%s};
  const tick = () => {
    for (const [name, holds] of Object.entries(probes)) {
      if (!(name in first)) { try { if (holds()) first[name] = performance.now(); } catch (e) {} }
    }
    if (Object.keys(first).length < Object.keys(probes).length) requestAnimationFrame(tick);
  };
  requestAnimationFrame(tick);
})();"""


def trivial_notebook(marks: Path) -> dict:
    """One ipywidgets HTML table; the kernel leaves its pid in ``marks`` (for `pool_full`)."""
    head = "<table><tr><th>a</th><th>b</th><th>c</th></tr>"
    rows = "".join(f"<tr><td>row {i}</td><td>{i * 7}</td><td>row {i} c</td></tr>"
                   for i in range(10))
    source = ("import os\n"
              "import ipywidgets as w\n"
              f"open(os.path.join({str(marks)!r}, str(os.getpid())), 'w').close()\n"
              f"table = w.HTML({head + rows + '</table>'!r})\n"
              "table.add_class('timmy-trivial')\n"
              "table")
    return {"cells": [{"cell_type": "code", "execution_count": None, "id": "trivial",
                       "metadata": {}, "outputs": [], "source": source}],
            "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python",
                                        "name": "python3"},
                         "language_info": {"name": "python"}},
            "nbformat": 4, "nbformat_minor": 5}


def notebooks(folder: Path) -> Path:
    """``folder`` with the two dashboards and the trivial page, and ``folder/marks``."""
    (folder / "marks").mkdir(parents=True)
    for name in ("desktop.ipynb", "mobile.ipynb"):
        shutil.copy(ROOT / "dashboards" / name, folder / name)
    (folder / "trivial.ipynb").write_text(json.dumps(trivial_notebook(folder / "marks")))
    return folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pool_full(dash: Dashboards, swarm, marks: Path, timeout: float = 120.0) -> None:
    """Until every kernel of Voilà has run its notebook, for 2 s: each dashboard kernel holds
    a subscriber on the service, each trivial kernel has left its pid in ``marks``."""
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        pids = [k.pid for k in kernel_processes(dash.voila.pid)]
        trivial = sum((marks / str(pid)).exists() for pid in pids)
        seen.append((len(pids), trivial, swarm.status()["service"]["subscribers"]))
        if len(seen) >= 5 and len(set(seen[-5:])) == 1 and seen[-1][0] == sum(seen[-1][1:]):
            return
        time.sleep(0.5)
    raise RuntimeError(f"the kernel pool did not fill in {timeout:.0f}s "
                       f"(kernels, trivial ones, subscribers): {seen[-1]}")


def load(browser, url: str, probes: dict[str, str], viewport: dict) -> dict[str, float]:
    """One load in a fresh context: seconds from the request to each probe holding."""
    mobile = viewport is PHONE
    ctx = browser.new_context(viewport=viewport, is_mobile=mobile, has_touch=mobile)
    try:
        ctx.add_init_script(STAMPS % ", ".join(f"{name}: () => ({js})"
                                               for name, js in probes.items()))
        page = ctx.new_page()
        page.goto(url, timeout=TIMEOUT)
        page.wait_for_function("n => Object.keys(window.__timmyFirst || {}).length === n",
                               arg=len(probes), timeout=TIMEOUT)
        return {name: ms / 1000 for name, ms in page.evaluate("window.__timmyFirst").items()}
    finally:
        ctx.close()


def line(mode: str, kind: str, what: str, times: list[float], base: float | None) -> str:
    median = statistics.median(times)
    ratio = f"; {median / base:.2f}x the trivial page" if base else ""
    return (f"{mode:9} {kind:8} request -> {what}: median {median:.2f}s (min {min(times):.2f}s, "
            f"max {max(times):.2f}s, {len(times)} loads){ratio}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--loads", type=int, default=5)
    ap.add_argument("--tasks", type=int, default=50)
    ap.add_argument("--modes", default="preheated",
                    help="comma-separated: preheated (the default), cold")
    args = ap.parse_args()
    for mode in args.modes.split(","):
        run_mode(mode.strip(), args.loads, args.tasks)


def run_mode(mode: str, loads: int, tasks: int) -> None:
    from playwright.sync_api import sync_playwright

    preheat = {"cold": 0, "preheated": 1}[mode]
    with tempfile.TemporaryDirectory() as tmp:
        folder = notebooks(Path(tmp) / "notebooks")
        dash = Dashboards(f"sqlite:///{Path(tmp) / 'swarm.db'}", folder, port=0,
                          voila_port=free_port(), preheat=preheat,
                          serve_args=("--task-seconds", "0", "--seed", "1"),
                          echo=lambda line: None)
        t0 = time.perf_counter()
        running = dash.start()
        print(f"{mode}: service + Voilà up in {time.perf_counter() - t0:.2f}s", flush=True)
        trivial_url = running.desktop_url.replace("/desktop.ipynb", "/trivial.ipynb")
        try:
            with timmy.Swarm.attach(running.service_url, token=dash._service_token()) as swarm:
                swarm.run(demo_descriptions(tasks, 1), timeout=60)
                with sync_playwright() as p:
                    browser = launch(p)
                    for kind, url, viewport in (("desktop", running.desktop_url, DESKTOP),
                                                ("mobile", running.mobile_url, PHONE)):
                        page: dict[str, list[float]] = {"table": [], "chart": []}
                        trivial: list[float] = []
                        for _ in range(loads):   # alternating, so drift hits both alike
                            pool_full(dash, swarm, folder / "marks")
                            trivial.append(load(browser, trivial_url, PROBES["trivial"],
                                                viewport)["table"])
                            pool_full(dash, swarm, folder / "marks")
                            for name, t in load(browser, url, PROBES[kind], viewport).items():
                                page[name].append(t)
                        base = statistics.median(trivial)
                        print(line(mode, "trivial", f"its table ({kind} size)", trivial, None),
                              flush=True)
                        print(line(mode, kind, "first swarm table", page["table"], base),
                              flush=True)
                        print(line(mode, kind, "first chart", page["chart"], base), flush=True)
                    browser.close()
        finally:
            dash.stop()


if __name__ == "__main__":
    main()
