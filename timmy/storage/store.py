"""The timmy database: `Store` opens it (creating or migrating the schema of
`timmy.storage.tables`), takes over from a previous owner, and reads it a page at a time;
its fenced writes are `timmy.storage.writes`. SQLite by default, any SQLAlchemy URL works.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Sequence
from typing import Any

import msgspec
import sqlalchemy as sa

from timmy.errors import StoreError, TaskNotFound, TimmyError
from timmy.market.lifecycle import FAILED, Action, after_coordinator_restart, keeps_waiting
from timmy.market.models import ACTIVE_STATES, QUEUED, AgentInfo, Event, Task
from timmy.paging import page_limit
from timmy.storage.address import DatabaseAddress, safe_url
from timmy.storage.engines import WAL_SIZE_LIMIT, _engines, address_of, get_engine
from timmy.storage.explain import explain
from timmy.storage.tables import (
    AGENT_COLUMNS,
    AGENT_UPDATE_COLUMNS,
    BID_COLUMNS,
    CORE_TABLES,
    EVENT_COLUMNS,
    LEDGER_COLUMNS,
    OWNER,
    OWNER_EPOCH,
    REPUTATION_COLUMNS,
    SCHEMA_VERSION,
    TASK_COLUMNS,
    TASK_UPDATE_COLUMNS,
    agents_table,
    bids_table,
    events_table,
    ledger_table,
    meta_table,
    metadata,
    reputation_table,
    task_limits_table,
    task_verify_table,
    tasks_table,
)
from timmy.storage.writes import Batch, Writer

# What callers import from here (the store's parts live in the modules above).
__all__ = [
    "AGENT_COLUMNS", "AGENT_UPDATE_COLUMNS", "BID_COLUMNS", "EVENT_COLUMNS", "LEDGER_COLUMNS",
    "OWNER",
    "OWNER_EPOCH", "SCHEMA_VERSION", "TASK_COLUMNS", "TASK_UPDATE_COLUMNS", "WAL_SIZE_LIMIT",
    "Batch", "Store", "_engines", "address_of", "agents_table", "bids_table", "events_table",
    "explain", "get_engine", "ledger_table", "meta_table", "metadata", "safe_url",
    "task_limits_table", "task_verify_table", "tasks_table",
]


def _refuse_foreign_sqlite(address: DatabaseAddress) -> None:
    """Refuse an SQLite file without timmy's tables, looking through a read-only handle.

    Our engine switches a file to WAL as it connects, which would change someone
    else's database just by looking at it.
    """
    from urllib.parse import quote

    url = address.url
    file = address.file   # the same URL -> file rule as the lock's
    if file is None or not file.exists():
        return
    path = quote(os.path.abspath(file), safe="/")
    import sqlite3

    try:
        uri = f"file:{path}?mode=ro"   # quoted: a "?", "#" or "%" in the name is the file's
        with contextlib.closing(sqlite3.connect(uri, uri=True)) as conn:
            names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    except sqlite3.Error as exc:
        raise explain(address, exc) from exc
    missing = [t for t in CORE_TABLES if t not in names]
    if missing:
        raise StoreError(f"{url} is not a timmy database (no table {missing[0]!r})",
                         hint="pass the database a swarm wrote (default data/timmy.db)")


def _task(row) -> Task:
    return Task(**dict(row._mapping))


class Store(Writer):
    """A timmy database: schema, transactions, reads. Thread-safe (one pooled engine).

    Writes go through a few methods that each run one transaction (`Writer`):
    `insert_tasks` (a post) and `apply` (a batch of state transitions: task rows, bids,
    events, agents; an auction close is always inside one batch).

    One swarm owns a database at a time (see `timmy.storage.ownership`). The owner's
    writes are also *fenced*: `recover`, which a swarm runs as it starts, opens a new
    ownership epoch (a counter in ``timmy_meta``), and every later write of that swarm
    checks, inside its transaction, that the epoch is still its own (a server: under a
    share lock on that row, before writing; SQLite: reading it after writing, under the
    database's write lock the writes took). A swarm that lost its lock without noticing
    (its lock connection dropped, another swarm took over, a second swarm got past the
    file lock) therefore fails its next write with `OwnershipLost` instead of
    overwriting the new owner's work.
    """

    def __init__(self, url: str | DatabaseAddress, busy_timeout: float = 5.0,
                 create: bool = True) -> None:
        """Open (``create=True``: and set up or migrate) the timmy database at ``url`` (a
        URL, a path, or a parsed `DatabaseAddress`).

        ``create=False`` only reads: a database without timmy's tables is refused.
        """
        self.address = address_of(url)
        self.url = self.address.url
        self._file = self.address.file   # None for a server database
        self.create = create
        if not create:
            _refuse_foreign_sqlite(self.address)   # before our engine's connect-time settings
        self.engine = get_engine(self.address, busy_timeout)
        server = self._server = self.engine.dialect.name != "sqlite"
        # A server's integer column is 32 bits; an id past it cannot exist, so is not asked for.
        self._max_id = 2**31 - 1 if server else 2**63 - 1
        # Fencing (see the class docstring), on every database: SQLite's flock keeps a
        # second swarm out only where every opener takes it (an older timmy does not).
        self._fenced = True
        # Inserts by COPY (see _copy_rows): PostgreSQL through psycopg 3.
        self._copy = self.engine.dialect.name == "postgresql" and \
            self.engine.dialect.driver == "psycopg"
        self._prepare_writes()
        self.guard(self._migrate)

    def guard(self, fn, *args):
        """Run ``fn(*args)``; database errors become a `StoreError` that says what to do."""
        try:
            return fn(*args)
        except sa.exc.DBAPIError as exc:
            raise explain(self.address, exc) from exc
        except self.engine.dialect.loaded_dbapi.Error as exc:  # from the raw DBAPI fast paths
            raise explain(self.address, exc) from exc
        except sa.exc.SQLAlchemyError as exc:
            raise StoreError(f"{self.address.display}: {exc}",
                             hint="check the URL's driver, database name and credentials") from exc
        except TimmyError:
            raise
        except (ValueError, OverflowError) as exc:   # a value the driver cannot send
            raise explain(self.address, exc) from exc

    def _migrate(self) -> None:
        with self.engine.begin() as conn:
            if not self.create:
                missing = [t for t in CORE_TABLES if not sa.inspect(conn).has_table(t)]
                if missing:
                    raise StoreError(
                        f"{self.address.display} is not a timmy database (no table "
                        f"{missing[0]!r})",
                        hint="pass the database a swarm wrote (default data/timmy.db)")
            metadata.create_all(conn)
            if self.create:   # a database made before an index was added gets it now
                for table in metadata.sorted_tables:
                    for index in table.indexes:
                        index.create(conn, checkfirst=True)
            if self.create and self._server:   # tasks.status was 16 wide: widened for
                status = tasks_table.c.status     # "awaiting_approval" (timmy.market.budgets)
                width = next((c["type"].length for c in sa.inspect(conn).get_columns("tasks")
                              if c["name"] == "status"), None)
                if width is not None and width < status.type.length:
                    conn.execute(sa.text(f"ALTER TABLE tasks ALTER COLUMN status TYPE "
                                         f"VARCHAR({status.type.length})"))
            row = conn.execute(
                sa.select(meta_table.c.value).where(meta_table.c.key == "schema_version")
            ).first()
            if row is None:
                conn.execute(meta_table.insert().values(key="schema_version",
                                                        value=str(SCHEMA_VERSION)))
            elif int(row[0]) > SCHEMA_VERSION:
                raise StoreError(
                    f"{self.address.display} has schema version {row[0]}, newer than this timmy "
                    f"({SCHEMA_VERSION})",
                    hint="upgrade timmy (pip install -U timmy) or use another --db",
                )

    def checkpoint(self) -> None:
        """Copy the SQLite write-ahead log back into the database without blocking writers.

        A passive checkpoint never resets the log while readers keep using it, and under
        steady load some always are: the WAL grew by 11 MB/s. Past `WAL_SIZE_LIMIT` the
        checkpoint is TRUNCATE instead, which waits (busy_timeout) for readers to let go,
        holds writers for as long as the copy takes, and empties the file.
        """
        if self.engine.dialect.name != "sqlite":
            return
        wal = None if self._file is None else f"{self._file}-wal"
        try:
            big = wal is not None and os.path.getsize(wal) > WAL_SIZE_LIMIT
        except OSError:
            big = False
        mode = "TRUNCATE" if big else "PASSIVE"

        def run():
            with self.engine.connect() as conn:
                conn.exec_driver_sql(f"PRAGMA wal_checkpoint({mode})")
        self.guard(run)

    def recover(self, max_attempts: int, now: float,
                owner: str = "a timmy swarm") -> tuple[list[Task], list[Task], list[Task]]:
        """Take over what a previous coordinator left unfinished, in one transaction.

        Returns (waiting, requeued, failed): tasks still queued or awaiting approval (with
        their held agent and price, as they were); tasks it left bidding,
        assigned or running, now queued again; and those whose attempts were used up,
        now failed with a reason. Agents it left alive are marked "lost". On a server
        database it first opens a new ownership epoch for ``owner`` (fencing: see the
        class docstring), so the tasks it reads are final: the old owner writes no more.
        """
        def run():
            with self.engine.begin() as conn:
                if self._fenced:
                    self._take_over(conn, owner)
                unfinished = [_task(r) for r in conn.execute(
                    sa.select(tasks_table).where(tasks_table.c.status.in_(ACTIVE_STATES))
                    .order_by(tasks_table.c.task_id))]
                # queued ones, and those awaiting approval with their held bid
                waiting = [t for t in unfinished if keeps_waiting(t.status)]
                requeued, failed = [], []
                for t in unfinished:
                    if keeps_waiting(t.status):
                        continue
                    decision = after_coordinator_restart(t.status, t.attempts, max_attempts)
                    t.reason = decision.reason
                    if decision.action == Action.FAIL:
                        t.status, t.completed_at = FAILED, now
                        failed.append(t)
                    else:
                        t.status, t.assigned_agent, t.price_sats, t.assigned_at = (
                            QUEUED, None, None, None)
                        requeued.append(t)
                if requeued or failed:
                    conn.execute(
                        tasks_table.update()
                        .where(tasks_table.c.task_id == sa.bindparam("b_id"))
                        .values(status=sa.bindparam("b_status"), reason=sa.bindparam("b_reason"),
                                assigned_agent=None, price_sats=None, assigned_at=None,
                                completed_at=sa.bindparam("b_done")),
                        [{"b_id": t.task_id, "b_status": t.status, "b_reason": t.reason,
                          "b_done": t.completed_at} for t in requeued + failed],
                    )
                conn.execute(
                    agents_table.update()
                    .where(agents_table.c.status.notin_(("stopped", "failed", "lost")))
                    .values(status="lost", pid=None)
                )
                return waiting, requeued, failed

        return self.guard(run)

    # -- reads --------------------------------------------------------------
    def _read(self, stmt) -> list:
        """All rows of a SELECT, on a pooled connection; errors become `StoreError`."""
        def run():
            with self.engine.connect() as conn:
                return conn.execute(stmt).all()
        return self.guard(run)

    def next_event_id(self) -> int:
        return (self._read(sa.select(sa.func.max(events_table.c.event_id)))[0][0] or 0) + 1

    def agent_counts(self) -> dict[str, int]:
        """How many agents of each persona the store has seen (for deterministic ids)."""
        return dict(self._read(sa.select(agents_table.c.persona, sa.func.count())
                               .group_by(agents_table.c.persona)))

    def status_counts(self) -> dict[str, int]:
        return dict(self._read(sa.select(tasks_table.c.status, sa.func.count())
                               .group_by(tasks_table.c.status)))

    def task(self, task_id: int) -> Task:
        rows = [] if not 0 < task_id <= self._max_id else self._read(
            sa.select(tasks_table).where(tasks_table.c.task_id == task_id))
        if not rows:
            raise TaskNotFound(f"no task with id {task_id}",
                               hint="list the tasks with swarm.tasks()")
        return _task(rows[0])

    def tasks(self, status: str | Iterable[str] | None = None, limit: int | None = None,
              ids: Sequence[int] | None = None, after: int | None = None,
              before: int | None = None) -> list[Task]:
        """One page of tasks, oldest first: by status, by id, else all (see `timmy.paging`).

        No cursor: the newest ``limit`` (default `DEFAULT_LIMIT`; with ``ids``, as many
        as there are ids); ``after``/``before``: the page past a task_id.
        """
        stmt = sa.select(tasks_table)
        if isinstance(status, str):
            stmt = stmt.where(tasks_table.c.status == status)
        elif status is not None:
            stmt = stmt.where(tasks_table.c.status.in_(list(status)))
        if ids is not None:
            ids = [i for i in ids if 0 < i <= self._max_id]
            stmt = stmt.where(tasks_table.c.task_id.in_(ids))
            limit = len(ids) if limit is None else limit
        return [_task(r) for r in self._page(stmt, tasks_table.c.task_id, limit, after, before)]

    def bids(self, task_id: int | None = None, limit: int | None = None,
             after: int | None = None, before: int | None = None) -> list[dict[str, Any]]:
        """One page of bids (of one task, or all), oldest first by bid_id."""
        stmt = sa.select(bids_table)
        if task_id is not None:
            stmt = stmt.where(bids_table.c.task_id == task_id)
        return [dict(r._mapping)
                for r in self._page(stmt, bids_table.c.bid_id, limit, after, before)]

    def ledger(self, agent_id: str | None = None, limit: int | None = None,
               after: int | None = None, before: int | None = None) -> list[dict[str, Any]]:
        """One page of ledger entries (of one agent, or all), oldest first by entry_id."""
        stmt = sa.select(ledger_table)
        if agent_id is not None:
            stmt = stmt.where(ledger_table.c.agent_id == agent_id)
        return [dict(r._mapping)
                for r in self._page(stmt, ledger_table.c.entry_id, limit, after, before)]

    def balances(self) -> dict[str, dict[str, int]]:
        """Per agent: sats paid, tasks paid, and how many of those were verified."""
        c = ledger_table.c
        rows = self._read(sa.select(c.agent_id, sa.func.sum(c.sats), sa.func.count(),
                                    sa.func.sum(sa.case((c.verified, 1), else_=0)))
                          .group_by(c.agent_id).order_by(c.agent_id))
        return {a: {"sats": int(s or 0), "tasks": int(n), "verified": int(v or 0)}
                for a, s, n, v in rows}

    def reputation(self) -> dict[str, dict[str, int]]:
        """Every agent's stored reputation counters (`timmy.market.reputation.COUNTERS`)."""
        counters = REPUTATION_COLUMNS[1:-1]
        return {r[0]: dict(zip(counters, r[1:-1], strict=True))
                for r in self._read(sa.select(reputation_table)
                                    .order_by(reputation_table.c.agent_id))}

    def verify_specs(self, task_ids: Sequence[int]) -> dict[int, str]:
        """The verify specs of these tasks (those posted with one)."""
        out: dict[int, str] = {}
        ids = [i for i in task_ids if 0 < i <= self._max_id]
        for lo in range(0, len(ids), 500):
            chunk = ids[lo:lo + 500]
            out.update(self._read(sa.select(task_verify_table.c.task_id, task_verify_table.c.spec)
                                  .where(task_verify_table.c.task_id.in_(chunk))))
        return out

    def max_prices(self, task_ids: Sequence[int]) -> dict[int, int]:
        """The max_price of these tasks (those posted with one: `timmy.market.budgets`)."""
        out: dict[int, int] = {}
        ids = [i for i in task_ids if 0 < i <= self._max_id]
        c = task_limits_table.c
        for lo in range(0, len(ids), 500):
            out.update(self._read(sa.select(c.task_id, c.max_price)
                                  .where(c.task_id.in_(ids[lo:lo + 500]))))
        return {k: int(v) for k, v in out.items()}

    def paid_total(self) -> int:
        """Every sat the ledger has paid (a budget's spend starts from it)."""
        return int(self._read(sa.select(sa.func.coalesce(sa.func.sum(ledger_table.c.sats), 0)))
                   [0][0])

    def agents(self, limit: int | None = None, after: str | None = None) -> list[AgentInfo]:
        """One page of agents by agent_id: the first ``limit``, or those after ``after``."""
        stmt = sa.select(agents_table).order_by(agents_table.c.agent_id)
        if after is not None:
            stmt = stmt.where(agents_table.c.agent_id > after)
        rows = self._read(stmt.limit(page_limit(limit)))
        return [AgentInfo(**{k: v for k, v in r._mapping.items() if k != "joined_at"})
                for r in rows]

    def events(self, after: int | None = None, limit: int | None = None,
               before: int | None = None) -> list[Event]:
        """One page of events, oldest first: the newest, or past ``after``/``before``."""
        return [Event(event_id=r.event_id, ts=r.ts, kind=r.kind, task_id=r.task_id,
                      agent_id=r.agent_id, data=msgspec.json.decode(r.data))
                for r in self._page(sa.select(events_table), events_table.c.event_id,
                                    limit, after, before)]

    def _page(self, stmt, key, limit: int | None, after: int | None,
              before: int | None) -> list:
        """Rows of ``stmt``, oldest first by ``key``: the ``limit`` after ``after`` (walking
        forward), else the newest ``limit`` (below ``before``). Each is an index range scan,
        so a page costs the same whatever the size of the history."""
        limit = page_limit(limit)
        if before is not None:
            stmt = stmt.where(key < before)
        if after is not None:
            return self._read(stmt.where(key > after).order_by(key).limit(limit))
        return self._read(stmt.order_by(key.desc()).limit(limit))[::-1]

    def dispose(self) -> None:
        """Return pooled connections (the engine stays cached for reuse in this process)."""
        self.engine.dispose()

