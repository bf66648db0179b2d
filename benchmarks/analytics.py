"""How long do the canned analytics queries take over an export of a million bids?

Writes a synthetic export straight to Parquet with pyarrow (the schema of
`timmy export`, 100k-row row groups like it): nine personas, ~111k tasks from
the demo workload's templates arriving at 500/s, nine bids per auction priced
by the live rules (on-spec ``base - U[0, jitter]``, off-spec ``1.8 base +
U[0, jitter]``), specialist-first clearing, seeded success (95 % on-spec, 60 %
off-spec) and up to three attempts, so some tasks are re-auctioned and a few
fail. Then times `timmy.analytics.connect` and each canned query: median of 3.
The target is under 1 s per query. ``--sqlite`` also copies the rows into a
timmy SQLite store and times `connect` reading it on the fly (through
SQLAlchemy into Arrow).

    python benchmarks/analytics.py [--tasks 111112] [--runs 3] [--seed 1] [--sqlite]
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from timmy import analytics
from timmy.engine.executors import OFF_SPEC_SUCCESS, ON_SPEC_SUCCESS
from timmy.market.personas import PERSONAS
from timmy.sim.workloads import demo_descriptions
from timmy.storage.export import CHUNK, TABLES, _schema
from timmy.storage.store import Store

MAX_ATTEMPTS = 3
ARRIVALS_PER_S = 500.0


def write_export(out: Path, n_tasks: int, seed: int) -> dict[str, int]:
    """A realistic export of ``n_tasks`` tasks in ``out``; returns the row count per table."""
    rng = np.random.default_rng(seed)
    personas = list(PERSONAS.values())
    agent_ids = np.array([f"{p.id}-1" for p in personas])
    base = np.array([p.bid_base for p in personas])
    jitter = np.array([p.bid_jitter for p in personas])

    descriptions = demo_descriptions(n_tasks, seed)
    distinct, index = np.unique(np.array(descriptions, dtype=object), return_inverse=True)
    spec_of = np.array([[p.is_on_spec(d) for p in personas] for d in distinct])
    on_spec = spec_of[index]                                  # (tasks, personas)

    task_ids = np.arange(1, n_tasks + 1)
    t0 = 1.7e9
    created = t0 + np.cumsum(rng.exponential(1 / ARRIVALS_PER_S, n_tasks))
    ready = created.copy()                                    # when the next auction opens
    status = np.full(n_tasks, "queued", dtype=object)
    attempts = np.zeros(n_tasks, np.int64)
    winner = np.full(n_tasks, -1)
    price = np.zeros(n_tasks, np.int64)
    assigned_at = np.full(n_tasks, np.nan)
    completed_at = np.full(n_tasks, np.nan)
    reason = np.full(n_tasks, None, dtype=object)

    bids: dict[str, list[np.ndarray]] = {k: [] for k in (
        "task_id", "attempt", "auction_id", "agent", "sats", "on_spec", "won", "created_at")}
    auctions: list[tuple[np.ndarray, np.ndarray, int, np.ndarray]] = []
    next_auction = 1
    open_ = np.arange(n_tasks)
    for attempt in range(1, MAX_ATTEMPTS + 1):
        m = len(open_)
        if not m:
            break
        spec = on_spec[open_]
        draw = rng.integers(0, jitter + 1, size=(m, len(personas)))
        sats = np.where(spec, np.maximum(1, base - draw),
                        np.minimum(200, np.floor(1.8 * base).astype(int) + draw))
        # specialist-first: the lowest on-spec bid, or the lowest bid when nobody is on-spec
        ranked = np.where(spec.any(axis=1, keepdims=True) & ~spec, 10_000, sats)
        win = ranked.argmin(axis=1)
        auction_ids = next_auction + np.arange(m)
        next_auction += m
        closed = ready[open_] + rng.lognormal(np.log(0.002), 0.5, m)   # ~2 ms to clear
        won = np.zeros_like(spec)
        won[np.arange(m), win] = True
        bids["task_id"].append(np.repeat(task_ids[open_], len(personas)))
        bids["attempt"].append(np.full(m * len(personas), attempt))
        bids["auction_id"].append(np.repeat(auction_ids, len(personas)))
        bids["agent"].append(np.tile(np.arange(len(personas)), m))
        bids["sats"].append(sats.ravel())
        bids["on_spec"].append(spec.ravel())
        bids["won"].append(won.ravel())
        bids["created_at"].append(np.repeat(closed, len(personas)))
        auctions.append((open_, auction_ids, attempt, closed))

        win_spec = spec[np.arange(m), win]
        ok = rng.random(m) < np.where(win_spec, ON_SPEC_SUCCESS, OFF_SPEC_SUCCESS)
        done = closed + rng.exponential(0.05, m)
        attempts[open_], winner[open_] = attempt, win
        price[open_], assigned_at[open_] = sats[np.arange(m), win], closed
        completed_at[open_[ok]] = done[ok]
        status[open_[ok]] = "completed"
        failed = open_[~ok]
        why = np.array([f"attempt {attempt} by {a} failed: simulated failure "
                        f"({'on' if s else 'off'}-spec task)"
                        for a, s in zip(agent_ids[win[~ok]], win_spec[~ok], strict=True)],
                       dtype=object)
        reason[failed] = why
        if attempt == MAX_ATTEMPTS:
            status[failed] = "failed"
            completed_at[failed] = done[~ok]
            reason[failed] = why + f"; gave up after {attempt} attempts"
        ready[failed] = done[~ok]
        open_ = failed if attempt < MAX_ATTEMPTS else open_[:0]
    reason[status == "completed"] = None

    tables = {
        "tasks": {
            "task_id": task_ids, "description": descriptions, "status": status,
            "assigned_agent": agent_ids[winner], "price_sats": price, "attempts": attempts,
            "result": np.where(status == "completed", "done", None), "reason": reason,
            "created_at": created, "assigned_at": assigned_at, "completed_at": completed_at,
        },
        "bids": {
            "bid_id": None, "task_id": np.concatenate(bids["task_id"]),
            "attempt": np.concatenate(bids["attempt"]),
            "auction_id": np.concatenate(bids["auction_id"]),
            "agent_id": agent_ids[np.concatenate(bids["agent"])],
            "sats": np.concatenate(bids["sats"]), "on_spec": np.concatenate(bids["on_spec"]),
            "won": np.concatenate(bids["won"]), "rule": "specialist_first",
            "created_at": np.concatenate(bids["created_at"]),
        },
        "agents": {
            "agent_id": agent_ids, "persona": [p.id for p in personas],
            "name": [p.name for p in personas], "pid": None, "status": "stopped",
            "restarts": 0, "tasks_won": np.bincount(np.concatenate(bids["agent"])[
                np.concatenate(bids["won"])], minlength=len(personas)),
            "earned_sats": np.bincount(winner[status == "completed"],
                                       weights=price[status == "completed"],
                                       minlength=len(personas)).astype(np.int64),
            "joined_at": np.full(len(personas), t0),
        },
        "events": _events(task_ids, created, auctions, status, completed_at),
    }
    counts = {}
    for name, columns in tables.items():
        schema = _schema(pa, TABLES[name])
        key = next(iter(TABLES[name].primary_key.columns)).name
        n = next(len(v) for v in columns.values() if v is not None and not np.isscalar(v))
        arrays = []
        for field in schema:
            value = columns[field.name]
            if value is None and field.name == key:
                value = np.arange(1, n + 1)
            elif value is None or np.isscalar(value):
                value = [value] * n
            arrays.append(pa.array(value, field.type))
        pq.write_table(pa.Table.from_arrays(arrays, schema=schema), out / f"{name}.parquet",
                       row_group_size=CHUNK)
        counts[name] = n
    return counts


def _events(task_ids, created, auctions, status, completed_at) -> dict:
    """task_posted, auction_opened, auction_closed, task_assigned and the final event."""
    parts = [(created, "task_posted", task_ids)]
    for open_, _ids, _attempt, closed in auctions:
        parts += [(closed - 0.001, "auction_opened", task_ids[open_]),
                  (closed, "auction_closed", task_ids[open_]),
                  (closed, "task_assigned", task_ids[open_])]
    final = status != "queued"
    kinds = np.where(status[final] == "completed", "task_completed", "task_failed")
    parts.append((completed_at[final], kinds, task_ids[final]))
    ts = np.concatenate([p[0] for p in parts])
    kind = np.concatenate([np.broadcast_to(np.asarray(p[1], dtype=object), len(p[0]))
                           for p in parts])
    tid = np.concatenate([p[2] for p in parts])
    order = np.argsort(ts, kind="stable")
    return {"event_id": None, "ts": ts[order], "kind": kind[order], "task_id": tid[order],
            "agent_id": None, "data": "{}"}


def copy_to_sqlite(export: Path, db: Path) -> None:
    """The export's rows in a fresh timmy SQLite store (plain executemany: setup, not timed)."""
    Store(f"sqlite:///{db}").dispose()
    with sqlite3.connect(db) as conn:
        for name in TABLES:
            if not (export / f"{name}.parquet").exists():
                continue   # a table this synthetic workload does not fill (the ledger)
            table = pq.read_table(export / f"{name}.parquet")
            marks = ", ".join("?" * table.num_columns)
            conn.executemany(
                f"INSERT INTO {name} ({', '.join(table.schema.names)}) VALUES ({marks})",
                zip(*(column.to_pylist() for column in table.columns), strict=True))


def median_time(fn, runs: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(runs):
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", type=int, default=111_112)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--sqlite", action="store_true",
                    help="also time connect() over the same rows in a SQLite store")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "export"
        out.mkdir()
        t = time.perf_counter()
        counts = write_export(out, args.tasks, args.seed)
        size = sum(f.stat().st_size for f in out.iterdir())
        print(f"export: {counts['tasks']:,} tasks, {counts['bids']:,} bids, "
              f"{counts['events']:,} events, {size / 2**20:.1f} MB of Parquet, "
              f"written in {time.perf_counter() - t:.1f} s")
        elapsed, con = median_time(lambda: analytics.connect(out), args.runs)
        print(f"{'connect()':<26} {elapsed * 1000:8.1f} ms  (views + task_keywords: "
              f"{con.execute('SELECT count(*) FROM task_keywords').fetchone()[0]:,} rows)")
        slowest = 0.0
        for name, query in analytics.REPORTS.items():
            elapsed, frame = median_time(lambda q=query: q(con), args.runs)
            slowest = max(slowest, elapsed)
            print(f"{name:<26} {elapsed * 1000:8.1f} ms  ({len(frame)} rows)")
        print(f"slowest query: {slowest * 1000:.0f} ms, median of {args.runs} "
              f"(target: each under 1 s)")
        con.close()
        if args.sqlite:
            db = Path(tmp) / "timmy.db"
            copy_to_sqlite(out, db)
            elapsed, con = median_time(lambda: analytics.connect(db), args.runs)
            print(f"{'connect(sqlite file)':<26} {elapsed * 1000:8.1f} ms  (the same rows read "
                  f"on the fly from a {db.stat().st_size / 2**20:.0f} MB SQLite store)")
            con.close()


if __name__ == "__main__":
    main()
