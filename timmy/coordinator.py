"""The engine: the task state machine, auctions, assignment, re-queueing, events.

    queued -> bidding -> assigned -> running -> completed | failed | cancelled
       ^________|___________|__________|   (no free bidder, runner died, attempt failed)

One coordinator per swarm, on one event loop. Runner messages arrive through the
`Supervisor`; each is handled at once and synchronously, so there are no locks.
State changes go to the store in batches (one transaction per batch, an auction
close always inside one) by a background flusher, so the hot path never waits
for the disk except where it must: a posted task is persisted before `post`
returns.

Concurrency: as many auctions stay open as there are free runners, each
announced to every free runner. When an auction closes, the best bid from a
runner that is still free wins (bids from runners that won another auction in
the meantime are withdrawn); with no such bid the task goes back to the front
of the queue without using an attempt. Posting tasks one at a time therefore
gives every auction all free runners, which is what makes a live run and a
simulation of the same work pick the same winners.
"""

from __future__ import annotations

import logging
import sys
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import anyio
import msgspec
from anyio.abc import TaskGroup

from . import protocol as p
from .auction import Auction, Bid, check_rule
from .errors import ConfigError, PersonaError, StoreError, TaskNotFound, TimmyError
from .executors import check_executor
from .models import (
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
from .personas import PERSONAS, Persona, get_persona
from .store import Batch, Store
from .supervisor import RestartPolicy, Supervisor

log = logging.getLogger("timmy")

FINISHED_CACHE = 50_000


class WaitTimeout(TimmyError, TimeoutError):
    """A wait ran out of time before its tasks finished."""


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
    runner_command: Sequence[str] | None = None   # replaces `python -m timmy.runner` (tests)
    ping_interval: float = 5.0     # seconds between pings to each runner
    ping_timeout: float = 30.0     # a runner silent this long is deemed hung and restarted

    def __post_init__(self) -> None:
        check_rule(self.rule)
        check_executor(self.executor)
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ConfigError(f"seed must be an integer, got {self.seed!r}",
                              hint="pass seed=1 (any integer)")
        if not 0 < self.auction_window <= 3600:
            raise ConfigError(f"auction_window must be in (0, 3600] seconds, got "
                              f"{self.auction_window!r}", hint="the default is 2.0")
        if not 0 <= self.task_seconds <= 3600:
            raise ConfigError(f"task_seconds must be in [0, 3600], got {self.task_seconds!r}",
                              hint="0 makes simulated tasks instant; the default is 0.05")
        if not 1 <= self.max_attempts <= 100:
            raise ConfigError(f"max_attempts must be in [1, 100], got {self.max_attempts!r}",
                              hint="the default is 3")


@dataclass(eq=False)
class Agent:
    info: AgentInfo
    persona: Persona
    ready: anyio.Event = field(default_factory=anyio.Event)
    alive: bool = False
    task_id: int | None = None
    last_seen: float = 0.0

    @property
    def free(self) -> bool:
        return self.alive and self.task_id is None


@dataclass(eq=False)
class OpenAuction:
    auction: Auction
    task: Task
    attempt: int
    deadline: float


def check_description(description: object) -> str:
    if not isinstance(description, str):
        raise ConfigError(f"a task description must be a string, got "
                          f"{type(description).__name__}", hint="post('describe the work')")
    if not description.strip():
        raise ConfigError("a task description is empty",
                          hint="describe the work, e.g. 'fix the bug in the api client'")
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
        self.queue: deque[int] = deque()
        self.auctions: dict[int, OpenAuction] = {}
        self._deadlines: deque[OpenAuction] = deque()
        self._deadline_wake = anyio.Event()
        self._waiters: dict[int, list[anyio.Event]] = {}
        self._watchers: list[Callable[[Task], None]] = []
        self._subscribers: list[Callable[[Event], None]] = []
        self._batch = Batch()
        self._flush_wake = anyio.Event()
        self._flush_lock = anyio.Lock()
        self._next_event = 1
        self._agent_counts: dict[str, int] = {}
        self.garbage_lines = 0
        self.closed = False
        self._tg: TaskGroup | None = None
        self.supervisor: Supervisor | None = None

    # -- lifecycle ----------------------------------------------------------
    async def start(self, tg: TaskGroup) -> None:
        self._tg = tg
        self.supervisor = Supervisor(tg, on_message=self._on_message, on_exit=self._on_exit,
                                     on_garbage=self._on_garbage, policy=self.cfg.restart)
        now = time.time()
        requeued, failed = await anyio.to_thread.run_sync(
            self.store.recover, self.cfg.max_attempts, now)
        self._next_event = await anyio.to_thread.run_sync(self.store.next_event_id)
        self._agent_counts = await anyio.to_thread.run_sync(self.store.agent_counts)
        for task in requeued:
            self.active[task.task_id] = task
            self.queue.append(task.task_id)
            if task.reason:
                self._emit("task_requeued", task.task_id, reason=task.reason)
        for task in failed:
            self._remember(task)
            self._emit("task_failed", task.task_id, reason=task.reason)
        tg.start_soon(self._flush_loop)
        tg.start_soon(self._deadline_loop)
        tg.start_soon(self._heartbeat_loop)

    async def close(self) -> None:
        """Stop every runner, persist everything, release the store."""
        if self.closed:
            return
        self.closed = True
        if self.supervisor is not None:
            await self.supervisor.stop_all()
        with anyio.CancelScope(shield=True):
            for _ in range(3):
                try:
                    await self.flush()
                    break
                except StoreError as exc:
                    log.error("could not persist the last changes: %s", exc)
                    await anyio.sleep(0.2)

    # -- events and persistence ---------------------------------------------
    def subscribe(self, callback: Callable[[Event], None]) -> Callable[[], None]:
        self._subscribers.append(callback)

        def unsubscribe() -> None:
            if callback in self._subscribers:
                self._subscribers.remove(callback)

        return unsubscribe

    def _emit(self, kind: str, task_id: int | None = None, agent_id: str | None = None,
              **data) -> None:
        event_id = self._next_event
        self._next_event += 1
        ts = time.time()
        self._batch.events.append({
            "event_id": event_id, "ts": ts, "kind": kind, "task_id": task_id,
            "agent_id": agent_id, "data": msgspec.json.encode(data).decode(),
        })
        if self._subscribers:
            event = Event(event_id=event_id, ts=ts, kind=kind, task_id=task_id,
                          agent_id=agent_id, data=data)
            for callback in list(self._subscribers):
                try:
                    callback(event)
                except Exception:
                    log.exception("subscriber %r failed on %s", callback, kind)
        self._flush_wake.set()

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
            "earned_sats": i.earned_sats, "joined_at": time.time(),
        }
        self._flush_wake.set()

    async def flush(self) -> None:
        """Write every change made so far in one transaction."""
        async with self._flush_lock:
            if not self._batch:
                return
            batch, self._batch = self._batch, Batch()
            try:
                await anyio.to_thread.run_sync(self.store.apply, batch)
            except StoreError:
                self._batch = self._batch.merge_into(batch)
                raise

    async def _flush_loop(self) -> None:
        delay = 0.05
        while True:
            await self._flush_wake.wait()
            self._flush_wake = anyio.Event()
            try:
                await self.flush()
                delay = 0.05
            except StoreError as exc:
                log.error("%s (kept in memory, retrying in %.1fs)", exc, delay)
                await anyio.sleep(delay)
                delay = min(delay * 2, 5.0)
                self._flush_wake.set()

    # -- agents -------------------------------------------------------------
    def _runner_argv(self, agent_id: str, persona: Persona) -> list[str]:
        if self.cfg.runner_command is not None:
            base = list(self.cfg.runner_command)
        else:
            base = [sys.executable, "-m", "timmy.runner"]
        if PERSONAS.get(persona.id) == persona:
            spec = persona.id
        else:
            fields = ("id", "name", "role", "description", "capabilities", "rate_sats",
                      "bid_base", "bid_jitter", "preferred_keywords")
            spec = msgspec.json.encode({f: getattr(persona, f) for f in fields}).decode()
        return base + ["--agent-id", agent_id, "--persona", spec, "--seed", str(self.cfg.seed),
                       "--executor", self.cfg.executor,
                       "--task-seconds", repr(self.cfg.task_seconds)]

    async def spawn(self, persona_id: str, timeout: float = 15.0) -> AgentInfo:
        """Start one runner for ``persona_id`` and wait until it says hello."""
        self._check_open()
        persona = get_persona(persona_id, self.cfg.personas) if isinstance(persona_id, str) \
            else self._bad_persona(persona_id)
        n = self._agent_counts.get(persona.id, 0) + 1
        self._agent_counts[persona.id] = n
        agent_id = f"{persona.id}-{n}"
        agent = Agent(AgentInfo(agent_id=agent_id, persona=persona.id, name=persona.name),
                      persona)
        self.agents[agent_id] = agent
        slot = await self.supervisor.start(agent_id, self._runner_argv(agent_id, persona))
        agent.info.pid = slot.pid
        self._dirty_agent(agent)
        with anyio.move_on_after(timeout):
            await agent.ready.wait()
        if not agent.ready.is_set():
            await self.supervisor.stop(agent_id)
            raise TimmyError(f"runner {agent_id} did not say hello within {timeout:.0f}s",
                             hint="run `python -m timmy.runner --help` to check the install")
        return copy(agent.info)

    @staticmethod
    def _bad_persona(value) -> Persona:
        raise PersonaError(f"a persona id must be a string, got {type(value).__name__}",
                           hint="spawn('forge'), or see `timmy personas`")

    async def spawn_all(self, personas: Iterable[str] | None = None) -> list[AgentInfo]:
        """One runner per persona (all of the swarm's catalog by default), started together."""
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
        """SIGKILL an agent's runner process (it is restarted, its task re-auctioned)."""
        self._agent(agent_id)
        self.supervisor.kill(agent_id)

    def _agent(self, agent_id: str) -> Agent:
        agent = self.agents.get(agent_id)
        if agent is None:
            raise ConfigError(f"no agent {agent_id!r} in this swarm",
                              hint=f"agents: {', '.join(self.agents) or '(none: spawn one)'}")
        return agent

    def agent_infos(self) -> list[AgentInfo]:
        return [copy(a.info) for a in self.agents.values()]

    # -- tasks --------------------------------------------------------------
    def _check_open(self) -> None:
        if self.closed:
            from .errors import SwarmClosed
            raise SwarmClosed("this swarm has stopped",
                              hint="start a new one: with timmy.Swarm(...) as swarm: ...")

    async def post_many(self, descriptions: Sequence[str]) -> list[Task]:
        """Persist new tasks (one transaction), queue them and start auctions."""
        self._check_open()
        descriptions = [check_description(d) for d in descriptions]
        if not descriptions:
            return []
        tasks = await anyio.to_thread.run_sync(self.store.insert_tasks, descriptions, time.time())
        for task in tasks:
            self.active[task.task_id] = task
            self.queue.append(task.task_id)
            self._emit("task_posted", task.task_id, description=task.description)
        out = [copy(t) for t in tasks]
        self._pump()
        return out

    def task(self, task_id: int) -> Task | None:
        t = self.active.get(task_id) or self.finished.get(task_id)
        return copy(t) if t is not None else None

    async def wait(self, task_id: int, timeout: float | None = None) -> Task:
        task = self.active.get(task_id) or self.finished.get(task_id)
        if task is None:
            await self.flush()
            task = await anyio.to_thread.run_sync(self.store.task, task_id)
            return task
        if task.status not in TERMINAL_STATES:
            event = anyio.Event()
            self._waiters.setdefault(task_id, []).append(event)
            with anyio.move_on_after(timeout):
                await event.wait()
            task = self.active.get(task_id) or self.finished.get(task_id)
            if task.status not in TERMINAL_STATES:
                waiters = self._waiters.get(task_id, [])
                if event in waiters:
                    waiters.remove(event)
                raise WaitTimeout(
                    f"task {task_id} is still {task.status} after {timeout}s",
                    hint="wait longer, check swarm.status(), or spawn runners if there are none",
                )
        return copy(task)

    async def run(self, descriptions: Sequence[str], timeout: float | None = None,
                  progress: bool = False) -> list[Task]:
        """Post many tasks and wait for all of them; optionally show a tqdm progress bar."""
        remaining: set[int] = set()
        done = anyio.Event()
        bar = None
        if progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=len(descriptions), desc="tasks", unit="task")

        def watch(task: Task) -> None:
            if task.task_id in remaining:
                remaining.discard(task.task_id)
                if bar is not None:
                    bar.update(1)
                if not remaining:
                    done.set()

        self._watchers.append(watch)
        try:
            tasks = await self.post_many(descriptions)
            ids = [t.task_id for t in tasks]
            remaining.update(i for i in ids if i in self.active)
            if bar is not None:
                bar.update(len(ids) - len(remaining))
            if remaining:
                with anyio.move_on_after(timeout):
                    await done.wait()
            if remaining:
                raise WaitTimeout(
                    f"{len(remaining)} of {len(ids)} tasks unfinished after {timeout}s",
                    hint="pass a longer timeout, or check swarm.status() for live runners",
                )
        finally:
            self._watchers.remove(watch)
            if bar is not None:
                bar.close()
        return [copy(self.active.get(i) or self.finished[i]) for i in ids]

    def cancel(self, task_id: int) -> Task | None:
        """Cancel an unfinished task. Returns None when it is not in memory (see store)."""
        task = self.active.get(task_id)
        if task is None:
            return None
        if task.status == BIDDING:
            open_ = self.auctions.pop(task_id, None)
            if open_ is not None:
                data = p.encode(p.AuctionClosed(task_id=task_id, winner=None, price_sats=None))
                for aid in open_.auction.bids:
                    self.supervisor.send(aid, data)
        task.reason = "cancelled"
        self._finish(task, CANCELLED)
        self._pump()
        return copy(task)

    def _remember(self, task: Task) -> None:
        self.active.pop(task.task_id, None)
        self.finished[task.task_id] = task
        if len(self.finished) > FINISHED_CACHE:
            self.finished.popitem(last=False)

    def _finish(self, task: Task, status: str, result: str | None = None) -> None:
        task.status = status
        task.completed_at = time.time()
        if result is not None:
            task.result = result
        self._dirty(task)
        self._remember(task)
        kind = {COMPLETED: "task_completed", FAILED: "task_failed",
                CANCELLED: "task_cancelled"}[status]
        self._emit(kind, task.task_id, task.assigned_agent, price_sats=task.price_sats,
                   attempts=task.attempts, reason=task.reason if status != COMPLETED else None)
        for event in self._waiters.pop(task.task_id, ()):
            event.set()
        for watch in list(self._watchers):
            watch(task)

    def _requeue_or_fail(self, task: Task, reason: str) -> None:
        """After a lost or failed attempt: auction again, or fail once attempts are used up."""
        task.reason = reason
        if task.attempts >= self.cfg.max_attempts:
            task.reason = f"{reason}; gave up after {task.attempts} attempts"
            self._finish(task, FAILED)
            return
        task.status, task.assigned_agent, task.price_sats, task.assigned_at = QUEUED, None, \
            None, None
        self._dirty(task)
        self.queue.appendleft(task.task_id)
        self._emit("task_requeued", task.task_id, reason=reason, attempts=task.attempts)

    # -- auctions -----------------------------------------------------------
    def _pump(self) -> None:
        """Open auctions for queued tasks while there are free runners to give them to."""
        if not self.queue:
            return
        free = [a.info.agent_id for a in self.agents.values() if a.free]
        if len(self.auctions) >= len(free):
            return
        now = time.time()
        deadline = time.monotonic() + self.cfg.auction_window
        opened: list[OpenAuction] = []
        while self.queue and len(self.auctions) < len(free):
            task = self.active.get(self.queue.popleft())
            if task is None or task.status != QUEUED:
                continue
            attempt = task.attempts + 1
            auction = Auction(task.task_id, free, self.cfg.rule)
            open_ = OpenAuction(auction, task, attempt, deadline)
            self.auctions[task.task_id] = open_
            self._deadlines.append(open_)
            task.status = BIDDING
            self._dirty(task)
            opened.append(open_)
        if not opened:
            return
        self._deadline_wake.set()
        data = b"".join(p.encode(p.Announce(task_id=o.task.task_id, description=o.task.description,
                                            attempt=o.attempt)) for o in opened)
        for aid in free:
            self.supervisor.send(aid, data)
        for o in opened:
            self._emit("auction_opened", o.task.task_id, attempt=o.attempt,
                       eligible=len(o.auction.eligible), ts_post=now)

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
            delay = open_.deadline - time.monotonic()
            if delay > 0:
                await anyio.sleep(delay)
                continue
            self._deadlines.popleft()
            self._close_auction(open_, reason="window")
            self._pump()

    def _close_auction(self, open_: OpenAuction, reason: str = "complete") -> bool:
        """Clear an auction; True when it found a winner."""
        task, auction = open_.task, open_.auction
        tid = task.task_id
        del self.auctions[tid]
        unavailable = [a for a in auction.bids if not self.agents[a].free]
        clearing = auction.close(unavailable=unavailable)
        now = time.time()
        rule = self.cfg.rule
        winner = clearing.winner
        for bid in auction.bids.values():
            self._batch.bids.append({
                "task_id": tid, "attempt": open_.attempt, "agent_id": bid.agent_id,
                "sats": bid.sats, "on_spec": bid.on_spec, "won": bid.agent_id == winner,
                "rule": rule, "created_at": now,
            })
        self._emit("auction_closed", tid, winner, price_sats=clearing.price_sats, rule=rule,
                   why=clearing.reason, bids=len(auction.bids), closed_by=reason,
                   attempt=open_.attempt)
        if auction.bids:
            data = p.encode(p.AuctionClosed(task_id=tid, winner=winner,
                                            price_sats=clearing.price_sats))
            for aid in auction.bids:
                self.supervisor.send(aid, data)
        if winner is None:
            task.status = QUEUED
            self._dirty(task)
            self.queue.appendleft(tid)
            return False
        agent = self.agents[winner]
        agent.task_id = tid
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
    async def _heartbeat_loop(self) -> None:
        """Ping every live runner; one that stays silent past ping_timeout is restarted."""
        seq = 0
        while True:
            await anyio.sleep(self.cfg.ping_interval)
            seq += 1
            now = time.monotonic()
            data = p.encode(p.Ping(seq=seq))
            for agent_id, agent in self.agents.items():
                if not agent.alive:
                    continue
                if now - agent.last_seen > self.cfg.ping_timeout:
                    log.warning("runner %s silent for %.0fs: restarting it", agent_id,
                                now - agent.last_seen)
                    self._emit("agent_hung", None, agent_id, silent_s=round(now - agent.last_seen))
                    agent.last_seen = now
                    self.supervisor.kill(agent_id)
                else:
                    self.supervisor.send(agent_id, data)

    def _on_message(self, agent_id: str, msg) -> None:
        agent = self.agents.get(agent_id)
        if agent is None:
            return
        agent.last_seen = time.monotonic()
        match msg:
            case p.Bid(task_id=tid, sats=sats, on_spec=on_spec):
                open_ = self.auctions.get(tid)
                if open_ is not None and open_.auction.submit(Bid(agent_id, sats, on_spec)):
                    self._emit("bid", tid, agent_id, sats=sats, on_spec=on_spec,
                               attempt=open_.attempt)
                    if open_.auction.complete and self._close_auction(open_):
                        self._pump()
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
            case p.Result(task_id=tid, ok=ok, output=output, elapsed_s=elapsed):
                self._on_result(agent, tid, ok, output, elapsed)
            case p.Hello(agent_id=said, pid=pid):
                if said != agent_id:
                    self._on_garbage(agent_id, p.ProtocolError(
                        f"hello from {said!r} on {agent_id}'s pipe", hint=""))
                    return
                first = not agent.ready.is_set()
                agent.alive, agent.task_id = True, None
                agent.info.pid, agent.info.status = pid, "idle"
                agent.info.restarts = self.supervisor.slots[agent_id].restarts
                self._dirty_agent(agent)
                self._emit("agent_joined" if first else "agent_restarted", None, agent_id,
                           persona=agent.persona.id, pid=pid, restarts=agent.info.restarts)
                agent.ready.set()
                self._pump()
            case p.Pong():
                pass

    def _on_result(self, agent: Agent, tid: int, ok: bool, output: str, elapsed: float) -> None:
        if agent.task_id != tid:
            return
        agent.task_id = None
        agent.info.status = "idle"
        task = self.active.get(tid)
        if task is not None and task.status in (ASSIGNED, RUNNING) \
                and task.assigned_agent == agent.info.agent_id:
            if ok:
                agent.info.earned_sats += task.price_sats or 0
                task.reason = None
                self._finish(task, COMPLETED, result=output)
            else:
                task.result = output
                self._requeue_or_fail(task, f"attempt {task.attempts} by "
                                            f"{agent.info.agent_id} failed: {output[:200]}")
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
        agent.info.status = {"restart": "restarting", "stopped": "stopped"}.get(verdict, "failed")
        agent.info.pid = None if verdict != "restart" else agent.info.pid
        for open_ in list(self.auctions.values()):
            if agent_id in open_.auction.eligible:
                open_.auction.withdraw(agent_id)
                if open_.auction.complete:
                    self._close_auction(open_)
        tid, agent.task_id = agent.task_id, None
        if tid is not None:
            task = self.active.get(tid)
            if task is not None and task.status in (ASSIGNED, RUNNING):
                how = "stopped" if verdict == "stopped" else f"died (exit code {returncode})"
                self._requeue_or_fail(task, f"runner {agent_id} {how} during attempt "
                                            f"{task.attempts}")
        self._dirty_agent(agent)
        kind = {"restart": "agent_crashed", "stopped": "agent_left"}.get(verdict, "agent_failed")
        self._emit(kind, None, agent_id, returncode=returncode)
        if verdict == "failed":
            log.error("runner %s keeps dying: gave up after %d restarts", agent_id,
                      agent.info.restarts)
        self._pump()

    # -- reads --------------------------------------------------------------
    def status(self, counts: dict[str, int]) -> dict:
        by_state: dict[str, int] = {}
        for a in self.agents.values():
            by_state[a.info.status] = by_state.get(a.info.status, 0) + 1
        return {
            "tasks": counts,
            "queued_in_memory": len(self.queue),
            "open_auctions": len(self.auctions),
            "runners_live": sum(a.alive for a in self.agents.values()),
            "runners_free": sum(a.free for a in self.agents.values()),
            "agents": by_state,
            "protocol_errors": self.garbage_lines,
            "rule": self.cfg.rule,
            "executor": self.cfg.executor,
            "seed": self.cfg.seed,
        }

    def require_task(self, task_id: int) -> None:
        if not isinstance(task_id, int) or isinstance(task_id, bool):
            raise TaskNotFound(f"task ids are integers, got {task_id!r}",
                               hint="use the task_id of a Task returned by post()")
