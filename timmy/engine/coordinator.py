"""The engine: the task state machine, auctions, assignment, re-queueing, events.

    queued -> bidding -> assigned -> running -> completed | failed | cancelled
       ^________|___________|__________|   (no bid from a runner with room, its runner
                                            stopped or died, the attempt failed)

One coordinator per swarm, on one event loop. Runner messages arrive through the
`Supervisor`; each is handled at once and synchronously, so there are no locks.
State changes go to the store in batches (one transaction per batch, an auction
close always inside one) by a background flusher, so the hot path never waits
for the disk except where it must: a posted task is persisted before `post`
returns.

Concurrency: every live runner bids in every auction, busy or not. A runner may
hold up to ``runner_queue`` tasks (one running, the rest waiting in its own
queue); the rule picks the winner among the bids of runners that still have
room, so under a backlog specialists keep their own work until their queues
fill and only the overflow goes to the next-best bidder. As many auctions stay
open as there is room in all queues. With no bid from a runner with room, the
task goes back to the front of the queue without using an attempt. Posting
tasks one at a time gives every auction every runner with empty queues, which
is what makes a live run and a simulation of the same work pick the same
winners.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import math
import shlex
import sys
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field

import anyio
import msgspec
from anyio.abc import TaskGroup

from timmy.engine import protocol as p
from timmy.engine.executors import check_executor
from timmy.engine.supervisor import RestartPolicy, Supervisor
from timmy.errors import (
    ConfigError,
    MissingDependency,
    NoRunners,
    OwnershipLost,
    PersonaError,
    QueueFull,
    RunnerError,
    StoreError,
    SwarmClosed,
    TaskNotFound,
    WaitTimeout,
)
from timmy.llm import DEFAULT_TIMEOUT, base_url, check_models, choose_executor, model_for
from timmy.market.auction import Auction, Bid, check_rule
from timmy.market.bidding import BidStats, bid_range
from timmy.market.lifecycle import (
    CANCELLED_REASON,
    FINISH_EVENT,
    Action,
    Decision,
    after_deadline,
    after_failure,
    after_runner_exit,
    exit_how,
)
from timmy.market.models import (
    AGENT_WORKING_STATES,
    ASSIGNED,
    BIDDING,
    CANCELLED,
    COMPLETED,
    FAILED,
    QUEUED,
    RUNNING,
    TERMINAL_STATES,
    AgentInfo,
    Event,
    Task,
    copy,
)
from timmy.market.personas import PERSONAS, Persona, Words, get_persona
from timmy.paging import page_limit
from timmy.progress import progress_bar
from timmy.storage.quarantine import Refused, storable
from timmy.storage.store import Batch, Store

log = logging.getLogger("timmy")

FINISHED_CACHE = 50_000
#: How the reason of a task whose row the database refused starts (see _quarantine).
UNSTORABLE = "the database refused this task's row, so its result is not stored"
_json = msgspec.json.Encoder().encode
FLUSH_DELAY = 0.002   # seconds a change may wait to join a batch
CHECKPOINT_EVERY = 1.0  # seconds between SQLite WAL checkpoints while writing
STALL_NOTICE = 1.0      # seconds the service itself may oversleep before it says so
_BOOTTIME = getattr(time, "CLOCK_BOOTTIME", None)   # Linux: counts through a system suspend


def _boottime() -> float:
    """A clock that goes on through a system suspend (CLOCK_MONOTONIC does not, on Linux);
    the monotonic clock where there is none."""
    return time.clock_gettime(_BOOTTIME) if _BOOTTIME is not None else time.monotonic()


@dataclass
class Config:
    """How a swarm behaves; validated on construction."""

    seed: int = 0
    executor: str = "simulated"
    task_seconds: float = 0.05
    auction_window: float = 2.0
    rule: str = "specialist_first"
    max_attempts: int = 3
    personas: dict[str, Persona] = field(default_factory=lambda: dict(PERSONAS))
    restart: RestartPolicy = field(default_factory=RestartPolicy)
    runner_command: Sequence[str] | None = None   # replaces `python -m timmy.engine.runner` (tests)
    max_queued: int = 100_000      # unfinished tasks the swarm holds; past it post() refuses
    runner_queue: int = 32         # tasks a runner may hold (running + waiting): past that its
                                   # bids are passed over. 1 = a runner works only when idle
    ping_interval: float = 5.0     # seconds between pings to each runner
    ping_timeout: float = 30.0     # a runner silent this long is deemed hung and restarted
    hello_timeout: float = 15.0    # a restarted or remote runner's time to say hello
    task_timeout: float | None = None  # seconds a runner may work on one task (None: no limit)
    close_timeout: float = 10.0    # how long closing keeps trying to save the last changes
    # The Ollama executor (see timmy.llm): one model for all, or {persona id: model};
    # the server (None: OLLAMA_HOST, else the local default); how long it may stay silent.
    model: str | dict[str, str] | None = None
    ollama_host: str | None = None
    ollama_timeout: float = DEFAULT_TIMEOUT

    def __post_init__(self) -> None:
        check_rule(self.rule)
        check_executor(self.executor)
        _check_number("seed", self.seed, -(2**63), 2**63 - 1, "pass seed=1 (any integer)",
                      integer=True)
        _check_number("auction_window", self.auction_window, 1e-3, 3600, "the default is 2.0")
        _check_number("task_seconds", self.task_seconds, 0, 3600,
                      "0 makes simulated tasks instant; the default is 0.05")
        _check_number("runner_queue", self.runner_queue, 1, 1000, "the default is 32",
                      integer=True)
        _check_number("max_attempts", self.max_attempts, 1, 100, "the default is 3",
                      integer=True)
        _check_number("max_queued", self.max_queued, 1, 100_000_000, "the default is 100000",
                      integer=True)
        _check_number("ping_interval", self.ping_interval, 0.01, 3600, "the default is 5.0")
        _check_number("ping_timeout", self.ping_timeout, 0.1, 86400, "the default is 30.0")
        _check_number("close_timeout", self.close_timeout, 0, 3600, "the default is 10.0")
        _check_number("hello_timeout", self.hello_timeout, 0.01, 3600, "the default is 15.0")
        check_task_timeout(self.task_timeout)
        if self.ping_timeout <= self.ping_interval:
            raise ConfigError(
                f"ping_timeout ({self.ping_timeout}s) must be longer than ping_interval "
                f"({self.ping_interval}s), or every runner would be restarted at every ping",
                hint="keep ping_timeout several times ping_interval (defaults: 30 and 5)")
        _check_number("ollama_timeout", self.ollama_timeout, 0.01, 86400,
                      f"the default is {DEFAULT_TIMEOUT:g}")
        check_models(self.model, self.personas)
        if self.ollama_host is not None and not isinstance(self.ollama_host, str):
            raise ConfigError(f"ollama_host must be a URL string, got {self.ollama_host!r}",
                              hint="e.g. http://127.0.0.1:11434")
        if self.executor in ("ollama", "auto"):
            base_url(self.ollama_host)             # a bad address (or OLLAMA_HOST) fails here
            for persona_id in self.personas:       # ... and a bad TIMMY_OLLAMA_MODEL
                model_for(persona_id, self.model)
        if self.executor == "ollama" and importlib.util.find_spec("ollama") is None:
            raise MissingDependency("the ollama executor needs the ollama Python client",
                                    hint='pip install "timmy[llm]"')
        if self.runner_command is not None and (
            isinstance(self.runner_command, str)
            or not all(isinstance(a, str) for a in self.runner_command)
        ):
            raise ConfigError(f"runner_command must be a list of strings, got "
                              f"{self.runner_command!r}",
                              hint='e.g. runner_command=["python", "my_runner.py"]')


def _check_number(name: str, value: object, lo: float, hi: float, hint: str,
                  integer: bool = False) -> None:
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or not lo <= value <= hi:
        what = "an integer" if integer else "a number"
        raise ConfigError(f"{name} must be {what} in [{lo:g}, {hi:g}], got {value!r}", hint=hint)


def check_task_timeout(value: object) -> None:
    """A task's execution deadline: None (no limit) or seconds, up to 30 days."""
    if value is not None:
        _check_number("task_timeout", value, 0.01, 30 * 86400,
                      "seconds a runner may work on one task, e.g. task_timeout=600; None "
                      "for no limit")


@dataclass(eq=False)
class Agent:
    info: AgentInfo
    persona: Persona
    ready: anyio.Event = field(default_factory=anyio.Event)     # said hello at least once
    settled: anyio.Event = field(default_factory=anyio.Event)   # said hello, or gave up
    exit_code: int | None = None
    alive: bool = False
    tasks: dict[int, None] = field(default_factory=dict)   # held tasks, in assignment order
    last_seen: float = 0.0         # on the coordinator's awake clock (see Coordinator._awake)
    head: int | None = None        # the first task it holds: the one it works on
    head_since: float = 0.0        # since when (awake clock): its task_timeout counts from here
    joined_at: float = field(default_factory=time.time)
    # What the runner has learned, mirrored from the auctions and results it took part
    # in, so a replacement process starts where the dead one left off.
    stats: BidStats = field(default_factory=BidStats)
    # The prices its persona's rule can bid, off-spec and on-spec (`bid_range`): a bid
    # outside them is refused (see `Coordinator._on_bid`).
    bid_ranges: tuple[tuple[int, int], ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.bid_ranges = (bid_range(self.persona, False), bid_range(self.persona, True))


@dataclass(eq=False)
class OpenAuction:
    auction: Auction
    task: Task
    attempt: int
    deadline: float
    auction_id: int = 0    # the event_id of its auction_opened event: unique per auction
    words: Words | None = None   # the description split once, for judging every bid (_on_bid)


@functools.lru_cache(maxsize=4096)
def _matched(persona: Persona, description: str) -> tuple[str, ...]:
    """A persona's keywords in a description, cached: workloads repeat descriptions, and
    this runs for every result on the engine's hot path."""
    return tuple(persona.matched_keywords(description))


def _persona_fields(persona: Persona) -> dict:
    """A persona as `timmy.market.personas.persona_from_dict` reads it back (for a runner)."""
    fields = ("id", "name", "role", "description", "capabilities", "rate_sats", "bid_base",
              "bid_jitter", "preferred_keywords")
    return {f: getattr(persona, f) for f in fields}


def _where(agent: Agent) -> dict:
    """``peer`` for an event about a remote runner; nothing for a local one."""
    return {"peer": agent.info.peer} if agent.info.peer is not None else {}


def check_timeout(timeout: object) -> None:
    if timeout is not None and (isinstance(timeout, bool)
                                or not isinstance(timeout, int | float) or timeout < 0):
        raise ConfigError(f"timeout must be a number of seconds or None, got {timeout!r}",
                          hint="e.g. timeout=10, or None to wait as long as it takes")


def check_description(description: object) -> str:
    if not isinstance(description, str):
        raise ConfigError(f"a task description must be a string, got "
                          f"{type(description).__name__}", hint="post('describe the work')")
    if not description.strip():
        raise ConfigError("a task description is empty",
                          hint="describe the work, e.g. 'fix the bug in the api client'")
    try:
        description.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ConfigError(f"a task description is not valid text: {exc.reason} at position "
                          f"{exc.start}", hint="remove the stray surrogate characters") from None
    if "\x00" in description:   # a server database's text cannot hold it (PostgreSQL)
        raise ConfigError(f"a task description contains a NUL character (\\x00) at position "
                          f"{description.index(chr(0))}",
                          hint="remove it: databases such as PostgreSQL cannot store it")
    if len(description) > p.MAX_DESCRIPTION:
        raise ConfigError(
            f"a task description is {len(description)} characters long, over the "
            f"{p.MAX_DESCRIPTION}-character limit",
            hint="shorten it, or split the work into several tasks",
        )
    return description


class Coordinator:
    """Runs one swarm's auctions inside an anyio task group. Use through `AsyncSwarm`."""

    def __init__(self, store: Store, config: Config) -> None:
        self.store, self.cfg = store, config
        self.agents: dict[str, Agent] = {}
        self.active: dict[int, Task] = {}
        self.finished: OrderedDict[int, Task] = OrderedDict()
        # Finished tasks by state: read once at start, then counted as tasks finish, so
        # status() never scans the history (unfinished ones are counted from `active`).
        self._ended: Counter[str] = Counter()
        self.queue: deque[int] = deque()
        self.auctions: dict[int, OpenAuction] = {}
        self._deadlines: deque[OpenAuction] = deque()
        self._deadline_wake = anyio.Event()
        self._watchers: dict[int, list[Callable[[Task], None]]] = {}  # task -> when it ends
        self._subscribers: list[Callable[[Event], None]] = []
        self._batch = Batch()
        self._flush_wake = anyio.Event()
        self._flush_lock = anyio.Lock()
        self._writer = anyio.CapacityLimiter(1)
        self._last_checkpoint = time.monotonic()
        self._next_event = 1
        self._agent_counts: dict[str, int] = {}
        self.garbage_lines = 0
        self.bids_refused = 0      # bids outside their persona's range (see _on_bid)
        # Rows the database refused and that were left out of their batch (see _quarantine).
        self.rows_quarantined = 0
        self.last_quarantined: str | None = None
        self.closed = False
        # Set when another swarm took the database over: this one then stops (see _abandon).
        self.lost: OwnershipLost | None = None
        self._waits: set[anyio.Event] = set()   # what wakes a wait() to tell it so
        # Liveness counts only the time the service was awake (see _awake, _heartbeat_loop).
        self._slept = 0.0            # monotonic seconds the heartbeat found it overslept
        self._tick_due = math.inf    # when the heartbeat should wake next (monotonic)
        self._woke = -math.inf       # when it last noticed it had stalled (monotonic)
        self._timeouts: dict[int, float] = {}   # per-post task_timeout of unfinished tasks
        # Set by the swarm service: remote runners may dial in, so a swarm with no agents
        # yet is waiting for them rather than stalled (see stalled()).
        self.accepts_remote = False
        self._tg: TaskGroup | None = None
        self.supervisor: Supervisor | None = None
        # What runners are told to use: the configured executor, with "auto" resolved at
        # start (one probe of the Ollama server), and why.
        self.executor = config.executor
        self.executor_reason = ""

    # -- lifecycle ----------------------------------------------------------
    async def start(self, tg: TaskGroup) -> None:
        self._tg = tg
        self.supervisor = Supervisor(tg, on_message=self._on_message, on_exit=self._on_exit,
                                     on_garbage=self._on_garbage, policy=self.cfg.restart,
                                     clock=self._awake)
        now = time.time()
        from timmy.storage.ownership import whoami

        waiting, requeued, failed = await anyio.to_thread.run_sync(
            self.store.recover, self.cfg.max_attempts, now, whoami())
        self._next_event = await anyio.to_thread.run_sync(self.store.next_event_id)
        self._agent_counts = await anyio.to_thread.run_sync(self.store.agent_counts)
        stored = await anyio.to_thread.run_sync(self.store.status_counts)
        self._ended.update({s: stored[s] for s in TERMINAL_STATES if stored.get(s)})
        for task in sorted(waiting + requeued, key=lambda t: t.task_id):
            self.active[task.task_id] = task
            self.queue.append(task.task_id)
        for task in requeued:
            self._emit("task_requeued", task.task_id, reason=task.reason)
        for task in failed:
            self._remember(task)
            self._emit("task_failed", task.task_id, reason=task.reason)
        if self.cfg.executor == "auto":
            await self._choose_executor()
        tg.start_soon(self._flush_loop)
        tg.start_soon(self._deadline_loop)
        tg.start_soon(self._heartbeat_loop)

    async def _choose_executor(self) -> None:
        """Resolve "auto": Ollama if its server answers with every model the personas use."""
        models = [model_for(pid, self.cfg.model) for pid in self.cfg.personas]
        self.executor, self.executor_reason = await anyio.to_thread.run_sync(
            choose_executor, self.cfg.ollama_host, models)
        log.info("executor auto: using %s (%s)", self.executor, self.executor_reason)
        self._emit("executor_chosen", None, None, asked="auto", executor=self.executor,
                   why=self.executor_reason)

    async def close(self) -> None:
        """Stop every runner, persist everything, release the store."""
        if self.closed:
            return
        self.closed = True
        if self.supervisor is not None:
            await self.supervisor.stop_all()
        with anyio.CancelScope(shield=True):
            deadline = time.monotonic() + self.cfg.close_timeout
            while True:
                try:
                    await self.flush()
                    return
                except OwnershipLost:
                    return   # said when it happened; the new owner has the work now
                except StoreError as exc:
                    if time.monotonic() >= deadline:
                        b = self._batch
                        raise StoreError(
                            f"the last changes could not be saved ({len(b.tasks)} task updates, "
                            f"{len(b.bids)} bids, {len(b.events)} events): {exc.message}",
                            hint="tasks whose completion was not saved are re-queued and run "
                            "again when a swarm next opens this database; " + exc.hint,
                        ) from exc
                    log.error("could not persist the last changes, retrying: %s", exc)
                    await anyio.sleep(0.2)

    # -- events and persistence ---------------------------------------------
    def subscribe(self, callback: Callable[[Event], None]) -> Callable[[], None]:
        self._subscribers.append(callback)

        def unsubscribe() -> None:
            if callback in self._subscribers:
                self._subscribers.remove(callback)

        return unsubscribe

    def _emit(self, kind: str, task_id: int | None = None, agent_id: str | None = None,
              **data) -> int:
        """Record an event, tell the subscribers; returns its event_id."""
        event_id = self._next_event
        self._next_event += 1
        ts = time.time()
        self._batch.events.append(
            (event_id, ts, kind, task_id, agent_id, _json(data).decode()))
        if self._subscribers:
            event = Event(event_id=event_id, ts=ts, kind=kind, task_id=task_id,
                          agent_id=agent_id, data=data)
            for callback in list(self._subscribers):
                try:
                    callback(event)
                except Exception:
                    log.exception("subscriber %r failed on %s", callback, kind)
        self._flush_wake.set()
        return event_id

    def _dirty(self, task: Task) -> None:
        self._batch.tasks[task.task_id] = {
            "status": task.status, "assigned_agent": task.assigned_agent,
            "price_sats": task.price_sats, "attempts": task.attempts, "result": task.result,
            "reason": task.reason, "assigned_at": task.assigned_at,
            "completed_at": task.completed_at,
        }

    def _dirty_agent(self, agent: Agent) -> None:
        i = agent.info
        self._batch.agents[i.agent_id] = {
            "agent_id": i.agent_id, "persona": i.persona, "name": i.name, "pid": i.pid,
            "status": i.status, "restarts": i.restarts, "tasks_won": i.tasks_won,
            "earned_sats": i.earned_sats, "joined_at": agent.joined_at,
        }
        self._flush_wake.set()

    async def _checkpoint(self) -> None:
        try:
            await anyio.to_thread.run_sync(self.store.checkpoint)
        except StoreError as exc:
            log.warning("checkpoint failed: %s", exc)

    async def _write(self, fn, *args):
        """Run a write transaction in a worker thread, one at a time.

        Our writes never overlap, so none waits in SQLite's busy handler (which sleeps
        in steps of milliseconds) for another of ours: a post waits at most for the
        batch being written.
        """
        return await anyio.to_thread.run_sync(fn, *args, limiter=self._writer)

    async def flush(self) -> None:
        """Write every change made so far in one transaction."""
        async with self._flush_lock:
            if self.lost is not None:   # nothing of ours may be written any more
                self._batch = Batch()
                return
            if not self._batch:
                return
            batch, self._batch = self._batch, Batch()
            try:
                refused = await self._write(self.store.apply, batch)
            except OwnershipLost as exc:
                self._abandon(exc)
                raise
            except StoreError:
                self._batch = self._batch.merge_into(batch)
                raise
            if refused:
                self._quarantine(refused)

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
            self._emit("row_quarantined", r.key if r.table in ("tasks", "bids") else None,
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
            self._dirty(task)

    def _abandon(self, exc: OwnershipLost) -> None:
        """Another swarm took the database over: stop auctioning, stop the runners, wake
        every wait() to raise. The new owner re-queued our unfinished tasks when it took
        over, so what we drop here is run there."""
        if self.lost is not None:
            return
        self.lost = exc
        self.closed = True
        log.error("%s", exc)
        self._batch = Batch()
        self.queue.clear()
        self.auctions.clear()
        if self.supervisor is not None:
            self._tg.start_soon(self.supervisor.stop_all)
        for wake in self._waits:
            wake.set()

    async def _flush_loop(self) -> None:
        delay = 0.05
        while True:
            await self._flush_wake.wait()
            # Gather a few milliseconds of changes into one transaction, and leave the
            # writer free for a post that follows a completion (posts wait for no flush).
            await anyio.sleep(FLUSH_DELAY)
            self._flush_wake = anyio.Event()
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
                self._flush_wake.set()

    # -- agents -------------------------------------------------------------
    def _runner_spec(self, agent_id: str, persona: Persona,
                     stats: BidStats | None = None) -> p.RunnerSpec:
        """What a runner of ``persona`` starts with: a catalog persona by id, another by its
        fields; the Ollama settings resolved here, so every runner asks the same server."""
        ollama = self.executor == "ollama"
        return p.RunnerSpec(
            agent_id=agent_id, seed=self.cfg.seed, executor=self.executor,
            persona=persona.id if PERSONAS.get(persona.id) == persona
            else _persona_fields(persona),
            task_seconds=self.cfg.task_seconds, ollama_timeout=self.cfg.ollama_timeout,
            model=model_for(persona.id, self.cfg.model) if ollama else None,
            ollama_host=base_url(self.cfg.ollama_host) if ollama else msgspec.UNSET,
            stats=stats.to_dict() if stats is not None and stats.auctions else None)

    def _runner_argv(self, agent_id: str, persona: Persona,
                     stats: BidStats | None = None) -> list[str]:
        if self.cfg.runner_command is not None:
            base = list(self.cfg.runner_command)
        else:
            base = [sys.executable, "-m", "timmy.engine.runner"]
        return [*base, "--spec", p.encode_spec(self._runner_spec(agent_id, persona, stats))]

    async def spawn(self, persona_id: str, timeout: float = 15.0) -> AgentInfo:
        """Start one runner for ``persona_id`` and wait until it says hello."""
        self._check_open()
        persona = get_persona(persona_id, self.cfg.personas) if isinstance(persona_id, str) \
            else self._bad_persona(persona_id)
        agent_id = self._new_agent_id(persona)
        agent = Agent(AgentInfo(agent_id=agent_id, persona=persona.id, name=persona.name),
                      persona)
        argv = self._runner_argv(agent_id, persona)
        self.agents[agent_id] = agent
        try:
            slot = await self.supervisor.start(agent_id, argv)
        except RunnerError:
            del self.agents[agent_id]
            raise
        agent.info.pid = slot.pid
        self._dirty_agent(agent)
        with anyio.move_on_after(timeout):
            await agent.settled.wait()
        if not agent.ready.is_set():
            await self.supervisor.stop(agent_id)
            if agent.settled.is_set():
                what = (f"ended with exit code {agent.exit_code} before saying hello "
                        f"(started {agent.info.restarts + 1} times)")
            else:
                what = f"did not say hello within {timeout:.0f}s"
            raise RunnerError(f"runner {agent_id} {what}",
                              hint=f"run it by hand to see its error: {shlex.join(argv)}")
        return copy(agent.info)

    def _new_agent_id(self, persona: Persona) -> str:
        """``persona-N``, N one more than the agents this persona has had (a remote runner may
        have taken a name of that form: it is skipped)."""
        n = self._agent_counts.get(persona.id, 0) + 1
        while f"{persona.id}-{n}" in self.agents:
            n += 1
        self._agent_counts[persona.id] = n
        return f"{persona.id}-{n}"

    @staticmethod
    def _bad_persona(value) -> Persona:
        raise PersonaError(f"a persona id must be a string, got {type(value).__name__}",
                           hint="spawn('forge'), or see `timmy personas`")

    async def spawn_all(self, personas: Iterable[str] | None = None) -> list[AgentInfo]:
        """One runner per persona (all of the swarm's catalog by default), started together."""
        if isinstance(personas, str):
            raise PersonaError("spawn_all() takes a list of persona ids, got one string",
                               hint=f"use spawn({personas!r}) or spawn_all([{personas!r}])")
        ids = list(self.cfg.personas if personas is None else personas)
        for pid in ids:
            get_persona(pid, self.cfg.personas)
        results: dict[int, AgentInfo] = {}

        async def one(i: int, pid: str) -> None:
            results[i] = await self.spawn(pid)

        async with anyio.create_task_group() as tg:
            for i, pid in enumerate(ids):
                tg.start_soon(one, i, pid)
        return [results[i] for i in range(len(ids))]

    async def stop_agent(self, agent_id: str) -> AgentInfo:
        agent = self._agent(agent_id)
        await self.supervisor.stop(agent_id)
        return copy(agent.info)

    def kill_agent(self, agent_id: str) -> None:
        """SIGKILL an agent's runner process (it is restarted, its task re-auctioned); cut a
        remote runner's connection (it dials in again)."""
        self._agent(agent_id)
        self.supervisor.kill(agent_id)

    def _agent(self, agent_id: str) -> Agent:
        agent = self.agents.get(agent_id)
        if agent is None:
            raise ConfigError(f"no agent {agent_id!r} in this swarm",
                              hint=f"agents: {', '.join(self.agents) or '(none: spawn one)'}")
        return agent

    def agent_infos(self, limit: int | None = None, after: str | None = None) -> list[AgentInfo]:
        """One page of agents by agent_id (`timmy.paging`): the first, or after ``after``."""
        ids = sorted(a for a in self.agents if after is None or a > after)
        return [copy(self.agents[a].info) for a in ids[:page_limit(limit)]]

    # -- remote runners -----------------------------------------------------
    async def serve_remote(self, persona_id: str, agent_id: str | None, stats: dict | None,
                           reader, writer, peer: str,
                           answer: Callable[[p.Welcome], Awaitable[None]]) -> None:
        """A runner that dialled in to the swarm service (``timmy runner --connect``).

        Admits it as ``agent_id`` (an agent it was before, or a new one; the service names
        it when it gives no id), ``answer``s it with what it needs to bid as a local runner
        would (the persona, the seed, the executor, the learned counters), then serves its
        connection until it ends. It is then one more runner: it bids, wins, is pinged, and
        when its connection drops its tasks are re-auctioned as after a crash. Raises
        `ConfigError` or `PersonaError`, before answering, when it cannot join.
        """
        self._check_open()
        persona = get_persona(persona_id, self.cfg.personas)
        agent = self.agents.get(agent_id) if agent_id else None
        if agent is None:
            learned = None if stats is None else BidStats.from_dict(stats, "the runner's stats")
            agent_id = agent_id or self._new_agent_id(persona)
            agent = Agent(AgentInfo(agent_id=agent_id, persona=persona.id, name=persona.name),
                          persona)
            if learned is not None:   # a runner back after a service restart: as it learned
                agent.stats = learned
            self.agents[agent_id] = agent
            self.supervisor.add_remote(agent_id)
        elif not self.supervisor.slots[agent_id].remote:
            raise ConfigError(f"{agent_id} is a runner this swarm started itself",
                              hint="give the remote runner another --agent-id, or none (the "
                                   "service then names it)")
        elif agent.persona.id != persona.id:
            raise ConfigError(f"{agent_id} is a {agent.persona.id} agent, not {persona.id}",
                              hint=f"connect as --persona {agent.persona.id}, or use another "
                                   "--agent-id")
        slot = self.supervisor.slots[agent_id]
        link = self.supervisor.connect(agent_id, reader, writer, peer)
        agent.info.peer = peer
        self._dirty_agent(agent)
        welcome = p.Welcome(**{   # the spec, the persona by its fields, the server not named
            **msgspec.structs.asdict(self._runner_spec(agent_id, persona)),
            "persona": _persona_fields(persona), "ollama_host": msgspec.UNSET,
            "stats": agent.stats.to_dict(),
            "ping_interval": self.cfg.ping_interval, "ping_timeout": self.cfg.ping_timeout})
        await self.supervisor.serve_remote(slot, link, answer(welcome))

    # -- tasks --------------------------------------------------------------
    def _check_open(self) -> None:
        if self.lost is not None:
            raise OwnershipLost(self.lost.message, hint=self.lost.hint)
        if self.closed:
            raise SwarmClosed("this swarm has stopped",
                              hint="start a new one: with timmy.Swarm(...) as swarm: ...")

    async def post_many(self, descriptions: Sequence[str],
                        task_timeout: float | None = None) -> list[Task]:
        """Persist new tasks (one transaction), queue them and start auctions.

        ``task_timeout``: seconds a runner may work on each of them before it is restarted
        and the task re-auctioned (see `_check_deadline`); None takes the swarm's. It is
        kept in memory: tasks recovered after a restart take the swarm's.
        """
        self._check_open()
        check_task_timeout(task_timeout)
        if isinstance(descriptions, str):
            raise ConfigError("post_many() takes a list of descriptions, got one string",
                              hint="use post(description) for one task, or pass [description]")
        descriptions = [check_description(d) for d in descriptions]
        if not descriptions:
            return []
        if len(self.active) + len(descriptions) > self.cfg.max_queued:
            raise QueueFull(
                f"{len(self.active):,} tasks are unfinished and the cap is "
                f"{self.cfg.max_queued:,}: {len(descriptions):,} more would not fit",
                hint="wait for some to finish (swarm.wait / run), post fewer at once, or "
                     "start the swarm with a higher max_queued (--max-queued)")
        try:
            tasks = await self._write(self.store.insert_tasks, descriptions, time.time())
        except OwnershipLost as exc:
            self._abandon(exc)
            raise
        for task in tasks:
            self.active[task.task_id] = task
            self.queue.append(task.task_id)
            if task_timeout is not None:
                self._timeouts[task.task_id] = task_timeout
            self._emit("task_posted", task.task_id, description=task.description)
        out = [copy(t) for t in tasks]
        self._pump()
        return out

    def _lookup(self, task_id: int) -> Task | None:
        return self.active.get(task_id) or self.finished.get(task_id)

    async def task(self, task_id: int) -> Task:
        """One task as it stands: from memory, else from the store."""
        t = self._lookup(task_id)
        if t is not None:
            return copy(t)
        await self.flush()
        return await anyio.to_thread.run_sync(self.store.task, task_id)

    async def wait(self, task_id: int, timeout: float | None = None) -> Task:
        """Wait until a task is completed, failed or cancelled."""
        return (await self._wait_for([task_id], timeout, single=True))[0]

    async def run(self, descriptions: Sequence[str], timeout: float | None = None,
                  progress=False, sequential: bool = False) -> list[Task]:
        """Post many tasks and wait for all of them.

        ``progress``: True shows a tqdm bar (a widget in Jupyter, text in a terminal); a tqdm
        object is updated instead (the sync `Swarm` creates it in the caller's thread, so
        Jupyter shows it under the cell that asked). ``sequential``: post each task only
        when the previous one has finished, so every auction hears every runner with the
        same history: a seeded run then repeats exactly, and `timmy.sim.simulator.simulate` of the
        same descriptions picks the same winners. ``timeout`` bounds the whole run.
        """
        check_timeout(timeout)
        bar = progress_bar(len(descriptions)) if progress is True else (progress or None)
        try:
            if not sequential:
                tasks = await self.post_many(descriptions)
                return await self._wait_for([t.task_id for t in tasks], timeout, bar)
            done: list[Task] = []
            with anyio.fail_after(timeout):   # None: no limit
                for description in descriptions:
                    task = (await self.post_many([description]))[0]
                    done += await self._wait_for([task.task_id], None, bar)
            return done
        except TimeoutError as exc:
            if isinstance(exc, WaitTimeout):
                raise
            raise WaitTimeout(
                f"{len(descriptions) - len(done)} of {len(descriptions)} tasks unfinished "
                f"after {timeout}s (posted one at a time)",
                hint="pass a longer timeout, or check swarm.status() for live runners",
            ) from None
        finally:
            if progress is True:
                bar.close()

    def _unfinished(self, ids: Sequence[int], remaining: set[int], single: bool) -> str:
        """What a wait says of the tasks it did not see finish: where they stand."""
        states = ", ".join(sorted({self._lookup(i).status for i in remaining}))
        return (f"task {ids[0]} is still {states}" if single
                else f"{len(remaining)} of {len(ids)} tasks unfinished (still {states})")

    def _raise_stalled(self, why: str, ids: Sequence[int], remaining: set[int],
                       single: bool) -> None:
        what = self._unfinished(ids, remaining, single)
        hint = ("spawn runners: swarm.spawn_all() or swarm.spawn('forge'), `timmy spawn`, or "
                "Spawn on a dashboard; the tasks stay queued and run once a runner is live")
        if "failed" in why:
            hint += ("; swarm.agents() and the agent_failed events say why they died "
                     "(`timmy serve --max-restarts` lifts the crash-loop guard)")
        them = "it" if single else "them"
        raise NoRunners(f"{what} and no runner can take {them}: {why}", hint=hint)

    async def _wait_for(self, ids: Sequence[int], timeout: float | None, bar=None,
                        single: bool = False) -> list[Task]:
        """The tasks ``ids`` once all are finished, in order; `WaitTimeout` after ``timeout``."""
        check_timeout(timeout)
        started = time.monotonic()
        done: dict[int, Task] = {}
        remaining: set[int] = set()
        unknown: list[int] = []
        for i in ids:
            t = self._lookup(i)
            if t is None:
                unknown.append(i)
            elif t.status in TERMINAL_STATES:
                done[i] = copy(t)
            else:
                remaining.add(i)
        if unknown:  # finished long ago (or never existed): the store knows
            await self.flush()
            for t in await anyio.to_thread.run_sync(self.store.tasks, None, None, unknown):
                done[t.task_id] = t
            for i in unknown:
                if i not in done:
                    raise TaskNotFound(f"no task with id {i}",
                                       hint="use the task_id of a Task returned by post()")
        if bar is not None:
            bar.update(len(done))
        all_done = anyio.Event()

        def watch(task: Task) -> None:
            remaining.discard(task.task_id)
            done[task.task_id] = copy(task)
            if bar is not None:
                bar.update(1)
            if not remaining:
                all_done.set()

        for i in remaining:
            self._watchers.setdefault(i, []).append(watch)
        self._waits.add(all_done)
        try:
            if remaining and self.lost is None and not self.stalled():
                with anyio.move_on_after(timeout):   # lost or stalled: it would never end
                    await all_done.wait()
            if remaining and self.lost is not None:
                raise OwnershipLost(self.lost.message, hint=self.lost.hint)
            if remaining and (why := self.stalled()):
                self._raise_stalled(why, ids, remaining, single)
            if remaining:
                what = self._unfinished(ids, remaining, single)
                raise WaitTimeout(
                    f"{what} after {timeout}s",
                    hint="wait longer, check swarm.status(), or spawn runners if there are none",
                )
        finally:
            self._waits.discard(all_done)
            for i in remaining:
                watchers = self._watchers.get(i, [])
                if watch in watchers:
                    watchers.remove(watch)
                if not watchers:
                    self._watchers.pop(i, None)
        # What we report as finished is stored, so a crash cannot undo it. A locked
        # database is waited out, within the caller's timeout.
        await self._flush_until(None if timeout is None else started + timeout)
        return [done[i] for i in ids]

    async def _flush_until(self, deadline: float | None) -> None:
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

    async def cancel(self, task_id: int) -> Task:
        """Cancel an unfinished task; a finished one is returned as it is.

        A task already assigned stays in its runner's queue until the runner reports
        (the protocol has no message to take it back); its result is then ignored.
        """
        task = self.active.get(task_id)
        if task is None:
            return await self.task(task_id)
        if task.status == BIDDING:
            open_ = self.auctions.pop(task_id)
            self._record_bids(open_, open_.auction.bids.values(), None)
            data = p.encode(p.AuctionClosed(task_id=task_id, winner=None, price_sats=None))
            for aid in open_.auction.bids:
                self.supervisor.send(aid, data)
                self.agents[aid].stats.record_auction(False)
        task.reason = CANCELLED_REASON
        self._finish(task, CANCELLED)
        self._pump()
        return copy(task)

    def _remember(self, task: Task) -> None:
        self.active.pop(task.task_id, None)
        self._timeouts.pop(task.task_id, None)
        self.finished[task.task_id] = task
        if len(self.finished) > FINISHED_CACHE:
            self.finished.popitem(last=False)

    def _finish(self, task: Task, status: str, result: str | None = None, **data) -> None:
        if task.task_id in self.active:
            self._ended[status] += 1
        task.status = status
        task.completed_at = time.time()
        if result is not None:
            task.result = result
        self._dirty(task)
        self._remember(task)
        self._emit(FINISH_EVENT[status], task.task_id, task.assigned_agent,
                   price_sats=task.price_sats, attempts=task.attempts,
                   reason=task.reason if status != COMPLETED else None, **data)
        for watch in self._watchers.pop(task.task_id, ()):
            watch(task)

    def _decided(self, task: Task, decision: Decision, **data) -> None:
        """After an attempt ended without a result: what `timmy.market.lifecycle` decided
        (auction again, with or without the attempt spent, or fail)."""
        task.attempts, task.reason = decision.attempts, decision.reason
        if decision.action == Action.FAIL:
            self._finish(task, FAILED, **data)
        else:
            self._requeue(task, decision.reason, **data)

    def _requeue(self, task: Task, reason: str, **data) -> None:
        task.reason = reason
        task.status, task.assigned_agent, task.price_sats, task.assigned_at = QUEUED, None, \
            None, None
        self._dirty(task)
        self.queue.appendleft(task.task_id)
        self._emit("task_requeued", task.task_id, reason=reason, attempts=task.attempts, **data)

    # -- auctions -----------------------------------------------------------
    def _pump(self) -> None:
        """Open auctions for queued tasks while runners have room in their queues."""
        if not self.queue or self.closed:
            return
        cap = self.cfg.runner_queue
        live = [a.info.agent_id for a in self.agents.values() if a.alive]
        room = sum(max(0, cap - len(self.agents[a].tasks)) for a in live)
        if len(self.auctions) >= room:
            return
        deadline = self._awake() + self.cfg.auction_window   # a stall of ours is no window
        opened: list[OpenAuction] = []
        while self.queue and len(self.auctions) < room:
            task = self.active.get(self.queue.popleft())
            if task is None or task.status != QUEUED:
                continue
            attempt = task.attempts + 1
            auction = Auction(task.task_id, live, self.cfg.rule)
            open_ = OpenAuction(auction, task, attempt, deadline)
            self.auctions[task.task_id] = open_
            self._deadlines.append(open_)
            task.status = BIDDING
            self._dirty(task)
            open_.auction_id = self._emit("auction_opened", task.task_id, attempt=attempt,
                                          eligible=len(live))
            opened.append(open_)
        if not opened:
            return
        self._deadline_wake.set()
        data = b"".join(p.encode(p.Announce(task_id=o.task.task_id, description=o.task.description,
                                            attempt=o.attempt)) for o in opened)
        for aid in live:
            self.supervisor.send(aid, data)

    async def _deadline_loop(self) -> None:
        while True:
            if not self._deadlines:
                await self._deadline_wake.wait()
                self._deadline_wake = anyio.Event()
                continue
            open_ = self._deadlines[0]
            if self.auctions.get(open_.task.task_id) is not open_:
                self._deadlines.popleft()
                continue
            delay = open_.deadline - self._awake()
            if delay > 0:
                await anyio.sleep(delay)
                continue
            self._deadlines.popleft()
            self._close_auction(open_, reason="window")
            self._pump()

    def _record_bids(self, open_: OpenAuction, bids: Iterable[Bid], winner: str | None) -> None:
        """Write an auction's bids: at its close, or when a bidder or the auction went away."""
        now = time.time()
        tid, attempt, aid, rule = open_.task.task_id, open_.attempt, open_.auction_id, self.cfg.rule
        self._batch.bids.extend((tid, attempt, aid, b.agent_id, b.sats, b.on_spec,
                                 b.agent_id == winner, rule, now) for b in bids)

    def _close_auction(self, open_: OpenAuction, reason: str = "complete") -> bool:
        """Clear an auction; True when it found a winner."""
        task, auction = open_.task, open_.auction
        tid = task.task_id
        del self.auctions[tid]
        cap = self.cfg.runner_queue
        unavailable = [a for a in auction.bids
                       if not self.agents[a].alive or len(self.agents[a].tasks) >= cap]
        clearing = auction.close(unavailable=unavailable)
        now = time.time()
        rule = self.cfg.rule
        winner = clearing.winner
        self._record_bids(open_, auction.bids.values(), winner)
        self._emit("auction_closed", tid, winner, price_sats=clearing.price_sats, rule=rule,
                   why=clearing.reason, bids=len(auction.bids), closed_by=reason,
                   attempt=open_.attempt)
        if auction.bids:
            data = p.encode(p.AuctionClosed(task_id=tid, winner=winner,
                                            price_sats=clearing.price_sats))
            for aid in auction.bids:
                self.supervisor.send(aid, data)
                self.agents[aid].stats.record_auction(aid == winner)
        if winner is None:
            task.status = QUEUED
            self._dirty(task)
            self.queue.appendleft(tid)
            return False
        agent = self.agents[winner]
        agent.tasks[tid] = None
        if agent.head is None:
            self._set_head(agent)
        agent.info.status = "busy"
        agent.info.tasks_won += 1
        self._dirty_agent(agent)
        task.status, task.assigned_agent, task.price_sats = ASSIGNED, winner, clearing.price_sats
        task.attempts, task.assigned_at = open_.attempt, now
        self._dirty(task)
        self.supervisor.send(winner, p.encode(p.Assign(task_id=tid, description=task.description,
                                                       attempt=open_.attempt)))
        self._emit("task_assigned", tid, winner, price_sats=clearing.price_sats,
                   attempt=open_.attempt)
        return True

    # -- runner messages ----------------------------------------------------
    def _awake(self) -> float:
        """The awake clock: monotonic seconds minus those the service itself lost.

        A runner is hung only if it stayed silent while the service was awake (DESIGN.md,
        "Operating rules"), and a task's deadline counts only awake time too. The heartbeat
        knows when it should wake; whatever it sleeps past that (the process stopped, the
        machine suspended, the event loop blocked by a slow call) is time in which nobody
        could read the runners, so it does not count. While the heartbeat is overdue the
        clock stands still; when it wakes it books the lateness (`_heartbeat_loop`).
        """
        now = time.monotonic()
        return now - self._slept - max(0.0, now - self._tick_due)

    def _just_woke(self) -> bool:
        """The service is coming out of a stall of its own: the heartbeat is overdue by more
        than STALL_NOTICE, or it noticed a stall within the last ping_interval."""
        now = time.monotonic()
        return (now - self._tick_due > STALL_NOTICE
                or now - self._woke < self.cfg.ping_interval)

    async def _heartbeat_loop(self) -> None:
        """Ping every live runner; one that stays silent past ping_timeout is restarted, and
        one that holds a task past its task_timeout is restarted and the task re-auctioned.

        Both are judged on the awake clock (`_awake`). A wake more than STALL_NOTICE late
        (by the monotonic clock, or by the boot-time clock, which also counts a system
        suspend) means the service itself stalled: it says so (a log line and a
        ``service_stalled`` event), gives every runner a fresh ping_timeout, and judges
        nobody this round, so that what the runners sent meanwhile is read first.
        """
        seq = 0
        interval = self.cfg.ping_interval
        self._tick_due = time.monotonic() + interval
        boot = _boottime()
        while True:
            await anyio.sleep(max(0.0, self._tick_due - time.monotonic()))
            now, boot_now = time.monotonic(), _boottime()
            late = max(0.0, now - self._tick_due)        # stopped, or the loop was blocked
            lost = max(late, boot_now - boot - interval)  # ... or the machine was suspended
            self._slept += late
            self._tick_due, boot = now + interval, boot_now
            seq += 1
            awake = self._awake()
            data = p.encode(p.Ping(seq=seq))
            if lost > STALL_NOTICE:
                self._woke = now
                log.warning("the service itself stalled for %.1fs (stopped, suspended or its "
                            "event loop blocked): its runners get a fresh %gs before any is "
                            "deemed hung", lost, self.cfg.ping_timeout)
                self._emit("service_stalled", None, None, stalled_s=round(lost, 3),
                           suspended_s=round(max(0.0, lost - late), 3))
                for agent_id, agent in self.agents.items():
                    agent.last_seen = awake
                    if agent.alive:
                        self.supervisor.send(agent_id, data)
                continue
            for agent_id, agent in list(self.agents.items()):
                if not agent.alive:
                    self._check_hello(agent_id, awake)
                    continue
                if awake - agent.last_seen > self.cfg.ping_timeout:
                    silent = awake - agent.last_seen
                    log.warning("runner %s silent for %.0fs: restarting it", agent_id, silent)
                    self._emit("agent_hung", None, agent_id, silent_s=round(silent))
                    agent.last_seen = awake
                    self.supervisor.kill(agent_id)
                    continue
                self.supervisor.send(agent_id, data)
                if agent.head is not None:
                    self._check_deadline(agent, awake)

    def _set_head(self, agent: Agent) -> None:
        """After the tasks an agent holds changed: the first is the one it works on (it
        works its queue in order); its task_timeout counts from when it became first."""
        head = next(iter(agent.tasks), None)
        if head != agent.head:
            agent.head, agent.head_since = head, self._awake()

    def _check_deadline(self, agent: Agent, awake: float) -> None:
        """The execution deadline (``task_timeout``, the post's or the swarm's), checked at
        every ping round, so it fires up to ping_interval late.

        A runner that answers pings but holds its task past the deadline may still be
        working on it, so it is restarted (SIGKILL, as `kill` does; a remote runner's
        connection is cut and it dials in again): the task is auctioned again with the
        attempt spent and the reason recorded ("no result within 5s", failed after
        max_attempts as usual), and the tasks waiting behind it in that runner's queue go
        back to the market without spending one.
        """
        tid = agent.head
        limit = self._timeouts.get(tid, self.cfg.task_timeout)
        if limit is None or awake - agent.head_since <= limit:
            return
        agent_id = agent.info.agent_id
        log.warning("runner %s sent no result for task %d within %gs: restarting it",
                    agent_id, tid, limit)
        held = list(agent.tasks)
        agent.tasks.clear()
        agent.head = None
        # No new work until its replacement says hello; its open bids are withdrawn when the
        # kill is reported (_on_exit), which then finds no task left to requeue.
        agent.alive = False
        task = self.active.get(tid)
        self._emit("task_timed_out", tid, agent_id, timeout_s=limit,
                   attempt=task.attempts if task is not None else None, queued_behind=len(held) - 1)
        for i in reversed(range(len(held))):  # requeue at the front, keeping their order
            task = self.active.get(held[i])
            if task is None or task.status not in (ASSIGNED, RUNNING) \
                    or task.assigned_agent != agent_id:
                continue
            self._decided(task, after_deadline(task.attempts, self.cfg.max_attempts, agent_id,
                                               limit, first=i == 0, head_task_id=tid))
        agent.info.status = "restarting"
        self._dirty_agent(agent)
        self.supervisor.kill(agent_id)
        self._pump()

    def _check_hello(self, agent_id: str, now: float) -> None:
        """Cut off a runner whose hello is overdue (``hello_timeout``; a restarted process
        stuck before it, a remote connection that handshook and went quiet): it is then
        restarted or dials in again, instead of holding its agent in "starting" or
        "restarting" for ever. Checked at every ping round."""
        slot = self.supervisor.slots.get(agent_id)
        link = slot.link if slot is not None else None
        if link is None or not link.open or slot.stopping:
            return
        if not slot.remote and not self.agents[agent_id].ready.is_set():
            return          # a first start: spawn() waits for that hello with its timeout
        silent = now - link.since    # both on the awake clock: a stall of ours is not its silence
        if silent > self.cfg.hello_timeout:
            log.warning("runner %s said no hello in %.0fs: cutting it off", agent_id, silent)
            self._emit("agent_hung", None, agent_id, silent_s=round(silent), before_hello=True)
            link.cut()

    def _on_message(self, agent_id: str, msg) -> None:
        agent = self.agents.get(agent_id)
        if agent is None:
            return
        agent.last_seen = self._awake()
        match msg:
            case p.Bid(task_id=tid, sats=sats):
                open_ = self.auctions.get(tid)
                if open_ is not None:
                    self._on_bid(agent, open_, sats)
            case p.Decline(task_id=tid):
                open_ = self.auctions.get(tid)
                if (open_ is not None and open_.auction.decline(agent_id)
                        and open_.auction.complete and self._close_auction(open_)):
                    self._pump()
            case p.Started(task_id=tid):
                task = self.active.get(tid)
                if task is not None and task.status == ASSIGNED and task.assigned_agent == agent_id:
                    task.status = RUNNING
                    self._dirty(task)
                    self._emit("task_started", tid, agent_id)
            case p.Result():
                self._on_result(agent, msg)
            case p.Hello(agent_id=said, pid=pid):
                if said != agent_id:
                    self.supervisor.bad_line(agent_id, p.ProtocolError(
                        f"hello from {said!r} on {agent_id}'s pipe", hint=""))
                    return
                if agent.alive:
                    self.supervisor.bad_line(agent_id, p.ProtocolError(
                        f"a second hello from live runner {agent_id}", hint=""))
                    return
                first = not agent.ready.is_set()
                slot = self.supervisor.slots[agent_id]
                agent.alive = True
                agent.info.pid, agent.info.status = pid, "idle"
                agent.info.restarts = slot.restarts
                self._dirty_agent(agent)
                kind = "agent_joined" if first else \
                    "agent_reconnected" if slot.remote else "agent_restarted"
                self._emit(kind, None, agent_id, persona=agent.persona.id, pid=pid,
                           restarts=agent.info.restarts, **_where(agent))
                agent.ready.set()
                agent.settled.set()
                self._pump()
            case p.Pong():
                pass
            case p.Bye():   # its connection ends next: as stopped, not as a crash
                self.supervisor.leaving(agent_id)

    def _on_bid(self, agent: Agent, open_: OpenAuction, sats: int) -> None:
        """A runner's bid, judged by what the service knows rather than by the runner's word.

        Whether the task is on the persona's speciality is decided here, from the persona
        the service holds (not one a runner describes) and the task's description, with
        the keyword match `quote` uses: the runner's ``on_spec`` is ignored, so live runs
        and the simulator still agree. A price the persona's rule cannot make for such a
        task (`bid_range`) is dropped as a bad line: logged with the runner's id, counted
        (``protocol_errors`` and ``bids_refused``), a ``protocol_error`` event, and a runner
        that keeps at it is cut off as one sending garbage is. The auction goes on without
        it (as if it had declined, so it does not wait for the window to end).
        """
        agent_id, task = agent.info.agent_id, open_.task
        if open_.words is None:
            open_.words = Words.of(task.description)
        on_spec = bool(agent.persona.matched_in(open_.words))
        lo, hi = agent.bid_ranges[on_spec]
        if not lo <= sats <= hi:
            self.bids_refused += 1
            pid = agent.persona.id
            self.supervisor.bad_line(agent_id, p.ProtocolError(
                f"bid of {sats} sats for task {task.task_id} "
                f"({'on' if on_spec else 'off'}-spec for {pid}) is outside {pid}'s range "
                f"{lo}..{hi}: refused", hint="bid what timmy.market.bidding.quote prices"))
            if open_.auction.decline(agent_id) and open_.auction.complete \
                    and self._close_auction(open_):
                self._pump()
            return
        if open_.auction.submit(Bid(agent_id, sats, on_spec)):
            self._emit("bid", task.task_id, agent_id, sats=sats, on_spec=on_spec,
                       attempt=open_.attempt)
            if open_.auction.complete and self._close_auction(open_):
                self._pump()

    def _on_result(self, agent: Agent, result: p.Result) -> None:
        tid, ok, output = result.task_id, result.ok, result.output
        if "\x00" in output:   # what a server database's text cannot hold: shown as such
            output = output.replace("\x00", "\ufffd")
        if tid not in agent.tasks:
            return
        del agent.tasks[tid]
        if tid == agent.head:
            self._set_head(agent)
        done = self._lookup(tid)
        if done is not None:  # as the runner did: learn from the outcome
            agent.stats.record_result(ok, _matched(agent.persona, done.description))
        if not agent.tasks:
            agent.info.status = "idle"
        task = self.active.get(tid)
        if task is not None and task.status in (ASSIGNED, RUNNING) \
                and task.assigned_agent == agent.info.agent_id:
            # How long it took, and what a model-backed execution used: into the event.
            measured = {"elapsed_s": round(result.elapsed_s, 6)}
            if result.usage is not None:
                measured["usage"] = msgspec.structs.asdict(result.usage)
            if ok:
                agent.info.earned_sats += task.price_sats or 0
                task.reason = None
                self._finish(task, COMPLETED, result=output, **measured)
            else:
                task.result = output
                self._decided(task, after_failure(task.attempts, self.cfg.max_attempts,
                                                  agent.info.agent_id, output,
                                                  permanent=result.permanent), **measured)
        self._dirty_agent(agent)
        self._pump()

    def _on_garbage(self, agent_id: str, exc: p.ProtocolError) -> None:
        self.garbage_lines += 1
        log.warning("runner %s sent a bad line: %s", agent_id, exc.message)
        self._emit("protocol_error", None, agent_id, error=exc.message[:300])

    def _on_exit(self, agent_id: str, returncode: int | None, verdict: str) -> None:
        agent = self.agents.get(agent_id)
        if agent is None:
            return
        agent.alive = False
        agent.exit_code = returncode
        if verdict == "restart":  # the replacement starts with what this one had learned
            self.supervisor.slots[agent_id].argv = self._runner_argv(agent_id, agent.persona,
                                                                     agent.stats)
        agent.info.restarts = self.supervisor.slots[agent_id].restarts
        agent.info.status = {"restart": "restarting", "stopped": "stopped",
                             "disconnected": "disconnected"}.get(verdict, "failed")
        if verdict not in ("restart", "disconnected"):
            agent.settled.set()
        agent.info.pid = None if verdict != "restart" else agent.info.pid
        for open_ in list(self.auctions.values()):
            if agent_id in open_.auction.eligible:
                gone = open_.auction.bids.get(agent_id)
                if gone is not None:
                    self._record_bids(open_, [gone], None)
                open_.auction.withdraw(agent_id)
                if open_.auction.complete:
                    self._close_auction(open_)
        held = list(agent.tasks)
        agent.tasks.clear()
        agent.head = None
        how = exit_how(verdict, returncode)
        # The runner works its queue in order: the first task it held was (about to be)
        # running and uses up its attempt, even if "started" never arrived (a task that kills
        # its runner must not loop forever); the tasks waiting behind it keep theirs. A runner
        # stopped on purpose (stop(), or the swarm closing) costs no task an attempt. A remote
        # runner whose connection dropped counts as crashed: nobody can tell it did not.
        # A connection lost while the service itself stalled (a remote runner hears nothing
        # for ping_timeout and dials in again) is no fault of the runner's either.
        crashed = verdict != "stopped" and not (verdict == "disconnected" and self._just_woke())
        for i in reversed(range(len(held))):  # requeue at the front, keeping their order
            task = self.active.get(held[i])
            if task is None or task.status not in (ASSIGNED, RUNNING):
                continue
            self._decided(task, after_runner_exit(
                task.attempts, self.cfg.max_attempts, agent_id, how,
                running=task.status == RUNNING, first=i == 0, crashed=crashed))
        self._dirty_agent(agent)
        kind = {"restart": "agent_crashed", "stopped": "agent_left",
                "disconnected": "agent_disconnected"}.get(verdict, "agent_failed")
        extra = {"restart_in_s": round(self.supervisor.slots[agent_id].next_delay, 3)} \
            if verdict == "restart" else {}
        self._emit(kind, None, agent_id, returncode=returncode, **_where(agent), **extra)
        if verdict == "failed":
            log.error("runner %s keeps dying: gave up after %d restarts", agent_id,
                      agent.info.restarts)
        self._pump()
        if verdict in ("stopped", "failed") and self.stalled():
            for wake in self._waits:   # each wait() then says so instead of hanging
                wake.set()

    def stalled(self) -> str | None:
        """Why the unfinished tasks cannot be worked as things stand, or None.

        Stalled: no agent is live or on its way back (starting, restarting, a remote runner
        reconnecting), because every one was stopped or failed, or none was spawned. A
        swarm that remote runners can join (``timmy serve``) and that has no agents yet is
        waiting for them, not stalled.
        """
        if not self.active or self.closed:
            return None
        agents = list(self.agents.values())
        if any(a.info.status in AGENT_WORKING_STATES for a in agents):
            return None
        if not agents:
            return None if self.accepts_remote else "no runner was spawned"
        failed = [a.info.agent_id for a in agents if a.info.status == "failed"]
        if not failed:
            return "every runner was stopped"
        named = ", ".join(failed[:3]) + (f" and {len(failed) - 3} more" if len(failed) > 3
                                         else "")
        was = "was" if len(failed) == 1 else "were"
        return f"every runner was stopped or failed ({named} kept dying and {was} given up on)"

    # -- reads --------------------------------------------------------------
    def task_counts(self) -> dict[str, int]:
        """Tasks by state, from memory: unfinished ones live, finished ones counted."""
        counts = Counter(t.status for t in self.active.values())
        counts.update(self._ended)
        return {state: n for state, n in counts.items() if n}

    def status(self, counts: dict[str, int]) -> dict:
        by_state: dict[str, int] = {}
        for a in self.agents.values():
            by_state[a.info.status] = by_state.get(a.info.status, 0) + 1
        return {
            "tasks": counts,
            "queued_in_memory": len(self.queue),
            "open_auctions": len(self.auctions),
            "runners_live": sum(a.alive for a in self.agents.values()),
            "runners_free": sum(a.alive and not a.tasks for a in self.agents.values()),
            "runners_remote": sum(a.alive and a.info.peer is not None
                                  for a in self.agents.values()),
            "agents": by_state,
            "protocol_errors": self.garbage_lines,
            "bids_refused": self.bids_refused,
            "rows_quarantined": self.rows_quarantined,
            "last_quarantined": self.last_quarantined,
            "stalled": self.stalled(),
            "rule": self.cfg.rule,
            "executor": self.executor,
            "seed": self.cfg.seed,
        }

    def require_task(self, task_id: int) -> None:
        if not isinstance(task_id, int) or isinstance(task_id, bool):
            raise TaskNotFound(f"task ids are integers, got {task_id!r}",
                               hint="use the task_id of a Task returned by post()")
        if not 1 <= task_id <= 2**62:
            raise TaskNotFound(f"no task with id {task_id}",
                               hint="task ids start at 1; use the task_id returned by post()")
