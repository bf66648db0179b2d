"""History size against the service: RSS, status(), tasks() and a dashboard's load, per size.

For each size (events of stored history: 0, 1M and 10M by default) a SQLite file
is filled straight through SQL with timmy's schema: 1 task per 10 events, 9 bids
per task (one per built-in persona, one won), all finished. The file is cached
under ``--cache`` (default /tmp) and reused by later runs. Then a real ``timmy
serve`` (nine runners) is started on it, runs `WARM_TASKS` tasks (so that even
on the empty store every page is full), and, through `timmy.Swarm.attach`:

- the service's RSS after the measurements, and its peak (VmHWM);
- ``status()`` and ``tasks()`` (the default page) latency, medians over repeats;
- a dashboard page's initial load: `timmy.widgets.page.Page("desktop")`, what the
  Voilà page builds (attach, the desktop console's snapshot, the inspector), timed
  in this process without Voilà or a browser;
- the longest ``ping`` a second client saw meanwhile (the event loop's worst stall).

The services of all sizes run at once and are measured in interleaved rounds, so the
noise of a shared machine falls on every size alike.

Each figure is printed against the empty store's as a ratio (flat history: ~1.0).

    python benchmarks/history.py [--sizes 0,1000000,10000000] [--repeats 30]
"""

from __future__ import annotations

import argparse
import os
import re
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import timmy
from timmy.paging import DEFAULT_LIMIT
from timmy.storage.store import Store

LISTENING = re.compile(r"listening on (tcp://[\d.]+:\d+)")
PERSONAS = ("echo", "mace", "helm", "seer", "forge", "quill", "pixel", "lyra", "reel")
KINDS = ("task_posted", "auction_opened", "bid", "bid", "bid", "auction_closed",
         "task_assigned", "task_started", "task_completed", "bid")
CHUNK = 200_000
WARM_TASKS = DEFAULT_LIMIT + 100


def build(path: Path, n_events: int) -> float:
    """Fill ``path`` (once: cached) with ``n_events`` events of history; seconds spent."""
    done = Path(f"{path}.built")
    if done.exists() and n_events:       # the empty store is made afresh (each run adds tasks)
        return 0.0
    from tqdm import tqdm

    t0 = time.perf_counter()
    for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm"), Path(f"{path}.token")):
        p.unlink(missing_ok=True)
    url = f"sqlite:///{path}"
    Store(url).dispose()                         # timmy's schema
    n_tasks, per_task = n_events // 10, 9
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=OFF")
    conn.execute("PRAGMA synchronous=OFF")
    indexes = [r[0] for r in conn.execute(
        "SELECT name FROM sqlite_master WHERE type='index' AND name LIKE 'ix_%'")]
    for name in indexes:                         # faster without; Store() puts them back
        conn.execute(f"DROP INDEX {name}")
    now = time.time() - n_tasks * 0.01
    bar = tqdm(total=n_tasks * (1 + per_task) + n_events, desc=f"building {path.name}",
               unit="row", unit_scale=True)

    def chunks(total: int, row):
        for start in range(0, total, CHUNK):
            rows = [row(i) for i in range(start, min(start + CHUNK, total))]
            yield rows
            bar.update(len(rows))

    for rows in chunks(n_tasks, lambda i: (
            i + 1, f"history task {i + 1}: fix the bug in module {i % 977}", "completed",
            f"{PERSONAS[i % 9]}-1", 20 + i % 50, 1, "done", None, now + i * 0.01,
            now + i * 0.01, now + i * 0.01 + 0.005)):
        conn.executemany("INSERT INTO tasks VALUES (?,?,?,?,?,?,?,?,?,?,?)", rows)
    for rows in chunks(n_tasks * per_task, lambda b: (
            b + 1, b // per_task + 1, 1, (b // per_task) * 10 + 2, f"{PERSONAS[b % 9]}-1",
            20 + b % 50, b % 9 == 4, b % 9 == (b // per_task) % 9, "specialist_first",
            now + b // per_task * 0.01)):
        conn.executemany("INSERT INTO bids VALUES (?,?,?,?,?,?,?,?,?,?)", rows)
    for rows in chunks(n_events, lambda e: (
            e + 1, now + e * 0.001, KINDS[e % 10], e // 10 + 1, f"{PERSONAS[e % 9]}-1",
            '{"price_sats": 30, "attempt": 1}')):
        conn.executemany("INSERT INTO events VALUES (?,?,?,?,?,?)", rows)
    conn.executemany("INSERT INTO agents VALUES (?,?,?,?,?,?,?,?,?)",
                     [(f"{p}-1", p, p, None, "stopped", 0, n_tasks // 9, 0, now)
                      for p in PERSONAS])
    conn.commit()
    conn.close()
    bar.close()
    Store(url).dispose()                         # the migration creates the indexes
    done.touch()
    return time.perf_counter() - t0


def rss_mb(pid: int) -> tuple[float, float]:
    """(current RSS, peak RSS) of ``pid`` in MB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text()
                  .splitlines() if ":" in line)
    return (int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024)


class Served:
    """One ``timmy serve`` on one database, a client, and a second client that pings."""

    def __init__(self, path: Path) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "timmy", "serve", "--db", str(path), "--port", "0",
             "--task-seconds", "0", "--seed", "1"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
        self.url = None
        deadline = time.monotonic() + 600
        while self.url is None and time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise SystemExit(f"timmy serve on {path} ended before listening")
            if m := LISTENING.search(line):
                self.url = m.group(1)
        self.start_s = time.perf_counter() - t0
        threading.Thread(target=self.proc.stdout.read, daemon=True).start()   # kept drained
        self.token = Path(f"{path}.token").read_text().strip()
        self.swarm = timmy.Swarm.attach(self.url, token=self.token)
        self.times: dict[str, list[float]] = {}
        self.worst_ping = 0.0
        self._stop = threading.Event()
        self._pinger = threading.Thread(target=self._ping, daemon=True)

    def _ping(self) -> None:
        with timmy.Swarm.attach(self.url, token=self.token) as other:
            while not self._stop.is_set():
                t = time.perf_counter()
                other.ping()
                self.worst_ping = max(self.worst_ping, time.perf_counter() - t)
                self._stop.wait(0.005)

    def warm(self, n: int) -> None:
        """This service's own tasks first, at every size (``n`` > a page: the pages then
        hold as many rows whatever the history, and only its size differs)."""
        self.swarm.run([f"fix the bug in parser {i}" for i in range(n)], timeout=600)
        self._pinger.start()

    def time(self, name: str, fn) -> None:
        t = time.perf_counter()
        fn()
        self.times.setdefault(name, []).append(time.perf_counter() - t)

    def load_page(self) -> None:
        """What a desktop dashboard page builds: attach, the console's snapshot, the
        inspector (`timmy.widgets.page.Page`), without Voilà or a browser."""
        from timmy.widgets.page import Page

        page = Page("desktop", self.url, self.token, 1.0)
        assert page.console is not None, "the page did not attach"
        client = page.console.console.swarm
        page.console.close()
        client.close()

    def figures(self) -> dict:
        self._stop.set()
        self._pinger.join(timeout=10)
        rss, peak = rss_mb(self.proc.pid)
        out = {k: statistics.median(v) * 1000 for k, v in self.times.items()}
        return {"start_s": self.start_s, "rss": rss, "peak": peak,
                "ping": self.worst_ping * 1000, **out}

    def close(self) -> None:
        self._stop.set()
        self.swarm.close()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def measure(paths: list[Path], repeats: int, warm: int) -> list[dict]:
    """Every size's service up at once, measured in interleaved rounds: the noise of a
    shared machine then falls on every size alike."""
    served: list[Served] = []
    try:
        for path in paths:
            served.append(Served(path))
            served[-1].warm(warm)
        for r in range(repeats):
            for s in served:
                s.time("status", s.swarm.status)
                s.time("tasks", s.swarm.tasks)
                s.time("events", s.swarm.events)
                if r % 6 == 0:
                    s.time("page", s.load_page)
        return [s.figures() for s in served]
    finally:
        for s in served:
            s.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="0,1000000,10000000",
                    help="events of stored history, comma-separated (the first is the base)")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--cache", default="/tmp", help="where the filled databases are kept")
    ap.add_argument("--warm", type=int, default=WARM_TASKS,
                    help="tasks the service runs before the measurements")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    paths = []
    for n in sizes:
        path = Path(args.cache) / f"timmy-history-{n}.db"
        built = build(path, n)
        size_mb = path.stat().st_size / 1e6
        print(f"{n:>12,} events: {size_mb:,.0f} MB database"
              + (f" (built in {built:.0f}s)" if built else " (cached)"), flush=True)
        paths.append(path)
    rows = list(zip(sizes, measure(paths, args.repeats, args.warm), strict=True))
    base = rows[0][1]
    cols = (("rss", "RSS MB"), ("peak", "peak RSS MB"), ("status", "status() ms"),
            ("tasks", "tasks() ms"), ("events", "events() ms"), ("page", "page load ms"),
            ("ping", "worst ping ms"), ("start_s", "start s"))
    print(f"\n{'events':>12} " + " ".join(f"{title:>18}" for _, title in cols))
    for n, r in rows:
        cells = []
        for key, _ in cols:
            ratio = r[key] / base[key] if base[key] else float("nan")
            cells.append(f"{r[key]:>9.1f} (x{ratio:4.2f})")
        print(f"{n:>12,} " + " ".join(f"{c:>18}" for c in cells))
    print("\nratios are against the first size (the empty store); the page load is the "
          "desktop dashboard built in this process through the client, without Voilà or a "
          "browser")


if __name__ == "__main__":
    main()
