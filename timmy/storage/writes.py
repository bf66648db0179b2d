"""The write path of a `timmy.storage.store.Store`: batches of state transitions, each
written in one transaction and fenced by the ownership epoch (see `Writer`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from timmy.errors import OwnershipLost, StoreError
from timmy.market.models import QUEUED, Task
from timmy.storage.quarantine import Refused, is_row_error, refusal
from timmy.storage.tables import (
    _AGENT_UPDATE_BINDS,
    _TASK_UPDATE_BINDS,
    AGENT_COLUMNS,
    AGENT_UPDATE_COLUMNS,
    BID_COLUMNS,
    EVENT_COLUMNS,
    LEDGER_COLUMNS,
    OWNER,
    OWNER_EPOCH,
    REPUTATION_COLUMNS,
    TASK_UPDATE_COLUMNS,
    agents_table,
    bids_table,
    events_table,
    ledger_table,
    meta_table,
    reputation_table,
    task_limits_table,
    task_verify_table,
    tasks_table,
)


@dataclass
class Batch:
    """State transitions to write in one transaction.

    ``tasks``: task_id -> changed columns; ``bids``, ``events`` and ``ledger``: tuples in
    `BID_COLUMNS` / `EVENT_COLUMNS` / `LEDGER_COLUMNS` order; ``agents``: agent_id -> row.
    A paid task's ledger row goes in the batch of its completion, so both are written in
    the same transaction. ``reputation``: agent_id -> its row in `REPUTATION_COLUMNS` order
    (the latest counters: written over the stored row).
    """

    tasks: dict[int, dict[str, Any]] = field(default_factory=dict)
    bids: list[tuple] = field(default_factory=list)
    events: list[tuple] = field(default_factory=list)
    agents: dict[str, dict[str, Any]] = field(default_factory=dict)
    ledger: list[tuple] = field(default_factory=list)
    reputation: dict[str, tuple] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.tasks or self.bids or self.events or self.agents or self.ledger
                    or self.reputation)

    def rows(self) -> int:
        """How many rows this batch writes (tasks, bids, events, agents, ledger, reputation)."""
        return (len(self.tasks) + len(self.bids) + len(self.events) + len(self.agents)
                + len(self.ledger) + len(self.reputation))

    def merge_into(self, older: Batch) -> Batch:
        """Put this batch's changes on top of ``older`` (used to retry a failed write)."""
        older.tasks.update(self.tasks)
        older.bids.extend(self.bids)
        older.events.extend(self.events)
        older.agents.update(self.agents)
        older.ledger.extend(self.ledger)
        older.reputation.update(self.reputation)
        return older


class Writer:
    """The writes of a `Store` (a mixin: it shares the store's engine and state).

    Every write is one transaction and *fenced*: it goes on only while the ownership epoch
    in ``timmy_meta`` is still this store's (a server: checked first, under a share lock
    on that row; SQLite: read after writing, under the write lock the writes took), else
    it fails with `OwnershipLost`. A row the database refuses is left out of its batch and
    returned (`timmy.storage.quarantine`).
    """

    def _prepare_writes(self) -> None:
        """Build the write statements once (compiled per dialect by `_sql`)."""
        self._epoch: str | None = None    # the ownership epoch this store's swarm holds
        self._compiled: dict[int, tuple[str, list[str] | None, Any]] = {}
        self._known_agents: set[str] = set()   # agent rows known to exist
        self._task_update = (tasks_table.update()
                             .where(tasks_table.c.task_id == sa.bindparam("b_task_id"))
                             .values({c: sa.bindparam(f"b_{c}") for c in TASK_UPDATE_COLUMNS}))
        self._agent_update = (agents_table.update()
                              .where(agents_table.c.agent_id == sa.bindparam("b_agent_id"))
                              .values({c: sa.bindparam(f"b_{c}") for c in AGENT_UPDATE_COLUMNS}))
        self._agent_insert = agents_table.insert().values(
            {c: sa.bindparam(c) for c in AGENT_COLUMNS})
        self._bid_insert = bids_table.insert().values(
            {c: sa.bindparam(c) for c in BID_COLUMNS})
        self._task_insert = tasks_table.insert().values(
            {c: sa.bindparam(c) for c in ("description", "status", "attempts", "created_at")}
        ).returning(tasks_table.c.task_id)
        self._ledger_insert = ledger_table.insert().values(
            {c: sa.bindparam(c) for c in LEDGER_COLUMNS})
        self._reputation_delete = reputation_table.delete().where(
            reputation_table.c.agent_id == sa.bindparam("b_agent_id"))
        self._reputation_insert = reputation_table.insert().values(
            {c: sa.bindparam(c) for c in REPUTATION_COLUMNS})
        self._event_insert = events_table.insert().values(
            {c: sa.bindparam(c) for c in EVENT_COLUMNS})
        self._owner_check = (sa.select(meta_table.c.value)
                             .where(meta_table.c.key == sa.bindparam("key"))
                             .with_for_update(read=True))
        # A post in one statement, written only while the epoch is still ours.
        posted = ("description", "status", "attempts", "created_at")
        ours = (sa.select(sa.literal_column("1"))
                .where(meta_table.c.key == sa.bindparam("key"),
                       meta_table.c.value == sa.bindparam("epoch"))
                .with_for_update(read=True))
        self._fenced_task_insert = tasks_table.insert().from_select(
            list(posted),
            sa.select(*(sa.bindparam(c, type_=tasks_table.c[c].type) for c in posted))
            .where(ours.exists()),
        ).returning(tasks_table.c.task_id)

    def insert_tasks(self, descriptions: Sequence[str], created_at: float,
                     verify: Sequence[str | None] | None = None,
                     max_prices: Sequence[int | None] | None = None) -> list[Task]:
        """Persist new queued tasks; returns them with their ids (in order). ``verify``:
        each task's verify spec (or None), ``max_prices`` each one's max_price (or None),
        stored in the same transaction."""
        rows = [{"description": d, "status": QUEUED, "attempts": 0, "created_at": created_at}
                for d in descriptions]
        specs = list(verify) if verify is not None and any(v is not None for v in verify) \
            else None
        limits = list(max_prices) if max_prices is not None and \
            any(m is not None for m in max_prices) else None

        def run() -> list[int]:
            if len(rows) == 1 and specs is None and limits is None:
                return [self._insert_one(rows[0])]
            with self.engine.begin() as conn:
                self._fence_before(conn)
                stmt = tasks_table.insert().returning(
                    tasks_table.c.task_id, sort_by_parameter_order=True
                )
                ids = [r[0] for r in conn.execute(stmt, rows)]
                if specs is not None:
                    conn.execute(task_verify_table.insert(),
                                 [{"task_id": i, "spec": v}
                                  for i, v in zip(ids, specs, strict=True) if v is not None])
                if limits is not None:
                    conn.execute(task_limits_table.insert(),
                                 [{"task_id": i, "max_price": m}
                                  for i, m in zip(ids, limits, strict=True) if m is not None])
                self._fence_after(conn)
                return ids

        try:
            ids = self.guard(run)
        except StoreError as exc:
            cause = exc.__cause__
            if cause is None or not is_row_error(cause, self.engine.dialect.loaded_dbapi):
                raise
            why = [refusal(tasks_table, ("description",), (d,), cause, self._server)
                   for d in descriptions]
            named = [r for r in why if r.column] or why
            raise StoreError(
                f"{self.address.display}: the database refused the task's row: "
                f"tasks.description: {named[0].reason}",
                hint="the database works; that description does not fit its column: fix it "
                     "and post it again (nothing of this post was stored)") from cause
        return [Task(task_id=i, description=d, created_at=created_at)
                for i, d in zip(ids, descriptions, strict=True)]

    def _insert_one(self, row: dict[str, Any]) -> int:
        """One task, straight through the DBAPI: a post is on the latency path, and the
        SQLAlchemy Connection machinery cost 4x the insert itself. Fenced on a server, it is
        still one statement (the owner check rides along), so a post stays one round trip;
        on SQLite the check is a read after the insert, under the write lock it took."""
        fenced = self._epoch is not None and self._server
        if fenced:
            row = {**row, "key": OWNER_EPOCH, "epoch": self._epoch}
        sql, names, _ = self._sql(self._fenced_task_insert if fenced else self._task_insert)
        raw = self.engine.raw_connection()
        try:
            cur = raw.cursor()
            params = row if names is None else tuple(row[n] for n in names)
            cur.execute(sql, params)
            got = cur.fetchone()
            if got is not None and self._epoch is not None and not self._server:
                check, cnames, _ = self._sql(self._owner_check)
                cur.execute(check, {"key": OWNER_EPOCH} if cnames is None else (OWNER_EPOCH,))
                epoch = cur.fetchone()
                if epoch is None or epoch[0] != self._epoch:
                    got = None
            cur.close()
            if got is None:   # the fenced insert wrote nothing: the epoch is not ours any more
                raw.rollback()
                raise self._lost(self._read_owner())
            task_id = got[0]
            raw.commit()
        except BaseException:
            raw.rollback()
            raise
        finally:
            raw.close()
        return task_id

    def apply(self, batch: Batch) -> list[Refused]:
        """Write a batch of transitions in one transaction (all of it or none of it), except
        rows the database refuses (a value that does not fit its column): those are left
        out, the rest is written, and they are returned (see `timmy.storage.quarantine`)."""
        return self.guard(self._apply, batch)

    def _sql(self, stmt) -> tuple[str, list[str] | None, Any]:
        """A statement compiled once for this engine's dialect: (sql, positional names)."""
        cached = self._compiled.get(id(stmt))
        if cached is None:
            compiled = stmt.compile(dialect=self.engine.dialect)
            names = list(compiled.positiontup) if compiled.positional else None
            cached = self._compiled[id(stmt)] = (str(compiled), names, stmt)
        return cached

    def _executemany(self, conn, stmt, columns: Sequence[str], rows: list) -> None:
        """executemany straight to the driver with SQL compiled once per statement.

        ``rows`` are tuples in ``columns`` order. SQLAlchemy's per-row parameter
        processing was most of the cost of a big batch, and our column types need none.
        """
        if not rows:
            return
        if self._copy and stmt.is_insert:
            self._copy_rows(conn, stmt.table, columns, rows)
            return
        sql, names, _ = self._sql(stmt)
        columns = tuple(columns)
        if names is None:  # a named paramstyle (psycopg): dicts
            params = [dict(zip(columns, r, strict=True)) for r in rows]
        elif tuple(names) == columns:
            params = rows
        else:
            order = [columns.index(n) for n in names]
            params = [tuple(r[i] for i in order) for r in rows]
        conn.exec_driver_sql(sql, params)

    def _copy_rows(self, conn, table: sa.Table, columns: Sequence[str], rows: list) -> None:
        """PostgreSQL: insert rows with COPY, inside the batch's transaction. executemany
        executes a statement per row, and at the thousands of bid and event rows a busy
        swarm writes per second that was most of its time; COPY is about 6x cheaper."""
        quote = self.engine.dialect.identifier_preparer.quote
        sql = (f"COPY {quote(table.name)} ({', '.join(quote(c) for c in columns)}) "
               "FROM STDIN")
        with conn.connection.driver_connection.cursor() as cur, cur.copy(sql) as copy:
            for row in rows:
                copy.write_row(row)

    def _apply(self, batch: Batch) -> list[Refused]:
        """The batch in one transaction; if the database refuses a row of it, the batch again
        without the rows it refuses (see `_apply_sorting`), which are returned."""
        refused: list[Refused] = []
        try:
            with self.engine.begin() as conn:
                self._fence_before(conn)
                for _table, write, _columns, rows in self._parts(conn, batch):
                    write(conn, rows)
                self._fence_after(conn)
        except Exception as exc:
            if not is_row_error(exc, self.engine.dialect.loaded_dbapi):
                raise
            refused = self._apply_sorting(batch)
        bad = {r.key for r in refused if r.table == "agents"}
        self._known_agents.update(a for a in batch.agents if a not in bad)
        return refused

    def _parts(self, conn, batch: Batch) -> list[tuple]:
        """The batch's writes as (table, write(conn, rows), columns of a row, rows)."""
        def many(stmt, binds):
            return lambda c, rows: self._executemany(c, stmt, binds, rows)

        parts: list[tuple] = []
        if batch.tasks:
            parts.append((tasks_table, many(self._task_update, _TASK_UPDATE_BINDS),
                          ("task_id", *TASK_UPDATE_COLUMNS),
                          [(tid, *(row[c] for c in TASK_UPDATE_COLUMNS))
                           for tid, row in batch.tasks.items()]))
        if batch.agents:
            new = {a for a in batch.agents if a not in self._known_agents}
            if new:  # usually only at spawn: afterwards every agent change is an update
                new -= {r[0] for r in conn.execute(
                    sa.select(agents_table.c.agent_id)
                    .where(agents_table.c.agent_id.in_(new)))}
            parts.append((agents_table, many(self._agent_insert, AGENT_COLUMNS), AGENT_COLUMNS,
                          [tuple(r[c] for c in AGENT_COLUMNS)
                           for a, r in batch.agents.items() if a in new]))
            parts.append((agents_table, many(self._agent_update, _AGENT_UPDATE_BINDS),
                          ("agent_id", *AGENT_UPDATE_COLUMNS),
                          [(a, *(r[c] for c in AGENT_UPDATE_COLUMNS))
                           for a, r in batch.agents.items() if a not in new]))
        if batch.bids:
            parts.append((bids_table, many(self._bid_insert, BID_COLUMNS), BID_COLUMNS,
                          batch.bids))
        if batch.events:
            parts.append((events_table, many(self._event_insert, EVENT_COLUMNS), EVENT_COLUMNS,
                          batch.events))
        if batch.ledger:
            parts.append((ledger_table, many(self._ledger_insert, LEDGER_COLUMNS),
                          LEDGER_COLUMNS, batch.ledger))
        if batch.reputation:   # each agent's latest counters, written over its stored row
            def rated(c, rows):
                self._executemany(c, self._reputation_delete, ("b_agent_id",),
                                  [r[:1] for r in rows])
                self._executemany(c, self._reputation_insert, REPUTATION_COLUMNS, rows)
            parts.append((reputation_table, rated, REPUTATION_COLUMNS,
                          list(batch.reputation.values())))
        return [p for p in parts if p[3]]

    def _apply_sorting(self, batch: Batch) -> list[Refused]:
        """The batch once more, in one transaction, each table's rows under a savepoint:
        a part the database refuses is split in halves until the rows it refuses are
        found alone (k bad rows among n: about 2k log2(n) statements, paid only when a
        row was refused). Those are left out and returned; any other error (a lost
        connection, OwnershipLost) fails the whole batch as before, to be retried."""
        refused: list[Refused] = []
        with self.engine.begin() as conn:
            if not self._server:   # pysqlite begins only at the first write: begin now,
                raw = conn.connection.driver_connection   # holding the write lock
                if not raw.in_transaction:
                    conn.exec_driver_sql("BEGIN IMMEDIATE")
            self._check_owner(conn)
            for table, write, columns, rows in self._parts(conn, batch):
                self._write_or_split(conn, table, write, columns, rows, refused)
        return refused

    def _write_or_split(self, conn, table, write, columns, rows, refused: list) -> None:
        savepoint = conn.begin_nested()
        try:
            write(conn, rows)
        except Exception as exc:
            savepoint.rollback()
            if not is_row_error(exc, self.engine.dialect.loaded_dbapi):
                raise
            if len(rows) == 1:
                refused.append(refusal(table, columns, rows[0], exc, self._server))
                return
            half = len(rows) // 2
            self._write_or_split(conn, table, write, columns, rows[:half], refused)
            self._write_or_split(conn, table, write, columns, rows[half:], refused)
            return
        savepoint.commit()

    # -- fencing ----------------------------------------------------------
    def _fence_before(self, conn) -> None:
        """A server: check the epoch first, share-locking its row for the transaction."""
        if self._server:
            self._check_owner(conn)

    def _fence_after(self, conn) -> None:
        """SQLite: check the epoch after the writes, before the commit. Having written, the
        transaction holds the database's write lock (pysqlite begins only at the first
        write, so a check before it would run outside the transaction): no takeover can
        commit between this check and ours. A read, so it costs no page in the WAL."""
        if not self._server:
            self._check_owner(conn)

    def _check_owner(self, conn) -> None:
        """Inside a write transaction: go on only while the ownership epoch is still ours.

        On a server the share lock on the epoch row makes a swarm taking over (which
        updates that row) wait for this transaction, and this one fail once the takeover
        committed. On SQLite see `_fence_after`.
        """
        if self._epoch is None:
            return
        sql, names, _ = self._sql(self._owner_check)
        params = {"key": OWNER_EPOCH} if names is None else (OWNER_EPOCH,)
        row = conn.exec_driver_sql(sql, params).first()
        if row is None or row[0] != self._epoch:
            raise self._lost(self._read_owner(conn))

    def _take_over(self, conn, owner: str) -> None:
        """Open a new ownership epoch: every write of a previous owner fails from now on.

        One UPDATE bumps it, so two swarms taking over at once (SQLite reads outside the
        write lock) cannot both read N and both write N + 1.
        """
        value = meta_table.c.value
        conn.execute(meta_table.update().where(meta_table.c.key == OWNER_EPOCH)
                     .values(value=sa.cast(sa.cast(value, sa.BigInteger) + 1, sa.String)))
        row = conn.execute(sa.select(value).where(meta_table.c.key == OWNER_EPOCH)).first()
        epoch = row[0] if row is not None else "1"
        for key, value in ((OWNER_EPOCH, epoch), (OWNER, owner[:256])):
            done = conn.execute(meta_table.update().where(meta_table.c.key == key)
                                .values(value=value)).rowcount
            if not done:
                conn.execute(meta_table.insert().values(key=key, value=value))
        self._epoch = epoch

    def _read_owner(self, conn=None) -> str:
        """Who owns the database now, as its owner wrote it (for messages)."""
        stmt = sa.select(meta_table.c.value).where(meta_table.c.key == OWNER)
        try:
            rows = conn.execute(stmt).all() if conn is not None else self._read(stmt)
        except (StoreError, sa.exc.SQLAlchemyError):
            rows = []
        return rows[0][0] if rows else "another swarm"

    def _lost(self, owner: str) -> OwnershipLost:
        return OwnershipLost(
            f"{self.address.display} was taken over by {owner}: this swarm stops writing to it",
            hint="the swarm that took over re-queued this one's unfinished tasks; run one "
            "swarm per database (close this one, or use the other)")
