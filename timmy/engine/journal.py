"""The coordinator's journal: state changes batched into one transaction at a time,
event ids, and the subscribers every event is published to."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import anyio
import msgspec
from anyio.abc import TaskGroup

from timmy.errors import OwnershipLost, StoreError
from timmy.market.models import AgentInfo, Event, Task
from timmy.storage.quarantine import Refused, storable
from timmy.storage.store import Batch, Store

log = logging.getLogger("timmy")

#: How the reason of a task whose row the database refused starts (see `Journal._quarantine`).
UNSTORABLE = "the database refused this task's row, so its result is not stored"
FLUSH_DELAY = 0.002   # seconds a change may wait to join a batch
CHECKPOINT_EVERY = 1.0  # seconds between SQLite WAL checkpoints while writing
_json = msgspec.json.Encoder().encode
#: A `Journal.tap` hook: (task_id, agent_id, ts, data) of one event.
Tap = Callable[[int | None, str | None, float, dict[str, Any]], None]


class Journal:
    """What the coordinator persists and publishes.

    Changes (`task_changed`, `agent_changed`, bids, events) gather in a `Batch` that a
    background loop writes a few milliseconds later in one transaction, so the hot path
    never waits for the disk; a failed write is kept and retried. `emit` numbers an event
    and hands it to every subscriber at once. ``lookup`` finds a task in memory (to rewrite
    a refused row); ``on_lost`` is told when another swarm took the database over, after
    which nothing more is written.
    """

    def __init__(self, store: Store, lookup: Callable[[int], Task | None],
                 on_lost: Callable[[OwnershipLost], None]) -> None:
        self.store = store
        self.batch = Batch()
        self.next_event = 1
        self.subscribers: list[Callable[[Event], None]] = []
        self.lost: OwnershipLost | None = None
        # Rows the database refused and that were left out of their batch (see _quarantine).
        self.rows_quarantined = 0
        self.last_quarantined: str | None = None
        self._lookup, self._on_lost = lookup, on_lost
        self._wake = anyio.Event()
        self._lock = anyio.Lock()
        self._writer = anyio.CapacityLimiter(1)
        self._last_checkpoint = time.monotonic()
        self._tg: TaskGroup | None = None
        #: Told (seconds, rows) after each batch written, e.g. by `timmy.service.metrics`.
        self.on_write: Callable[[float, int], None] | None = None
        #: kind -> hooks told (task_id, agent_id, ts, data) of each such event (see `tap`).
        self.taps: dict[str, tuple[Tap, ...]] = {}

    async def open(self) -> None:
        """Continue the store's event ids."""
        self.next_event = await anyio.to_thread.run_sync(self.store.next_event_id)

    def start(self, tg: TaskGroup) -> None:
        """Start writing batches in the background."""
        self._tg = tg
        tg.start_soon(self._flush_loop)

    # -- what is recorded -----------------------------------------------------
    def subscribe(self, callback: Callable[[Event], None]) -> Callable[[], None]:
        self.subscribers.append(callback)

        def unsubscribe() -> None:
            if callback in self.subscribers:
                self.subscribers.remove(callback)

        return unsubscribe

    def tap(self, kind: str, hook: Tap) -> Callable[[], None]:
        """Call ``hook(task_id, agent_id, ts, data)`` for every event of ``kind`` from now
        on; returns untap(). Unlike `subscribe`, no `Event` is built and other kinds cost
        the hook nothing: what a counter (`timmy.service.metrics`) needs on the hot path.
        ``data`` is the event's own dict: read it, never change it."""
        self.taps[kind] = (*self.taps.get(kind, ()), hook)

        def untap() -> None:
            hooks = tuple(h for h in self.taps.get(kind, ()) if h is not hook)
            if hooks:
                self.taps[kind] = hooks
            else:
                self.taps.pop(kind, None)

        return untap

    def emit(self, kind: str, task_id: int | None = None, agent_id: str | None = None,
             **data: Any) -> int:
        """Record an event, tell the subscribers and its kind's taps; returns its event_id."""
        event_id = self.next_event
        self.next_event += 1
        ts = time.time()
        self.batch.events.append(
            (event_id, ts, kind, task_id, agent_id, _json(data).decode()))
        if self.subscribers:
            event = Event(event_id=event_id, ts=ts, kind=kind, task_id=task_id,
                          agent_id=agent_id, data=data)
            for callback in list(self.subscribers):
                try:
                    callback(event)
                except Exception:
                    log.exception("subscriber %r failed on %s", callback, kind)
        if self.taps and kind in self.taps:
            for hook in self.taps[kind]:
                try:
                    hook(task_id, agent_id, ts, data)
                except Exception:
                    log.exception("tap %r failed on %s", hook, kind)
        self._wake.set()
        return event_id

    def task_changed(self, task: Task) -> None:
        self.batch.tasks[task.task_id] = {
            "status": task.status, "assigned_agent": task.assigned_agent,
            "price_sats": task.price_sats, "attempts": task.attempts, "result": task.result,
            "reason": task.reason, "assigned_at": task.assigned_at,
            "completed_at": task.completed_at,
        }

    def paid(self, task_id: int, attempt: int, agent_id: str, sats: int, verified: bool) -> None:
        """A paid task's ledger row, in the batch that holds its completion (one transaction)."""
        self.batch.ledger.append((task_id, attempt, agent_id, sats, verified, time.time()))
        self._wake.set()

    def rated(self, agent_id: str, counters: tuple[int, ...]) -> None:
        """An agent's reputation counters changed: its row, written over the stored one."""
        self.batch.reputation[agent_id] = (agent_id, *counters, time.time())
        self._wake.set()

    def agent_changed(self, i: AgentInfo, joined_at: float) -> None:
        self.batch.agents[i.agent_id] = {
            "agent_id": i.agent_id, "persona": i.persona, "name": i.name, "pid": i.pid,
            "status": i.status, "restarts": i.restarts, "tasks_won": i.tasks_won,
            "earned_sats": i.earned_sats, "joined_at": joined_at,
        }
        self._wake.set()

    # -- writing --------------------------------------------------------------
    async def write(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run a write transaction in a worker thread, one at a time.

        Our writes never overlap, so none waits in SQLite's busy handler (which sleeps
        in steps of milliseconds) for another of ours: a post waits at most for the
        batch being written. `OwnershipLost` is reported to ``on_lost``, then raised.
        """
        try:
            return await anyio.to_thread.run_sync(fn, *args, limiter=self._writer)
        except OwnershipLost as exc:
            self._on_lost(exc)
            raise

    async def flush(self) -> None:
        """Write every change made so far in one transaction."""
        async with self._lock:
            if self.lost is not None:   # nothing of ours may be written any more
                self.batch = Batch()
                return
            if not self.batch:
                return
            batch, self.batch = self.batch, Batch()
            started = time.perf_counter()
            try:
                refused = await self.write(self.store.apply, batch)
            except OwnershipLost:
                raise
            except StoreError:
                self.batch = self.batch.merge_into(batch)
                raise
            if self.on_write is not None:
                self.on_write(time.perf_counter() - started, batch.rows())
            if refused:
                self._quarantine(refused)

    async def flush_until(self, deadline: float | None) -> None:
        """Flush, retrying a failing store until ``deadline`` (monotonic), then raise."""
        while True:
            try:
                await self.flush()
                if self.lost is not None:   # what the caller would report was not stored
                    raise OwnershipLost(self.lost.message, hint=self.lost.hint)
                return
            except OwnershipLost:
                raise
            except StoreError:
                if deadline is not None and time.monotonic() >= deadline:
                    raise
                await anyio.sleep(0.1)

    async def save_all(self, timeout: float) -> None:
        """At close: flush, retrying a failing store for ``timeout`` seconds, then raise
        `StoreError` saying what was not saved. Shielded from cancellation."""
        with anyio.CancelScope(shield=True):
            deadline = time.monotonic() + timeout
            while True:
                try:
                    await self.flush()
                    return
                except OwnershipLost:
                    return   # said when it happened; the new owner has the work now
                except StoreError as exc:
                    if time.monotonic() >= deadline:
                        b = self.batch
                        raise StoreError(
                            f"the last changes could not be saved ({len(b.tasks)} task updates, "
                            f"{len(b.bids)} bids, {len(b.events)} events): {exc.message}",
                            hint="tasks whose completion was not saved are re-queued and run "
                            "again when a swarm next opens this database; " + exc.hint,
                        ) from exc
                    log.error("could not persist the last changes, retrying: %s", exc)
                    await anyio.sleep(0.2)

    def abandon(self, exc: OwnershipLost) -> bool:
        """Another swarm took the database over: drop what is unwritten and write nothing
        more. False if that was known already."""
        if self.lost is not None:
            return False
        self.lost = exc
        self.batch = Batch()
        return True

    def _quarantine(self, refused: list[Refused]) -> None:
        """Rows the database refused were left out of their batch, the rest of it saved:
        log and count each, and record a ``row_quarantined`` event (table, key, column,
        reason). A task's row must not silently stay behind: it is written again without
        the text that came from outside (its result, and its reason, which may quote the
        result), with a reason that says so, and keeps its status; refused even so, it
        stays as last stored (a restart re-queues it if that was unfinished)."""
        for r in refused:
            self.rows_quarantined += 1
            self.last_quarantined = r.describe()[:500]
            log.error("%s; left out, the rest of its batch is saved", r.describe())
            if r.table == "events" and r.values.get("kind") == "row_quarantined":
                continue   # one about a refused row: not recorded again
            self.emit("row_quarantined", r.key if r.table in ("tasks", "bids") else None,
                      None, table=r.table, key=storable(str(r.key))[:200],
                      column=r.column, reason=r.reason)
            task = self._lookup(r.key) if r.table == "tasks" else None
            if task is None:
                continue
            if r.values.get("result") is None and (r.values.get("reason") or "").startswith(
                    UNSTORABLE):
                log.error("task %s: its row was refused even without its result; it stays "
                          "as last stored", task.task_id)
                continue
            task.result = None
            task.reason = f"{UNSTORABLE} ({r.reason})"[:1000]
            self.task_changed(task)

    async def _checkpoint(self) -> None:
        try:
            await anyio.to_thread.run_sync(self.store.checkpoint)
        except StoreError as exc:
            log.warning("checkpoint failed: %s", exc)

    async def _flush_loop(self) -> None:
        delay = 0.05
        while True:
            await self._wake.wait()
            # Gather a few milliseconds of changes into one transaction, and leave the
            # writer free for a post that follows a completion (posts wait for no flush).
            await anyio.sleep(FLUSH_DELAY)
            self._wake = anyio.Event()
            try:
                await self.flush()
                delay = 0.05
                if time.monotonic() - self._last_checkpoint > CHECKPOINT_EVERY:
                    self._last_checkpoint = time.monotonic()
                    self._tg.start_soon(self._checkpoint)
            except OwnershipLost:
                return
            except StoreError as exc:
                log.error("%s (kept in memory, retrying in %.1fs)", exc, delay)
                await anyio.sleep(delay)
                delay = min(delay * 2, 5.0)
                self._wake.set()
