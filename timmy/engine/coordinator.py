"""The coordinator: drives the task state machine (posts, auctions, assignment,
re-queueing) on runner messages; storing, waiting, liveness and configuration are its
parts' jobs (`journal`, `waiting`, `liveness`, `config`)."""

from __future__ import annotations

import functools
import logging
import shlex
import sys
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass

import anyio
import msgspec
from anyio.abc import TaskGroup

from timmy.engine import protocol as p
from timmy.engine.agents import Agent, runner_counts, why_stalled
from timmy.engine.agents import where as _where
from timmy.engine.config import Config, check_posts, check_task_id
from timmy.engine.journal import Journal
from timmy.engine.liveness import Heartbeat
from timmy.engine.supervisor import Supervisor, Verdict
from timmy.engine.waiting import Waits
from timmy.errors import (
    ConfigError,
    OwnershipLost,
    PersonaError,
    RunnerError,
    SwarmClosed,
    WaitTimeout,
)
from timmy.llm import base_url, model_for
from timmy.market.auction import Auction, Bid
from timmy.market.bidding import BidStats
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
from timmy.storage.store import Store

# Importable from here as before: Config (tests, swarm), WaitTimeout and progress_bar (the
# client, the simulator).
__all__ = ["Config", "Coordinator", "WaitTimeout", "progress_bar"]

log = logging.getLogger("timmy")

FINISHED_CACHE = 50_000
# What a runner's end makes of its agent: its status, and the event that says so.
_AGENT_STATUS = {Verdict.RESTART: "restarting", Verdict.STOPPED: "stopped",
                 Verdict.DISCONNECTED: "disconnected", Verdict.FAILED: "failed"}
_EXIT_EVENT = {Verdict.RESTART: "agent_crashed", Verdict.STOPPED: "agent_left",
               Verdict.DISCONNECTED: "agent_disconnected", Verdict.FAILED: "agent_failed"}


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


class Coordinator:
    """Runs one swarm's auctions inside an anyio task group. Use through `AsyncSwarm`.

        queued -> bidding -> assigned -> running -> completed | failed | cancelled
           ^________|___________|__________|   (no bid from a runner with room, its runner
                                                stopped or died, the attempt failed)

    One coordinator per swarm, on one event loop. Runner messages arrive through the
    `Supervisor`; each is handled at once and synchronously, so there are no locks.
    State changes go to the `Journal`, which writes them in batches (one transaction per
    batch, an auction close always inside one) in the background, so the hot path never
    waits for the disk except where it must: a posted task is persisted before `post`
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
        self._agent_counts: dict[str, int] = {}
        self.garbage_lines = 0
        self.bids_refused = 0      # bids outside their persona's range (see _on_bid)
        self.closed = False
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
        # The parts with one job each: what is stored and published, who waits for what,
        # the awake clock and the ping rounds.
        self.journal = Journal(store, self._lookup, self._abandon)
        self.waits = Waits(self._lookup, self.stalled, self.journal)
        self.heartbeat = Heartbeat(config, self.journal.emit)
        # Their hot methods, bound once: the state machine calls them for every message.
        self._emit, self._dirty = self.journal.emit, self.journal.task_changed
        self._awake, self._just_woke = self.heartbeat.awake, self.heartbeat.just_woke
        self._watchers = self.waits.watchers   # task -> what to call when it ends

    @property
    def lost(self) -> OwnershipLost | None:
        """Set when another swarm took the database over: this one then stops (`_abandon`)."""
        return self.journal.lost

    @property
    def rows_quarantined(self) -> int:
        return self.journal.rows_quarantined

    @property
    def last_quarantined(self) -> str | None:
        return self.journal.last_quarantined

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
        await self.journal.open()
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
            self.executor, self.executor_reason = await anyio.to_thread.run_sync(
                self.cfg.resolve_auto)
            log.info("executor auto: using %s (%s)", self.executor, self.executor_reason)
            self._emit("executor_chosen", None, None, asked="auto", executor=self.executor,
                       why=self.executor_reason)
        self.journal.start(tg)
        tg.start_soon(self._deadline_loop)
        tg.start_soon(self.heartbeat.run, self.agents, self.supervisor, self._check_deadline)

    async def close(self) -> None:
        """Stop every runner, persist everything, release the store."""
        if self.closed:
            return
        self.closed = True
        if self.supervisor is not None:
            await self.supervisor.stop_all()
        await self.journal.save_all(self.cfg.close_timeout)

    def _abandon(self, exc: OwnershipLost) -> None:
        """Another swarm took the database over: stop auctioning, stop the runners, wake
        every wait() to raise. The new owner re-queued our unfinished tasks when it took
        over, so what we drop here is run there."""
        if not self.journal.abandon(exc):
            return
        self.closed = True
        log.error("%s", exc)
        self.queue.clear()
        self.auctions.clear()
        if self.supervisor is not None:
            self._tg.start_soon(self.supervisor.stop_all)
        self.waits.wake_all()

    # -- events and persistence ---------------------------------------------
    def subscribe(self, callback: Callable[[Event], None]) -> Callable[[], None]:
        return self.journal.subscribe(callback)

    async def flush(self) -> None:
        """Write every change made so far in one transaction."""
        await self.journal.flush()

    def _dirty_agent(self, agent: Agent) -> None:
        self.journal.agent_changed(agent.info, agent.joined_at)

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
        descriptions = check_posts(descriptions, task_timeout, len(self.active),
                                   self.cfg.max_queued)
        if not descriptions:
            return []
        tasks = await self.journal.write(self.store.insert_tasks, descriptions, time.time())
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
        return (await self.waits.wait_for([task_id], timeout, single=True))[0]

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
        return await self.waits.run(self.post_many, descriptions, timeout, progress, sequential)

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
        self.journal.batch.bids.extend((tid, attempt, aid, b.agent_id, b.sats, b.on_spec,
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

    def _on_exit(self, agent_id: str, returncode: int | None, verdict: Verdict) -> None:
        agent = self.agents.get(agent_id)
        if agent is None:
            return
        agent.alive = False
        agent.exit_code = returncode
        restart = verdict is Verdict.RESTART
        if restart:  # the replacement starts with what this one had learned
            self.supervisor.relaunch_with(agent_id, self._runner_argv(agent_id, agent.persona,
                                                                      agent.stats))
        agent.info.restarts = self.supervisor.slots[agent_id].restarts
        agent.info.status = _AGENT_STATUS[verdict]
        if verdict not in (Verdict.RESTART, Verdict.DISCONNECTED):
            agent.settled.set()
        agent.info.pid = agent.info.pid if restart else None
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
        crashed = verdict is not Verdict.STOPPED and not (
            verdict is Verdict.DISCONNECTED and self._just_woke())
        for i in reversed(range(len(held))):  # requeue at the front, keeping their order
            task = self.active.get(held[i])
            if task is None or task.status not in (ASSIGNED, RUNNING):
                continue
            self._decided(task, after_runner_exit(
                task.attempts, self.cfg.max_attempts, agent_id, how,
                running=task.status == RUNNING, first=i == 0, crashed=crashed))
        self._dirty_agent(agent)
        extra = {"restart_in_s": round(self.supervisor.slots[agent_id].next_delay, 3)} \
            if restart else {}
        self._emit(_EXIT_EVENT[verdict], None, agent_id, returncode=returncode,
                   **_where(agent), **extra)
        if verdict is Verdict.FAILED:
            log.error("runner %s keeps dying: gave up after %d restarts", agent_id,
                      agent.info.restarts)
        self._pump()
        if verdict in (Verdict.STOPPED, Verdict.FAILED) and self.stalled():
            self.waits.wake_all()   # each wait() then says so instead of hanging

    def stalled(self) -> str | None:
        """Why the unfinished tasks cannot be worked as things stand, or None (`why_stalled`)."""
        if not self.active or self.closed:
            return None
        return why_stalled(self.agents.values(), self.accepts_remote)

    # -- reads --------------------------------------------------------------
    def task_counts(self) -> dict[str, int]:
        """Tasks by state, from memory: unfinished ones live, finished ones counted."""
        counts = Counter(t.status for t in self.active.values())
        counts.update(self._ended)
        return {state: n for state, n in counts.items() if n}

    def status(self, counts: dict[str, int]) -> dict:
        return {
            "tasks": counts,
            "queued_in_memory": len(self.queue),
            "open_auctions": len(self.auctions),
            **runner_counts(self.agents.values()),
            "protocol_errors": self.garbage_lines,
            "bids_refused": self.bids_refused,
            "rows_quarantined": self.rows_quarantined,
            "last_quarantined": self.last_quarantined,
            "stalled": self.stalled(),
            "rule": self.cfg.rule,
            "executor": self.executor,
            "seed": self.cfg.seed,
        }

    require_task = staticmethod(check_task_id)
