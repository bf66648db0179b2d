"""Throughput on PostgreSQL vs SQLite in one run: the same workload on each store, medians.

As benchmarks/throughput.py: nine runner processes, the simulated executor with zero task
time. Each run: a fresh database (SQLite: a new file; PostgreSQL: a new schema), 200
warm-up tasks, then ``--tasks`` tasks posted at once and timed until all are finished.
Runs take turns across the stores (sqlite, pg, pg-async, sqlite, ...) so a machine that
gets busier hits all of them alike; each store's figure is the median of ``--runs``.
Then post -> complete latency with one task in flight, per store.

Stores:
- sqlite: a file in a temporary directory (WAL, synchronous=NORMAL: timmy's defaults).
- pg: PostgreSQL as configured (a throwaway server keeps the defaults: fsync on,
  synchronous_commit on: a commit waits for its WAL record to reach the disk).
- pg-async: the same server with ``synchronous_commit=off`` for timmy's sessions (through
  the URL's options), which is what SQLite's synchronous=NORMAL in WAL mode promises: a
  commit survives the process crashing, not the machine.

The server: ``--pg URL``, else TIMMY_TEST_PG_URL, else a throwaway one started with
Debian's initdb/pg_ctl (tests/pgserver.py) on a free loopback port and removed at the end.

    python benchmarks/postgres.py [--tasks 1000] [--runs 3] [--latency-tasks 300] [--pg URL]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import statistics
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import sqlalchemy as sa
from throughput import one_run

import timmy
from timmy.sim.workloads import demo_descriptions

HERE = Path(__file__).resolve().parent


def libpq(url: str) -> str:
    return sa.engine.make_url(url).set(drivername="postgresql").render_as_string(
        hide_password=False)


@contextlib.contextmanager
def pg_server(given: str | None) -> Iterator[str]:
    """The URL of a PostgreSQL database to benchmark on (a throwaway server if none given)."""
    url = given or os.environ.get("TIMMY_TEST_PG_URL")
    if url:
        yield url
        return
    sys.path.insert(0, str(HERE.parent / "tests"))
    from pgserver import ServerUnavailable, throwaway

    with contextlib.ExitStack() as stack:
        try:
            server = stack.enter_context(throwaway(fast=False))
        except ServerUnavailable as exc:   # `make bench` runs every benchmark: say why, go on
            print(f"skipped: no PostgreSQL to measure ({exc}); install Debian's postgresql "
                  "package or pass --pg URL")
            sys.exit(0)
        yield server.url()


@contextlib.contextmanager
def fresh_schema(base: str, options: str = "") -> Iterator[str]:
    """A new schema on the server, as a URL whose sessions work in it; dropped afterwards."""
    import psycopg

    schema = f"bench_{secrets.token_hex(5)}"
    with psycopg.connect(libpq(base), autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    url = sa.engine.make_url(base).update_query_dict(
        {"options": f"-csearch_path={schema} {options}".strip()}
    ).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        with psycopg.connect(libpq(base), autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


@contextlib.contextmanager
def database(store: str, pg: str, tmp: Path, name: str) -> Iterator[str]:
    if store == "sqlite":
        yield f"sqlite:///{tmp / f'{name}.db'}"
    else:
        with fresh_schema(pg, "-csynchronous_commit=off" if store == "pg-async" else "") as url:
            yield url




def latency(db: str, n: int, seed: int) -> tuple[list[float], list[float]]:
    """Post -> assign and post -> complete, in ms, one task in flight at a time."""
    with timmy.Swarm(db, seed=seed, task_seconds=0) as swarm:
        swarm.spawn_all()
        for d in demo_descriptions(30, seed + 7):
            swarm.wait(swarm.post(d).task_id, timeout=10)
        done = [swarm.wait(swarm.post(d).task_id, timeout=10)
                for d in demo_descriptions(n, seed)]
    return ([(t.assigned_at - t.created_at) * 1000 for t in done],
            [(t.completed_at - t.created_at) * 1000 for t in done])


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def server_settings(url: str) -> str:
    import psycopg

    with psycopg.connect(libpq(url)) as conn:
        version = conn.execute("SHOW server_version").fetchone()[0]
        fsync = conn.execute("SHOW fsync").fetchone()[0]
        sync = conn.execute("SHOW synchronous_commit").fetchone()[0]
    where = sa.engine.make_url(url).render_as_string(hide_password=True)
    return f"PostgreSQL {version} at {where} (fsync={fsync}, synchronous_commit={sync})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--latency-tasks", type=int, default=300)
    ap.add_argument("--pg", default=None, metavar="URL",
                    help="a PostgreSQL database (default: TIMMY_TEST_PG_URL, else a throwaway "
                    "server)")
    args = ap.parse_args()
    stores = ("sqlite", "pg", "pg-async")
    with pg_server(args.pg) as pg, tempfile.TemporaryDirectory() as tmp:
        print(server_settings(pg))
        rates: dict[str, list[float]] = {s: [] for s in stores}
        for i in range(args.runs):
            for store in stores:
                with database(store, pg, Path(tmp), f"run{i}") as db:
                    rate = one_run(db, args.tasks, seed=i + 1)
                rates[store].append(rate)
                print(f"run {i + 1} {store:<8} {rate:,.0f} tasks/s")
        med = {s: statistics.median(r) for s, r in rates.items()}
        print(f"throughput, median of {args.runs} runs of {args.tasks} tasks "
              "(min-max):")
        for s in stores:
            print(f"  {s:<8} {med[s]:>7,.0f} tasks/s  ({min(rates[s]):,.0f}-{max(rates[s]):,.0f})"
                  f"  {med[s] / med['sqlite']:.2f}x sqlite")
        print(f"post->assign / post->complete latency, one task in flight "
              f"({args.latency_tasks} tasks):")
        for store in stores:
            with database(store, pg, Path(tmp), "latency") as db:
                assign, complete = latency(db, args.latency_tasks, seed=99)
            print(f"  {store:<8} assign p50 {pct(assign, 0.5):.2f} ms, p99 "
                  f"{pct(assign, 0.99):.2f} ms; complete p50 {pct(complete, 0.5):.2f} ms, "
                  f"p99 {pct(complete, 0.99):.2f} ms")


if __name__ == "__main__":
    main()
