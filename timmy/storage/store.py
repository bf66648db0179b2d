"""Storage: SQLAlchemy Core tables, one pooled engine per URL per process, recovery.

SQLite by default (WAL, ``synchronous=NORMAL`` and a busy timeout on every
connection); any SQLAlchemy URL works, so PostgreSQL can be the shared store.
Writes go through a few functions that each run one transaction:
`Store.insert_tasks` (a post) and `Store.apply` (a batch of state transitions:
task rows, bids, events, agents; an auction close is always inside one batch).

One swarm owns a database at a time (see `timmy.storage.ownership`). The owner's
writes are also *fenced*: `Store.recover`, which a swarm runs as it starts,
opens a new ownership epoch (a counter in ``timmy_meta``), and every later write
of that swarm checks, inside its transaction, that the epoch is still its own
(a server: under a share lock on that row, before writing; SQLite: reading it
after writing, under the database's write lock the writes took). A swarm that lost its lock without
noticing (its lock connection dropped, another swarm took over, a second swarm
got past the file lock) therefore fails its next write with `OwnershipLost`
instead of overwriting the new owner's work.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from timmy.errors import ConfigError, OwnershipLost, StoreError, TaskNotFound, TimmyError
from timmy.market.models import ACTIVE_STATES, QUEUED, AgentInfo, Event, Task
from timmy.paging import page_limit
from timmy.storage.address import DatabaseAddress, safe_url
from timmy.storage.quarantine import Refused, is_row_error, refusal

SCHEMA_VERSION = 1

metadata = sa.MetaData()

meta_table = sa.Table(
    "timmy_meta", metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.String(256), nullable=False),
)
agents_table = sa.Table(
    "agents", metadata,
    sa.Column("agent_id", sa.String(64), primary_key=True),
    sa.Column("persona", sa.String(64), nullable=False, index=True),
    sa.Column("name", sa.String(128), nullable=False),
    sa.Column("pid", sa.Integer),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("restarts", sa.Integer, nullable=False, default=0),
    sa.Column("tasks_won", sa.Integer, nullable=False, default=0),
    sa.Column("earned_sats", sa.BigInteger, nullable=False, default=0),
    sa.Column("joined_at", sa.Float),
)
tasks_table = sa.Table(
    "tasks", metadata,
    sa.Column("task_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("description", sa.Text, nullable=False),
    sa.Column("status", sa.String(16), nullable=False, index=True),
    sa.Column("assigned_agent", sa.String(64)),
    sa.Column("price_sats", sa.Integer),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("result", sa.Text),
    sa.Column("reason", sa.Text),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("assigned_at", sa.Float),
    sa.Column("completed_at", sa.Float),
)
bids_table = sa.Table(
    "bids", metadata,
    sa.Column("bid_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("task_id", sa.Integer, nullable=False, index=True),
    sa.Column("attempt", sa.Integer, nullable=False),
    # The event_id of the auction's auction_opened event. A task re-auctioned without
    # using an attempt (no bidder with room, its runner died before starting it) has
    # several auctions with the same attempt number: one winner per auction_id.
    sa.Column("auction_id", sa.BigInteger, nullable=False),
    sa.Column("agent_id", sa.String(64), nullable=False),
    sa.Column("sats", sa.Integer, nullable=False),
    sa.Column("on_spec", sa.Boolean, nullable=False),
    sa.Column("won", sa.Boolean, nullable=False),
    sa.Column("rule", sa.String(32), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)
events_table = sa.Table(
    "events", metadata,
    sa.Column("event_id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("ts", sa.Float, nullable=False),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("task_id", sa.Integer),
    sa.Column("agent_id", sa.String(64)),
    sa.Column("data", sa.Text, nullable=False),
)

TASK_COLUMNS = tuple(c.name for c in tasks_table.columns)
AGENT_COLUMNS = tuple(c.name for c in agents_table.columns)
TASK_UPDATE_COLUMNS = tuple(c for c in TASK_COLUMNS
                            if c not in ("task_id", "description", "created_at"))
AGENT_UPDATE_COLUMNS = tuple(c for c in AGENT_COLUMNS if c not in ("agent_id", "joined_at"))
_TASK_UPDATE_BINDS = ("b_task_id", *(f"b_{c}" for c in TASK_UPDATE_COLUMNS))
_AGENT_UPDATE_BINDS = ("b_agent_id", *(f"b_{c}" for c in AGENT_UPDATE_COLUMNS))
#: Column order of the tuples in `Batch.bids` and `Batch.events` (tuples, not dicts: at
#: thousands of rows a second, building dicts was a visible share of the engine's time).
BID_COLUMNS = ("task_id", "attempt", "auction_id", "agent_id", "sats", "on_spec", "won", "rule",
               "created_at")
EVENT_COLUMNS = ("event_id", "ts", "kind", "task_id", "agent_id", "data")
# A page of one state, newest first (`Store.tasks`), is a range scan of this index. SQLite's
# ix_tasks_status already is one (its entries end with the rowid, which is task_id).
sa.Index("ix_tasks_status_task_id", tasks_table.c.status,
         tasks_table.c.task_id).ddl_if(dialect="postgresql")

OWNER_EPOCH = "owner_epoch"   # timmy_meta key: the fencing token of the swarm that owns it
OWNER = "owner"               # timmy_meta key: who that is, for humans

_engines: dict[str, Engine] = {}
_engines_lock = threading.Lock()


WAL_SIZE_LIMIT = 64 * 1024 * 1024   # bytes a WAL is truncated to when a checkpoint resets it


def _sqlite_pragmas(busy_timeout_ms: int):
    def on_connect(dbapi_conn, _record) -> None:
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute(f"PRAGMA busy_timeout={busy_timeout_ms}")
        # Checkpoints run off the write path (Store.checkpoint, from the coordinator), so no
        # commit pays for copying the WAL back into the database.
        cur.execute("PRAGMA wal_autocheckpoint=0")
        # A WAL is reused from its start after a checkpoint, but never shrinks on its own:
        # under steady load it reached 815 MB. Truncate it back to 64 MiB at each reset.
        cur.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
        cur.close()

    return on_connect


def address_of(url: str | DatabaseAddress) -> DatabaseAddress:
    """``url`` parsed (`DatabaseAddress.parse`); a URL it cannot read is a `StoreError`."""
    try:
        return DatabaseAddress.parse(url)
    except ConfigError as exc:
        raise StoreError(exc.message, hint=exc.hint) from None


def get_engine(url: str | DatabaseAddress, busy_timeout: float = 5.0) -> Engine:
    """The one pooled engine for ``url`` in this process (created on first use)."""
    address = address_of(url)
    url = address.url
    key = f"{url}#{busy_timeout}"
    with _engines_lock:
        engine = _engines.get(key)
        if engine is not None:
            return engine
        kwargs: dict[str, Any] = {}
        if address.is_sqlite:
            db = address.database
            if db and db != ":memory:" and not db.startswith("file:"):
                parent = os.path.dirname(os.path.abspath(db))
                from timmy.storage.private import private_dirs, private_file

                try:
                    private_dirs(parent)   # new directories 0700 (timmy.storage.private)
                except OSError as exc:
                    raise StoreError(
                        f"cannot create the directory {parent} for {url}: {exc.strerror}",
                        hint="pass --db with a path you can write to",
                    ) from exc
                with contextlib.suppress(OSError):   # else SQLite says why it cannot
                    private_file(db)   # 0600 before SQLite makes it, its -wal, -shm 0644
            kwargs["connect_args"] = {"check_same_thread": False}
        try:
            engine = sa.create_engine(url, **kwargs)
        except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError, ImportError) as exc:
            raise StoreError(
                f"cannot use database URL {url!r}: {exc}",
                hint="check the dialect name; PostgreSQL needs pip install 'timmy[postgres]'",
            ) from exc
        if address.is_sqlite:
            sa.event.listen(engine, "connect", _sqlite_pragmas(int(busy_timeout * 1000)))
        _engines[key] = engine
        return engine


def explain(url: str | DatabaseAddress, exc: Exception) -> StoreError:
    """Turn a database exception into a `StoreError` that says what to do."""
    text = str(getattr(exc, "orig", None) or exc)
    low = text.lower()
    server = _explain_server(low)
    if server is not None:
        what, hint = server
    elif _refused_value(exc, low):
        what = "the database refused a value of a row (it does not fit its column)"
        hint = ("the database works; one value does not fit (named above): a swarm leaves "
                "such a row out of its batch, saves the rest and counts it as "
                "rows_quarantined in status(); for a post, fix that text and post it again")
    elif "unique" in low or "integrity" in low or "duplicate key" in low:
        hint = "run one swarm per database: another coordinator may be writing to it"
        what = "a row with the same key already exists"
    elif "locked" in low or "busy" in low:
        hint = "another process holds a write lock: stop the other writer or use another --db"
        what = "the database is locked by another writer"
    elif "not a database" in low or "malformed" in low or "file is encrypted" in low:
        hint = "the file is not a timmy database (or is corrupt): move it aside or use another --db"
        what = "the file is not a valid database"
    elif "readonly" in low or "read-only" in low or "permission" in low:
        hint = "make the file and its directory writable, or use another --db"
        what = "the database is read-only"
    elif "unable to open" in low:
        hint = "check that the path exists, is a file and is readable and writable"
        what = "the database file cannot be opened"
    elif "disk i/o error" in low:
        hint = ("check that the file system is writable and healthy (mount options, "
                "chattr -i, dmesg); work in flight is kept in memory and retried")
        what = "the disk refused a read or write"
    elif "disk" in low and "full" in low:
        hint = "free disk space; work in flight is kept in memory and retried"
        what = "the disk is full"
    else:
        hint = ("check that the database server is running and the URL's host, port, "
                "database name and credentials are right")
        what = "database error"
    first = text.strip().splitlines()[0][:300] if text.strip() else type(exc).__name__
    where = url.display if isinstance(url, DatabaseAddress) else safe_url(url)
    return StoreError(f"{where}: {what} ({first})", hint=hint)


def _refused_value(exc: Exception, low: str) -> bool:
    """A data or constraint error: the database refusing a value, not failing."""
    from timmy.storage.quarantine import is_row_error

    if "unique" in low or "duplicate key" in low:   # said below, with its own hint
        return False
    return is_row_error(exc, None) or any(w in low for w in (
        "out of range", "value too long", "nul (0x00)", "invalid byte sequence",
        "surrogates not allowed", "too large to convert", "violates"))


def _explain_server(low: str) -> tuple[str, str] | None:
    """(what, hint) for the errors of a database server (PostgreSQL's wording), else None."""
    if "password authentication failed" in low or "no password supplied" in low \
            or "no pg_hba.conf entry" in low or ("role" in low and "does not exist" in low):
        return ("the server refused the login",
                "check the user name and password in the URL (postgresql+psycopg://USER:"
                "PASSWORD@host/db), and that the server lets that user in (pg_hba.conf)")
    if "database" in low and "does not exist" in low:
        return ("the database does not exist",
                "create it first (createdb NAME, or CREATE DATABASE NAME as a privileged "
                "user), or fix the database name at the end of the URL")
    if "connection refused" in low or "could not connect" in low \
            or ("no such file or directory" in low and "socket" in low):
        return ("no database server answers there",
                "start the server (e.g. pg_ctlcluster 15 main start), or fix the host and "
                "port in the URL")
    if "could not translate host name" in low or "name or service not known" in low \
            or "nodename nor servname" in low:
        return ("unknown host", "fix the host name in the URL")
    if "timeout expired" in low or "timed out" in low:
        return ("the database server did not answer in time",
                "check that the host is reachable and the server running; a firewall may "
                "drop the connection")
    if "server closed the connection" in low or "terminating connection" in low \
            or "connection is closed" in low or "consuming input failed" in low:
        return ("the connection to the database server was lost",
                "check that the server is still running; work in flight is kept in memory "
                "and written again")
    if "permission denied for" in low or "must be owner of" in low:
        return ("the database user lacks a privilege",
                "grant the URL's user CREATE on the schema and SELECT, INSERT, UPDATE on "
                "timmy's tables, or connect as the user who created them")
    if "cannot execute" in low and "read-only transaction" in low:
        return ("the database is read-only (a standby, or default_transaction_read_only)",
                "point the URL at the primary server, or at a database you can write to")
    if "too many clients" in low or "remaining connection slots" in low:
        return ("the database server has no free connection",
                "raise max_connections on the server, or stop other clients")
    return None


@dataclass
class Batch:
    """State transitions to write in one transaction.

    ``tasks``: task_id -> changed columns; ``bids`` and ``events``: tuples in
    `BID_COLUMNS` / `EVENT_COLUMNS` order; ``agents``: agent_id -> row.
    """

    tasks: dict[int, dict[str, Any]] = field(default_factory=dict)
    bids: list[tuple] = field(default_factory=list)
    events: list[tuple] = field(default_factory=list)
    agents: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.tasks or self.bids or self.events or self.agents)

    def merge_into(self, older: Batch) -> Batch:
        """Put this batch's changes on top of ``older`` (used to retry a failed write)."""
        older.tasks.update(self.tasks)
        older.bids.extend(self.bids)
        older.events.extend(self.events)
        older.agents.update(self.agents)
        return older


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
    missing = [t for t in metadata.tables if t not in names]
    if missing:
        raise StoreError(f"{url} is not a timmy database (no table {missing[0]!r})",
                         hint="pass the database a swarm wrote (default data/timmy.db)")


def _task(row) -> Task:
    return Task(**dict(row._mapping))


class Store:
    """A timmy database: schema, transactions, reads. Thread-safe (one pooled engine)."""

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
        # Fencing (see the module docstring), on every database: SQLite's flock keeps a
        # second swarm out only where every opener takes it (an older timmy does not).
        self._fenced = True
        # Inserts by COPY (see _copy_rows): PostgreSQL through psycopg 3.
        self._copy = self.engine.dialect.name == "postgresql" and \
            self.engine.dialect.driver == "psycopg"
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
                missing = [t for t in metadata.tables if not sa.inspect(conn).has_table(t)]
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

    # -- writes: one transaction each --------------------------------------
    def insert_tasks(self, descriptions: Sequence[str], created_at: float) -> list[Task]:
        """Persist new queued tasks; returns them with their ids (in order)."""
        rows = [{"description": d, "status": QUEUED, "attempts": 0, "created_at": created_at}
                for d in descriptions]

        def run() -> list[int]:
            if len(rows) == 1:
                return [self._insert_one(rows[0])]
            with self.engine.begin() as conn:
                self._fence_before(conn)
                stmt = tasks_table.insert().returning(
                    tasks_table.c.task_id, sort_by_parameter_order=True
                )
                ids = [r[0] for r in conn.execute(stmt, rows)]
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

        Returns (waiting, requeued, failed): tasks still queued; tasks it left bidding,
        assigned or running, now queued again; and those whose attempts were used up,
        now failed with a reason. Agents it left alive are marked "lost". On a server
        database it first opens a new ownership epoch for ``owner`` (fencing: see the
        module docstring), so the tasks it reads are final: the old owner writes no more.
        """
        def run():
            with self.engine.begin() as conn:
                if self._fenced:
                    self._take_over(conn, owner)
                unfinished = [_task(r) for r in conn.execute(
                    sa.select(tasks_table).where(tasks_table.c.status.in_(ACTIVE_STATES))
                    .order_by(tasks_table.c.task_id))]
                waiting = [t for t in unfinished if t.status == QUEUED]
                requeued, failed = [], []
                for t in unfinished:
                    if t.status == QUEUED:
                        continue
                    if t.status in ("assigned", "running") and t.attempts >= max_attempts:
                        t.status, t.completed_at = "failed", now
                        t.reason = (f"coordinator stopped during attempt {t.attempts} "
                                    f"of {max_attempts}")
                        failed.append(t)
                    else:
                        t.status, t.assigned_agent, t.price_sats, t.assigned_at = (
                            QUEUED, None, None, None)
                        t.reason = "re-queued after a coordinator restart"
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
