"""The coordinator: drives the task state machine (posts, auctions, assignment,
re-queueing) on runner messages; storing, waiting, liveness and configuration are its
parts' jobs (`journal`, `waiting`, `liveness`, `config`)."""

from __future__ import annotations

import functools
import logging
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Sequence

import anyio
import msgspec
from anyio.abc import TaskGroup

from timmy.engine import protocol as p
from timmy.engine.agents import Agent, runner_counts, why_stalled
from timmy.engine.approvals import Approvals, awaiting
from timmy.engine.auctions import Auctions, OpenAuction
from timmy.engine.config import Config, check_posts, check_task_id
from timmy.engine.journal import Journal
from timmy.engine.liveness import Heartbeat
from timmy.engine.runners import Runners
from timmy.engine.supervisor import Supervisor, Verdict
from timmy.engine.verifiers import check_now, check_spec, verify
from timmy.engine.waiting import Waits
from timmy.errors import OwnershipLost, SwarmClosed, WaitTimeout
from timmy.market.budgets import check_sats, rejected_reason
from timmy.market.lifecycle import (
    AGENT_WORKING_STATES,
    APPROVAL_REQUESTED,
    APPROVED,
    AWAITING_APPROVAL,
    CANCELLED_REASON,
    FINISH_EVENT,
    REJECTED,
    VERIFICATION_FAILED,
    Action,
    Decision,
    after_deadline,
    after_failure,
    after_runner_exit,
    after_verification_failure,
    exit_how,
)
from timmy.market.mechanisms import after_mechanism_failure
from timmy.market.models import (
    ASSIGNED,
    BIDDING,
    CANCELLED,
    COMPLETED,
    FAILED,
    QUEUED,
    RUNNING,
    TERMINAL_STATES,
    Event,
    Task,
    copy,
)
from timmy.market.personas import Persona
from timmy.market.redundancy import FAILED as COPY_FAILED
from timmy.market.redundancy import PASSED, UNVERIFIED, Copies, Outcome, lost
from timmy.market.reputation import FAILURE, SUCCESS, VERIFICATION_FAILURE, Reputation
from timmy.progress import progress_bar
from timmy.storage.store import Store

# Importable from here as before: Config (tests, swarm), WaitTimeout and progress_bar (the
# client, the simulator).
__all__ = ["Config", "Coordinator", "WaitTimeout", "progress_bar"]

log = logging.getLogger("timmy")

FINISHED_CACHE = 50_000


@functools.lru_cache(maxsize=4096)
def _matched(persona: Persona, description: str) -> tuple[str, ...]:
    """A persona's keywords in a description, cached: workloads repeat descriptions, and
    this runs for every result on the engine's hot path."""
    return tuple(persona.matched_keywords(description))


#: A copy's outcome -> what it counts in its agent's reputation (a lost copy: nothing).
_COPY_RATING = {PASSED: SUCCESS, COPY_FAILED: FAILURE, UNVERIFIED: VERIFICATION_FAILURE}


def _copy_outcome(output: str, verdict, measured: dict) -> Outcome:
    """A copy's ok result, passed (no verifier: ``verdict`` None) or judged by its verdict."""
    if verdict is None or verdict.ok:
        return Outcome(PASSED, output, measured=measured)
    return Outcome(UNVERIFIED, output, why=verdict.reason, measured=measured)


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

    Its parts: `Runners` (starting, admitting, naming runners), `Auctions` (opening,
    judging bids, clearing; how runners' queues share the work is told there), the
    `Journal`, `Waits` and `Heartbeat`. What a task becomes after an attempt is decided
    by `timmy.market.lifecycle`; docs/design.md has the design.
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
        self.garbage_lines = 0
        self.closed = False
        self._timeouts: dict[int, float] = {}   # per-post task_timeout of unfinished tasks
        # Verification (`timmy.market.verification`): the verify spec of unfinished tasks
        # posted with one (stored, read back at a restart), the agents whose result failed
        # it (excluded from the task's later auctions), the tasks being verified now.
        self._verify: dict[int, str] = {}
        self._excluded: dict[int, set[str]] = {}
        self._verifying: set[int] = set()
        # Tasks cleared by ``redundant`` with k > 1 (`timmy.market.redundancy`): the copies
        # each winner runs, until every one has reported. The task's assigned_agent is the
        # best winner until a copy is paid, then the paid one.
        self._copies: dict[int, Copies] = {}
        # Budgets with approval (`timmy.market.budgets`): the budget, what was paid, each
        # task's max_price and approved ceilings.
        self.approvals = Approvals(config.budget)
        # Set by the swarm service: remote runners may dial in, so a swarm with no agents
        # yet is waiting for them rather than stalled (see stalled()).
        self.accepts_remote = False
        self._tg: TaskGroup | None = None
        self.supervisor: Supervisor | None = None
        # The parts with one job each: what is stored and published, who waits for what,
        # the awake clock and the ping rounds.
        self.journal = Journal(store, self._lookup, self._abandon)
        self.waits = Waits(self._lookup, self.stalled, self.journal)
        self.heartbeat = Heartbeat(config, self.journal.emit)
        self.runners = Runners(store, config, self.agents, self.journal, self._check_open)
        self.auctions = Auctions(config, self.agents, self.journal, self.heartbeat.awake)
        # Each agent's outcomes and reliability (`timmy.market.reputation`), which the
        # mechanisms read: stored, loaded at start, counted in `_rate`.
        self.reputation = self.auctions.reputation = Reputation()
        # Their hot methods, bound once: the state machine calls them for every message.
        self._emit, self._dirty = self.journal.emit, self.journal.task_changed
        self._awake, self._just_woke = self.heartbeat.awake, self.heartbeat.just_woke
        self._watchers = self.waits.watchers   # task -> what to call when it ends
        self._dirty_agent = self.runners.changed
        self._open = self.auctions.open   # task -> its open auction

    @property
    def lost(self) -> OwnershipLost | None:
        """Set when another swarm took the database over: this one then stops (`_abandon`)."""
        return self.journal.lost

    # -- lifecycle ----------------------------------------------------------
    async def start(self, tg: TaskGroup) -> None:
        self._tg = tg
        self.supervisor = Supervisor(tg, on_message=self._on_message, on_exit=self._on_exit,
                                     on_garbage=self._on_garbage, policy=self.cfg.restart,
                                     clock=self._awake)
        self.runners.supervisor = self.auctions.supervisor = self.supervisor
        now = time.time()
        from timmy.storage.ownership import whoami

        waiting, requeued, failed = await anyio.to_thread.run_sync(
            self.store.recover, self.cfg.max_attempts, now, whoami())
        await self.journal.open()
        stored = await anyio.to_thread.run_sync(self.store.status_counts)
        self._ended.update({s: stored[s] for s in TERMINAL_STATES if stored.get(s)})
        for task in sorted(waiting + requeued, key=lambda t: t.task_id):
            self.active[task.task_id] = task
            self.queue.append(task.task_id)
        if self.active:   # a restarted swarm still verifies what was posted with a verifier
            self._verify.update(await anyio.to_thread.run_sync(
                self.store.verify_specs, sorted(self.active)))
            self.approvals.max_price.update(await anyio.to_thread.run_sync(
                self.store.max_prices, sorted(self.active)))
        # spend counts what the ledger paid before (timmy.market.budgets)
        self.approvals.paid = await anyio.to_thread.run_sync(self.store.paid_total)
        self.reputation.records.update(Reputation(await anyio.to_thread.run_sync(
            self.store.reputation)).records)
        for task in requeued:
            self._emit("task_requeued", task.task_id, reason=task.reason)
        for task in failed:
            self._remember(task)
            self._emit("task_failed", task.task_id, reason=task.reason)
        await self.runners.start()
        self.journal.start(tg)
        tg.start_soon(self.auctions.run_windows, self._window_ended)
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
        self._open.clear()
        if self.supervisor is not None:
            self._tg.start_soon(self.supervisor.stop_all)
        self.waits.wake_all()

    # -- events and persistence ---------------------------------------------
    def subscribe(self, callback: Callable[[Event], None]) -> Callable[[], None]:
        return self.journal.subscribe(callback)

    async def flush(self) -> None:
        """Write every change made so far in one transaction."""
        await self.journal.flush()

    # -- tasks --------------------------------------------------------------
    def _check_open(self) -> None:
        if self.lost is not None:
            raise OwnershipLost(self.lost.message, hint=self.lost.hint)
        if self.closed:
            raise SwarmClosed("this swarm has stopped",
                              hint="start a new one: with timmy.Swarm(...) as swarm: ...")

    async def post_many(self, descriptions: Sequence[str],
                        task_timeout: float | None = None,
                        verify: str | None = None,
                        max_price: int | None = None) -> list[Task]:
        """Persist new tasks (one transaction), queue them and start auctions.

        ``task_timeout``: seconds a runner may work on each of them before it is restarted
        and the task re-auctioned (see `_check_deadline`); None takes the swarm's. It is
        kept in memory: tasks recovered after a restart take the swarm's. ``verify``: the
        verifier a result must pass to be paid (`timmy.market.verification`), stored with
        each task. ``max_price``: sats over which a clearing waits for approval
        (`timmy.market.budgets`), stored with each task.
        """
        self._check_open()
        max_price = check_sats("max_price", max_price)
        descriptions = check_posts(descriptions, task_timeout, len(self.active),
                                   self.cfg.max_queued)
        if verify is not None:
            verify = await anyio.to_thread.run_sync(check_spec, verify)
        if not descriptions:
            return []
        specs = None if verify is None else [verify] * len(descriptions)
        limits = None if max_price is None else [max_price] * len(descriptions)
        tasks = await self.journal.write(self.store.insert_tasks, descriptions, time.time(),
                                         specs, limits)
        for task in tasks:
            self.active[task.task_id] = task
            self.queue.append(task.task_id)
            if task_timeout is not None:
                self._timeouts[task.task_id] = task_timeout
            if verify is not None:
                self._verify[task.task_id] = verify
            if max_price is not None:
                self.approvals.max_price[task.task_id] = max_price
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
            self.auctions.cancel(task_id)
        task.reason = CANCELLED_REASON
        self._finish(task, CANCELLED)
        self._pump()
        return copy(task)

    def _remember(self, task: Task) -> None:
        self.active.pop(task.task_id, None)
        self._timeouts.pop(task.task_id, None)
        self._verify.pop(task.task_id, None)
        self._excluded.pop(task.task_id, None)
        self._verifying.discard(task.task_id)
        self._copies.pop(task.task_id, None)
        self.approvals.forget(task.task_id)
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
        if len(self._open) >= room:
            return
        deadline = self._awake() + self.cfg.auction_window   # a stall of ours is no window
        opened: list[OpenAuction] = []
        passed: list[int] = []   # tasks no live runner may bid on (all failed verifying it)
        while self.queue and len(self._open) < room:
            task = self.active.get(self.queue.popleft())
            if task is None or task.status != QUEUED:
                continue
            excluded = self._excluded.get(task.task_id)
            if excluded:
                eligible = [a for a in live if a not in excluded]
                if not eligible:
                    passed.append(task.task_id)
                    continue
                opened.append(self.auctions.begin(task, eligible, deadline))
                continue
            opened.append(self.auctions.begin(task, live, deadline))
        if passed:
            self.queue.extendleft(reversed(passed))
        if opened:
            self.auctions.announce(opened, live)

    def _window_ended(self, open_: OpenAuction) -> None:
        self._close_auction(open_, reason="window")
        self._pump()

    def _close_auction(self, open_: OpenAuction, reason: str = "complete") -> bool:
        """Clear an auction (`Auctions.clear`) and assign its task to the winner, or queue
        it again at the front; True when it found a winner (or its mechanism failed and the
        task is queued again with the attempt spent: `after_mechanism_failure`)."""
        task, tid = open_.task, open_.task.task_id
        clearing = self.auctions.clear(open_, reason)
        now = time.time()
        winner = clearing.winner
        if clearing.error is not None:
            self._decided(task, after_mechanism_failure(open_.attempt, self.cfg.max_attempts,
                                                        self.cfg.rule, clearing.error))
            return True
        if winner is None:
            task.status = QUEUED
            self._dirty(task)
            self.queue.appendleft(tid)
            return False
        if self.approvals.active and self._hold(task, winner, clearing.price_sats):
            return True
        if clearing.copies:   # redundant: every winner runs a copy; the best one assigned last
            self._copies[tid] = Copies(clearing.copies)
            for aid in reversed(clearing.copies[1:]):
                self._assign(task, self.agents[aid], clearing.price_sats, open_.attempt, now)
        self._assign(task, self.agents[winner], clearing.price_sats, open_.attempt, now)
        return True

    def _assign(self, task: Task, agent: Agent, price: int | None, attempt: int,
                now: float) -> None:
        """Give ``task`` to ``agent`` at ``price`` (an auction's winner, or an approval)."""
        tid, winner = task.task_id, agent.info.agent_id
        agent.tasks[tid] = None
        if agent.head is None:
            self._set_head(agent)
        agent.info.status = "busy"
        agent.info.tasks_won += 1
        self._dirty_agent(agent)
        task.status, task.assigned_agent, task.price_sats = ASSIGNED, winner, price
        task.attempts, task.assigned_at = attempt, now
        self._dirty(task)
        self.supervisor.send(winner, p.encode(p.Assign(task_id=tid, description=task.description,
                                                       attempt=attempt)))
        self._emit("task_assigned", tid, winner, price_sats=price, attempt=attempt)

    # -- budgets with approval (timmy.market.budgets) ------------------------
    def _held(self) -> int:
        """The prices of the tasks assigned or running now (runners' queues, and results
        being verified): committed, not yet paid."""
        ids = {t for a in self.agents.values() for t in a.tasks} | self._verifying
        return self.approvals.held(self.active[t] for t in ids if t in self.active)

    def _hold(self, task: Task, winner: str, price: int | None) -> bool:
        """A clearing over the task's max_price or the budget left: the task waits for a
        human with the winning bid held (its assigned_agent and price_sats); True if so."""
        why = self.approvals.why(task.task_id, price, self._held())
        if why is None:
            return False
        task.status, task.assigned_agent, task.price_sats = AWAITING_APPROVAL, winner, price
        task.reason = f"awaiting approval: {why}"
        self._dirty(task)
        self._emit(APPROVAL_REQUESTED, task.task_id, winner, price_sats=price, reason=why)
        return True

    def approve(self, task_id: int) -> Task:
        """Assign a task awaiting approval to its held agent at the held price. When that
        agent is gone or its queue is full, the task is auctioned again with the approved
        price as its ceiling (see `timmy.market.budgets`)."""
        self._check_open()
        task = awaiting(self.active, task_id)
        agent_id, price = task.assigned_agent, task.price_sats
        agent = self.agents.get(agent_id)
        self._emit(APPROVED, task_id, agent_id, price_sats=price)
        if agent is not None and agent.alive and len(agent.tasks) < self.cfg.runner_queue:
            task.reason = None
            self._assign(task, agent, price, task.attempts + 1, time.time())
        else:
            self.approvals.approved[task_id] = price or 0
            self._requeue(task, f"approved at {price} sats, but {agent_id} has no room: "
                          f"auctioned again with {price} sats as its ceiling")
        self._pump()
        return copy(task)

    def reject(self, task_id: int) -> Task:
        """Cancel a task awaiting approval (its held bid is dropped)."""
        self._check_open()
        task = awaiting(self.active, task_id)
        self._emit(REJECTED, task_id, task.assigned_agent, price_sats=task.price_sats)
        task.reason = rejected_reason((task.reason or "").removeprefix("awaiting approval: "))
        self._finish(task, CANCELLED)
        self._pump()
        return copy(task)

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
        self.journal.rated(agent_id, self.reputation.timed(agent_id, late=True).counters())
        self._emit("task_timed_out", tid, agent_id, timeout_s=limit,
                   attempt=task.attempts if task is not None else None, queued_behind=len(held) - 1)
        for i in reversed(range(len(held))):  # requeue at the front, keeping their order
            task = self.active.get(held[i])
            if task is not None and self._copies and held[i] in self._copies:
                self._copy_report(task, agent_id, lost(
                    task.attempts, self.cfg.max_attempts, f"gave no result within {limit:g}s",
                    running=False, first=i == 0, crashed=True))
                continue
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
                open_ = self._open.get(tid)
                if open_ is not None and self.auctions.bid(agent, open_, sats) \
                        and self._close_auction(open_):
                    self._pump()
            case p.Decline(task_id=tid):
                open_ = self._open.get(tid)
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
                if self.runners.hello(agent, said, pid):
                    self._pump()
            case p.Pong():
                pass
            case p.Bye():   # its connection ends next: as stopped, not as a crash
                self.supervisor.leaving(agent_id)

    def _on_result(self, agent: Agent, result: p.Result) -> None:
        tid, ok, output = result.task_id, result.ok, result.output
        if "\x00" in output:   # what a server database's text cannot hold: shown as such
            output = output.replace("\x00", "\ufffd")
        if tid not in agent.tasks:
            return
        held_for = self._awake() - agent.head_since if tid == agent.head else None
        del agent.tasks[tid]
        if tid == agent.head:
            self._set_head(agent)
        done = self._lookup(tid)
        if done is not None:  # as the runner did: learn from the outcome
            agent.stats.record_result(ok, _matched(agent.persona, done.description))
        if not agent.tasks:
            agent.info.status = "idle"
        task = self.active.get(tid)
        if self._copies and tid in self._copies:   # one of a redundant task's copies
            if task is not None:
                self._copy_result(task, agent, result, output)
        elif task is not None and task.status in (ASSIGNED, RUNNING) \
                and task.assigned_agent == agent.info.agent_id:
            # How long it took, and what a model-backed execution used: into the event.
            measured = {"elapsed_s": round(result.elapsed_s, 6)}
            if result.usage is not None:
                measured["usage"] = msgspec.structs.asdict(result.usage)
            limit = self._timeouts.get(tid, self.cfg.task_timeout)
            if limit is not None and held_for is not None:   # timeliness, beside reliability
                self.journal.rated(agent.info.agent_id, self.reputation.timed(
                    agent.info.agent_id, late=held_for > limit).counters())
            if ok:
                spec = self._verify.get(tid)
                if spec is None:
                    self._pay(task, agent, output, False, measured)
                else:
                    self._check_result(task, agent, output, spec, measured)
            else:
                task.result = output
                self._rate(agent, FAILURE, measured)
                self._decided(task, after_failure(task.attempts, self.cfg.max_attempts,
                                                  agent.info.agent_id, output,
                                                  permanent=result.permanent), **measured)
        self._dirty_agent(agent)
        self._pump()

    def _pay(self, task: Task, agent: Agent, output: str, verified: bool, measured: dict) -> None:
        """A result that earns payment: the task completes, and its ledger row (the clearing
        price, not the bid) goes in the same batch, so the same transaction."""
        price = task.price_sats or 0
        agent.info.earned_sats += price
        self._rate(agent, SUCCESS, measured)
        task.reason = None
        self.journal.paid(task.task_id, task.attempts, agent.info.agent_id, price, verified)
        self.approvals.paid += price
        self._finish(task, COMPLETED, result=output, **measured,
                     **({"verified": True} if verified else {}))

    def _rate(self, agent: Agent, outcome: str, measured: dict) -> None:
        """Count a result in its agent's reputation before the task moves on (the simulator
        counts it at the same point, so the next auction sees the same reliability); the
        outcome's event carries the agent's new ``reliability``."""
        agent_id = agent.info.agent_id
        record = self.reputation.record(agent_id, outcome)
        self.journal.rated(agent_id, record.counters())
        measured["rated"], measured["reliability"] = agent_id, round(record.reliability, 4)

    def _check_result(self, task: Task, agent: Agent, output: str, spec: str,
                      measured: dict) -> None:
        """A result of a task posted with a verifier: checked at once when the rule needs
        only the text, else in the background (a command, a callable, a schema file), the
        task staying "running" meanwhile."""
        verdict = check_now(spec, output)
        if verdict is not None:
            self._verified(task, agent, output, verdict, measured)
            return
        tid, attempt = task.task_id, task.attempts
        self._verifying.add(tid)

        async def later() -> None:
            got = await verify(spec, output, self.cfg.verify_timeout)
            current = self.active.get(tid)
            if current is not task or tid not in self._verifying or task.attempts != attempt \
                    or task.status != RUNNING or self.closed:
                return   # cancelled (or the swarm stopped) meanwhile
            self._verifying.discard(tid)
            self._verified(task, agent, output, got, measured)
            self._dirty_agent(agent)
            self._pump()

        task.status = RUNNING   # an "assigned" task whose "started" was not heard yet
        self._dirty(task)
        self._tg.start_soon(later)

    def _verified(self, task: Task, agent: Agent, output: str, verdict, measured: dict) -> None:
        if verdict.ok:
            self._pay(task, agent, output, True, measured)
            return
        agent_id = agent.info.agent_id
        excluded = self._excluded.setdefault(task.task_id, set())
        excluded.add(agent_id)
        others = sum(1 for a in self.agents.values()
                     if a.info.agent_id not in excluded and a.info.status in AGENT_WORKING_STATES)
        self._emit(VERIFICATION_FAILED, task.task_id, agent_id, attempt=task.attempts,
                   reason=verdict.reason)
        task.result = output
        self._rate(agent, VERIFICATION_FAILURE, measured)
        self._decided(task, after_verification_failure(
            task.attempts, self.cfg.max_attempts, agent_id, verdict.reason, others), **measured)

    # -- redundant copies (timmy.market.redundancy) ---------------------------
    def _copy_result(self, task: Task, agent: Agent, result: p.Result, output: str) -> None:
        """A copy's result: failed, passed (no verifier), or verified (at once, or in the
        background as `_check_result` does) before it is reported."""
        measured = {"elapsed_s": round(result.elapsed_s, 6)}
        agent_id = agent.info.agent_id
        if not result.ok:
            self._copy_report(task, agent_id, Outcome(COPY_FAILED, output,
                                                      permanent=result.permanent,
                                                      measured=measured))
            return
        spec = self._verify.get(task.task_id)
        verdict = None if spec is None else check_now(spec, output)
        if spec is None or verdict is not None:
            self._copy_report(task, agent_id, _copy_outcome(output, verdict, measured))
            return
        tid, attempt = task.task_id, task.attempts

        async def later() -> None:
            got = await verify(spec, output, self.cfg.verify_timeout)
            if self.active.get(tid) is not task or task.attempts != attempt \
                    or tid not in self._copies or self.closed:
                return   # cancelled (or the swarm stopped) meanwhile
            self._copy_report(task, agent_id, _copy_outcome(output, got, measured))
            self._pump()

        self._tg.start_soon(later)

    def _copy_report(self, task: Task, agent_id: str, outcome: Outcome) -> None:
        """Record a copy's outcome; once every copy has one, decide the task: pay the first
        passing copy in bid order, or spend the attempt (`Copies.decision`)."""
        copies = self._copies.get(task.task_id)
        if copies is None or not copies.report(agent_id, outcome):
            return
        del self._copies[task.task_id]
        paid = copies.paid()
        for aid, o in copies.reported():   # every copy's outcome counts; the paid one in _pay
            if aid == paid or o.kind not in _COPY_RATING:
                continue
            if o.kind == UNVERIFIED:
                self._excluded.setdefault(task.task_id, set()).add(aid)
                self._emit(VERIFICATION_FAILED, task.task_id, aid, attempt=task.attempts,
                           reason=o.why)
            record = self.reputation.record(aid, _COPY_RATING[o.kind])
            self.journal.rated(aid, record.counters())
        if paid is not None:
            o = copies.outcomes[paid]
            task.assigned_agent = paid
            self._pay(task, self.agents[paid], o.output, task.task_id in self._verify,
                      dict(o.measured, copies=len(copies.agents)))
            return
        excluded = self._excluded.get(task.task_id, ())
        others = sum(1 for a in self.agents.values()
                     if a.info.agent_id not in excluded and a.info.status in AGENT_WORKING_STATES)
        first = copies.outcomes[copies.agents[0]]
        task.result = first.output or None
        self._decided(task, copies.decision(task.attempts, self.cfg.max_attempts, others),
                      copies=len(copies.agents))

    def _on_garbage(self, agent_id: str, exc: p.ProtocolError) -> None:
        self.garbage_lines += 1
        log.warning("runner %s sent a bad line: %s", agent_id, exc.message)
        self._emit("protocol_error", None, agent_id, error=exc.message[:300])

    def _on_exit(self, agent_id: str, returncode: int | None, verdict: Verdict) -> None:
        agent = self.agents.get(agent_id)
        if agent is None:
            return
        self.runners.ended(agent, returncode, verdict)
        for open_ in self.auctions.withdraw(agent_id):   # each it completed, as it does
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
            if self._copies and held[i] in self._copies:
                self._copy_report(task, agent_id, lost(
                    task.attempts, self.cfg.max_attempts, how, running=False, first=i == 0,
                    crashed=crashed))
                continue
            self._decided(task, after_runner_exit(
                task.attempts, self.cfg.max_attempts, agent_id, how,
                running=task.status == RUNNING, first=i == 0, crashed=crashed))
        self.runners.report_end(agent, returncode, verdict)
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
            "open_auctions": len(self._open),
            **runner_counts(self.agents.values()),
            "protocol_errors": self.garbage_lines,
            "bids_refused": self.auctions.refused,
            "rows_quarantined": self.journal.rows_quarantined,
            "last_quarantined": self.journal.last_quarantined,
            "stalled": self.stalled(),
            "rule": self.cfg.rule,
            "executor": self.runners.executor,
            "seed": self.cfg.seed,
            **self.approvals.status(self._held()),
        }

    require_task = staticmethod(check_task_id)
