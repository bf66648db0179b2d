"""timmy's database schema: the SQLAlchemy Core tables, their indexes, and the column orders
the write path sends rows in."""

from __future__ import annotations

import sqlalchemy as sa

#: 2 added the ``ledger`` and ``task_verify`` tables (created in a version-1 database as it
#: opens: `Store` creates missing tables; a database of either version is read by this timmy).
SCHEMA_VERSION = 2

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
    # 32: "awaiting_approval" is 17 characters (a server database made with 16 is widened
    # as it opens: `Store._migrate`)
    sa.Column("status", sa.String(32), nullable=False, index=True),
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
#: One row per paid task, written in the same transaction as its completion: what was
#: paid (the mechanism's clearing price), to whom, for which attempt, and whether the
#: result was verified (False: the task had no verifier).
ledger_table = sa.Table(
    "ledger", metadata,
    sa.Column("entry_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("task_id", sa.Integer, nullable=False, index=True),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("agent_id", sa.String(64), nullable=False, index=True),
    sa.Column("sats", sa.BigInteger, nullable=False),
    sa.Column("verified", sa.Boolean, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)
#: A task's verify spec (`timmy.market.verification`), written with the task when it is
#: posted with one: a side table, so the tasks table (and its export) keeps its columns.
task_verify_table = sa.Table(
    "task_verify", metadata,
    sa.Column("task_id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("spec", sa.Text, nullable=False),
)
#: Per agent, what its results came to (`timmy.market.reputation`): the counters its
#: reliability is computed from, written in the journal's batches as they change and read
#: back when a swarm starts, so reputation survives restarts.
reputation_table = sa.Table(
    "reputation", metadata,
    sa.Column("agent_id", sa.String(64), primary_key=True),
    sa.Column("successes", sa.Integer, nullable=False, default=0),
    sa.Column("failures", sa.Integer, nullable=False, default=0),
    sa.Column("verification_failures", sa.Integer, nullable=False, default=0),
    sa.Column("on_time", sa.Integer, nullable=False, default=0),
    sa.Column("late", sa.Integer, nullable=False, default=0),
    sa.Column("updated_at", sa.Float, nullable=False),
)
#: A task's max_price in sats (`timmy.market.budgets`), written with the task when it is
#: posted with one: a side table as task_verify (created as a database of schema 2 opens).
task_limits_table = sa.Table(
    "task_limits", metadata,
    sa.Column("task_id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("max_price", sa.BigInteger, nullable=False),
)
#: The tables every timmy database has had; the others are created as it opens.
CORE_TABLES = ("timmy_meta", "agents", "tasks", "bids", "events")

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
LEDGER_COLUMNS = ("task_id", "attempt", "agent_id", "sats", "verified", "created_at")
REPUTATION_COLUMNS = tuple(c.name for c in reputation_table.columns)
EVENT_COLUMNS = ("event_id", "ts", "kind", "task_id", "agent_id", "data")
# A page of one state, newest first (`Store.tasks`), is a range scan of this index. SQLite's
# ix_tasks_status already is one (its entries end with the rowid, which is task_id).
sa.Index("ix_tasks_status_task_id", tasks_table.c.status,
         tasks_table.c.task_id).ddl_if(dialect="postgresql")

OWNER_EPOCH = "owner_epoch"   # timmy_meta key: the fencing token of the swarm that owns it
OWNER = "owner"               # timmy_meta key: who that is, for humans
