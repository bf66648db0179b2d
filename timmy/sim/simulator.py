"""Simulate a swarm in-process on a virtual clock with the live engine's own rules (personas,
bidding, auction, seeded executions): `simulate` returns a `SimRun` whose tables are those of
a live export, so every analytics query works on both.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from timmy.engine.executors import simulated_plan
from timmy.engine.verifiers import DEFAULT_TIMEOUT, check_spec, verify_sync
from timmy.errors import ConfigError, require
from timmy.market.auction import Bid, check_rule, clear
from timmy.market.bidding import BidStats, bid_rng, quote_matched, text_key
from timmy.market.budgets import (
    budget_left,
    check_policy,
    check_sats,
    decide,
    needs_approval,
    rejected_reason,
)
from timmy.market.lifecycle import (
    APPROVAL_REQUESTED,
    APPROVED,
    AWAITING_APPROVAL,
    CANCELLED,
    FAILED,
    REJECTED,
    RUNNING,
    TASK_CANCELLED,
    TASK_FAILED,
    TASK_REQUEUED,
    VERIFICATION_FAILED,
    Action,
    Decision,
    after_failure,
    after_runner_exit,
    after_verification_failure,
)
from timmy.market.mechanisms import MECHANISM_FAILED, after_mechanism_failure
from timmy.market.models import Task
from timmy.market.personas import PERSONAS, Persona
from timmy.market.redundancy import FAILED as COPY_FAILED
from timmy.market.redundancy import PASSED, UNVERIFIED, Copies, Outcome, lost
from timmy.market.reputation import FAILURE, SUCCESS, VERIFICATION_FAILURE, Reputation
from timmy.market.strategies import record_auction
from timmy.sim.workloads import Arrival

TABLES = ("tasks", "bids", "agents", "events", "ledger")
#: The rules the compiled engine clears (`timmy.sim.compiled.RULE_CODES`); any other
#: mechanism, built in or registered, runs on the Python engine.
COMPILED_RULES = frozenset({"specialist_first", "lowest", "second_price", "first_price"})
STREAM_CRASH = text_key("crash")


@dataclass(eq=False)
class _Agent:
    agent_id: str
    persona: Persona
    stats: BidStats = field(default_factory=BidStats)
    queue: deque = field(default_factory=deque)   # task ids held, the first one running
    won: int = 0
    earned: int = 0
    alive: bool = True
    restarts: int = 0
    life: int = 0            # bumped by a crash: clock entries of an earlier life are void


@dataclass(eq=False)
class _Task:
    task_id: int
    description: str
    created_at: float
    status: str = "queued"
    attempts: int = 0
    agent: str | None = None
    price: int | None = None
    assigned_at: float | None = None
    completed_at: float | None = None
    reason: str | None = None
    result: str | None = None
    on_spec: bool = False
    keywords: tuple[str, ...] = ()
    verify: str | None = None                  # its verify spec, as live
    excluded: set[str] | None = None           # agents whose result failed it
    max_price: int | None = None               # over it a clearing waits for approval
    approved: int | None = None                # a ceiling approved (live: held agent busy)
    copies: Copies | None = None               # redundant: its copies, until decided
    plans: dict | None = None                  # redundant: agent -> (on_spec, keywords, ok)


class _Rows:
    """Column lists per table, in the live export's column order."""

    def __init__(self) -> None:
        from timmy.storage.export import TABLES as LIVE

        self.columns = {name: [c.name for c in LIVE[name].columns] for name in TABLES}
        self.data: dict[str, list[list]] = {name: [[] for _ in cols]
                                            for name, cols in self.columns.items()}

    def add(self, table: str, *values) -> None:
        for col, v in zip(self.data[table], values, strict=True):
            col.append(v)

    def send(self, sink: Sink) -> None:
        for name in TABLES:
            sink(name, dict(zip(self.columns[name], self.data[name], strict=True)))


def _column(pa, values, type_):
    if isinstance(values, pa.Array | pa.ChunkedArray):
        return values if values.type == type_ else values.cast(type_)
    return pa.array(values, type_)


class Sink:
    """Where simulated rows go: Arrow tables in memory, or Parquet files written as they come
    (memory then stays flat however many tasks are simulated)."""

    def __init__(self, out_dir: str | Path | None = None) -> None:
        self.pa = require("pyarrow", "analysis")
        from timmy.storage.export import TABLES as LIVE
        from timmy.storage.export import _arrow_type

        self.schemas = {name: self.pa.schema([(c.name, _arrow_type(self.pa, c))
                                              for c in LIVE[name].columns]) for name in TABLES}
        self.out = None if out_dir is None else Path(out_dir)
        self.chunks: dict[str, list] = {name: [] for name in TABLES}
        self.writers: dict = {}
        if self.out is not None:
            import pyarrow.parquet as pq

            self.out.mkdir(parents=True, exist_ok=True)
            self.writers = {name: pq.ParquetWriter(self.out / f"{name}.parquet",
                                                   self.schemas[name]) for name in TABLES}

    def __call__(self, name: str, columns: dict) -> None:
        pa, schema = self.pa, self.schemas[name]
        table = pa.table({f.name: _column(pa, columns[f.name], f.type) for f in schema},
                         schema=schema)
        if self.writers:
            self.writers[name].write_table(table)
        else:
            self.chunks[name].append(table)

    def close(self) -> SimRun:
        for w in self.writers.values():
            w.close()
        if self.out is not None:
            return SimRun(paths={name: self.out / f"{name}.parquet" for name in TABLES})
        return SimRun(tables={name: self.pa.concat_tables(c) if c else
                              self.schemas[name].empty_table()
                              for name, c in self.chunks.items()})


def agent_ids(runners: dict[str, int] | int | None, catalog: dict[str, Persona]) -> list[str]:
    """The agent ids a fresh live swarm gives, in spawn order (spawn_all, repeated)."""
    if runners is None:
        runners = 1
    if isinstance(runners, int):
        runners = {pid: runners for pid in catalog}
    unknown = sorted(set(runners) - set(catalog))
    if unknown:
        raise ConfigError(f"runners names unknown persona {unknown[0]!r}",
                          hint=f"use persona ids from: {', '.join(catalog)}")
    most = max(runners.values(), default=0)
    return [f"{pid}-{n}" for n in range(1, most + 1) for pid in catalog
            if runners.get(pid, 0) >= n]


class Simulator:
    """One simulated swarm. Use `simulate`; this class holds its state."""

    def __init__(self, *, personas: dict[str, Persona] | None = None, seed: int = 0,
                 rule: str = "specialist_first", runners: dict[str, int] | int | None = None,
                 task_seconds: float = 0.05, max_attempts: int = 3,
                 runner_queue: int = 32, start: float = 0.0, crash_rate: float = 0.0,
                 restart_seconds: float = 0.5,
                 verify_timeout: float = DEFAULT_TIMEOUT, budget: int | None = None,
                 approve="all", twin=None) -> None:
        #: A model's draws (`timmy.sim.twin_draws.TwinDraws`) when simulating with model=
        self.twin, self._pending, self._last_auction = twin, 0, start
        self.catalog = dict(PERSONAS if personas is None else personas)
        self.seed, self.rule = seed, check_rule(rule)
        self.task_seconds, self.max_attempts = task_seconds, max_attempts
        self.runner_queue, self.now = runner_queue, start
        self.crash_rate, self.restart_seconds = crash_rate, restart_seconds
        self.verify_timeout = verify_timeout
        # Budgets with approval (`timmy.market.budgets`), as live; ``approve`` decides at
        # once what a human decides live.
        self.budget, self.approve = check_sats("budget", budget), check_policy(approve)
        self.paid = 0
        self.limited = budget is not None   # or some task has a max_price (post)
        self.agents = [_Agent(aid, self.catalog[aid.rsplit("-", 1)[0]])
                       for aid in agent_ids(runners, self.catalog)]
        self.by_id = {a.agent_id: a for a in self.agents}
        self.tasks: list[_Task] = []
        self.waiting: deque[int] = deque()        # tasks queued with no room anywhere
        # (time, seq, what, task_id, agent_id, life): what is "done", "crash" or "restart"
        self.clock: list[tuple[float, int, str, int, str, int]] = []
        self._seq = 0
        self._event_id = 0
        self._matches: dict[str, dict[str, tuple[str, ...]]] = {}
        self.rows = _Rows()
        self._asked = False   # set by _rejected: this clearing asked for approval
        # agent_id -> reliability for the mechanisms that use it, counted from each result
        # at the point the live coordinator counts it (`Coordinator._rate`)
        self.reputation = Reputation()
        for a in self.agents:
            self._event("agent_joined", None, a.agent_id)

    # -- records ------------------------------------------------------------
    def _event(self, kind: str, task_id: int | None, agent_id: str | None = None,
               data: str = "{}") -> int:
        self._event_id += 1
        self.rows.add("events", self._event_id, self.now, kind, task_id, agent_id, data)
        return self._event_id

    def _matched(self, description: str) -> dict[str, tuple[str, ...]]:
        m = self._matches.get(description)
        if m is None:
            m = {pid: tuple(p.matched_keywords(description)) for pid, p in self.catalog.items()}
            if len(self._matches) < 100_000:
                self._matches[description] = m
        return m

    # -- the rules ----------------------------------------------------------
    def post(self, description: str, verify: str | None = None,
             max_price: int | None = None) -> _Task:
        task = _Task(len(self.tasks) + 1, description, self.now, verify=verify,
                     max_price=max_price)
        self.limited = self.limited or max_price is not None
        self.tasks.append(task)
        self._event("task_posted", task.task_id)
        if self.twin is not None:   # the auction after the model's post->assign overhead
            self._last_auction = max(self.now + self.twin.overhead(task.task_id, self._pending),
                                     self._last_auction)
            self._pending += 1
            self._seq += 1
            heapq.heappush(self.clock, (self._last_auction, self._seq, "auction", task.task_id,
                                        "", 0))
            return task
        self._auction(task)
        return task

    def _has_room(self, a: _Agent) -> bool:
        return a.alive and len(a.queue) < self.runner_queue

    def _at(self, when: float, what: str, task_id: int, agent: _Agent) -> None:
        self._seq += 1
        heapq.heappush(self.clock, (when, self._seq, what, task_id, agent.agent_id, agent.life))

    def _eligible(self, task: _Task, a: _Agent) -> bool:
        return not task.excluded or a.agent_id not in task.excluded

    def _auction(self, task: _Task) -> None:
        if not any(self._has_room(a) and self._eligible(task, a) for a in self.agents):
            task.status = "queued"
            self.waiting.append(task.task_id)
            return
        attempt = task.attempts + 1
        auction_id = self._event("auction_opened", task.task_id)
        matched = self._matched(task.description)
        bids, quotes = [], {}
        for a in self.agents:
            if not a.alive or not self._eligible(task, a):
                continue
            rng = bid_rng(self.seed, a.agent_id, task.task_id, attempt)
            q = quote_matched(a.persona, matched[a.persona.id], rng, a.stats)
            bids.append(Bid(a.agent_id, q.sats, q.on_spec))
            quotes[a.agent_id] = q
        full = {a.agent_id for a in self.agents if not self._has_room(a)}
        clearing = clear(task.task_id, [b for b in bids if b.agent_id not in full], self.rule,
                         description=task.description, reputation=self.reputation)
        winner = clearing.winner
        for b in bids:
            self.rows.add("bids", None, task.task_id, attempt, auction_id, b.agent_id, b.sats,
                          b.on_spec, b.agent_id == winner, self.rule, self.now)
            bidder = self.by_id[b.agent_id]
            record_auction(bidder.persona, bidder.stats, b.agent_id == winner, b.sats,
                           b.on_spec, clearing.price_sats)
        self._event("auction_closed", task.task_id, winner)
        if clearing.error is not None:   # as live: re-queued (or failed), the attempt spent
            self._event(MECHANISM_FAILED, task.task_id)
            self._decided(task, after_mechanism_failure(attempt, self.max_attempts, self.rule,
                                                        clearing.error), None)
            return
        self._asked = False
        if self.limited and self._rejected(task, winner, clearing.price_sats):
            return
        if clearing.copies and not self._asked:   # as live: a held clearing runs one copy
            task.copies, task.plans = Copies(clearing.copies), {}
            for aid in clearing.copies[1:]:
                task.plans[aid] = (quotes[aid].on_spec, quotes[aid].keywords, None)
                self.by_id[aid].won += 1
            task.plans[winner] = (quotes[winner].on_spec, quotes[winner].keywords, None)
        agent = self.by_id[winner]
        q = quotes[winner]
        task.status, task.agent, task.price = "assigned", winner, clearing.price_sats
        task.attempts, task.assigned_at = attempt, self.now
        task.on_spec, task.keywords = q.on_spec, q.keywords
        agent.won += 1
        if task.copies is not None:   # as live: the other copies' task_assigned come first
            for aid in reversed(task.copies.agents[1:]):
                other = self.by_id[aid]
                other.queue.append(task.task_id)
                self._event("task_assigned", task.task_id, aid)
                if len(other.queue) == 1:
                    self._start(other)
        agent.queue.append(task.task_id)
        self._event("task_assigned", task.task_id, winner)
        if len(agent.queue) == 1:
            self._start(agent)

    def _rejected(self, task: _Task, winner: str, price: int | None) -> bool:
        """As live (`Coordinator._hold`): a clearing over the task's max_price or the budget
        left waits for approval, decided at once by the ``approve`` policy; True when it was
        rejected (the task is then cancelled with the bid it held)."""
        held = sum(self.tasks[t - 1].price or 0
                   for t in {t for a in self.agents for t in a.queue})   # a copy counts once
        why = needs_approval(price, task.max_price, budget_left(self.budget, self.paid, held),
                             task.approved)
        if why is None:
            return False
        self._event(APPROVAL_REQUESTED, task.task_id, winner)
        self._asked = True
        asked = Task(task_id=task.task_id, description=task.description,
                     status=AWAITING_APPROVAL, assigned_agent=winner, price_sats=price,
                     attempts=task.attempts, reason=f"awaiting approval: {why}",
                     created_at=task.created_at)
        if decide(self.approve, asked, price):
            self._event(APPROVED, task.task_id, winner)
            task.reason = None
            return False
        self._event(REJECTED, task.task_id, winner)
        task.status, task.agent, task.price = CANCELLED, winner, price
        task.reason, task.completed_at = rejected_reason(why), self.now
        self._event(TASK_CANCELLED, task.task_id, winner)
        return True

    def _start(self, agent: _Agent) -> None:
        task = self.tasks[agent.queue[0] - 1]
        task.status = "running"
        if task.plans is not None:   # a redundant copy: its own kind of work and outcome
            on_spec, keywords, _ = task.plans[agent.agent_id]
            plan = self._plan(agent, task, on_spec)
            task.plans[agent.agent_id] = (on_spec, keywords, plan.ok)
        else:
            plan = self._plan(agent, task, task.on_spec)
            task.result = "ok" if plan.ok else None
        rate = self.crash_rate if self.twin is None else self.twin.crash_rate(agent.persona.id)
        if rate:
            draw = bid_rng(self.seed, agent.agent_id, task.task_id, task.attempts, STREAM_CRASH)
            if draw.random() < rate:   # the runner dies part-way through
                self._at(self.now + plan.seconds * draw.random(), "crash", task.task_id, agent)
                return
        self._at(self.now + plan.seconds, "done", task.task_id, agent)

    def _plan(self, agent: _Agent, task: _Task, on_spec: bool):
        if self.twin is not None:   # drawn from a calibrated model (idle: just assigned)
            return self.twin.plan(agent.agent_id, agent.persona.id, task.task_id,
                                  task.attempts, on_spec, task.assigned_at == self.now)
        return simulated_plan(self.seed, agent.agent_id, task.task_id, task.attempts, on_spec,
                              self.task_seconds)

    def _finish(self, task_id: int, agent_id: str) -> _Task:
        agent, task = self.by_id[agent_id], self.tasks[task_id - 1]
        if task.copies is not None:
            return self._copy_done(task, agent)
        agent.queue.popleft()
        ok = task.result == "ok"
        agent.stats.record_result(ok, task.keywords)
        if agent.queue:  # the runner goes straight on to the next task it holds
            self._start(agent)
        if ok:
            task.result = f"{agent_id} did: {task.description[:200]}"
            verdict = None if task.verify is None else \
                verify_sync(task.verify, task.result, self.verify_timeout)
            if verdict is None or verdict.ok:
                self.reputation.record(agent_id, SUCCESS)
                task.status, task.completed_at, task.reason = "completed", self.now, None
                agent.earned += task.price or 0
                self.paid += task.price or 0
                self.rows.add("ledger", None, task.task_id, task.attempts, agent_id,
                              task.price or 0, verdict is not None, self.now)
                self._event("task_completed", task.task_id, agent_id)
            else:   # as live: not paid, re-auctioned without this agent
                if task.excluded is None:
                    task.excluded = set()
                task.excluded.add(agent_id)
                others = sum(1 for a in self.agents if a.agent_id not in task.excluded)
                self._event(VERIFICATION_FAILED, task.task_id, agent_id)
                self.reputation.record(agent_id, VERIFICATION_FAILURE)
                self._decided(task, after_verification_failure(
                    task.attempts, self.max_attempts, agent_id, verdict.reason, others),
                    agent_id)
        else:
            task.result = f"simulated failure ({'on' if task.on_spec else 'off'}-spec task)"
            self.reputation.record(agent_id, FAILURE)
            self._decided(task, after_failure(task.attempts, self.max_attempts, agent_id,
                                              task.result), agent_id)
        self._drain()
        return task

    # -- redundant copies (timmy.market.redundancy), as live -----------------------
    def _copy_done(self, task: _Task, agent: _Agent) -> _Task:
        """A copy's result (`Coordinator._copy_result`): reported, and the task decided once
        every copy has reported."""
        agent.queue.popleft()
        on_spec, keywords, ok = task.plans[agent.agent_id]
        agent.stats.record_result(ok, keywords)
        if agent.queue:
            self._start(agent)
        if ok:
            output = f"{agent.agent_id} did: {task.description[:200]}"
            verdict = None if task.verify is None else \
                verify_sync(task.verify, output, self.verify_timeout)
            outcome = Outcome(PASSED, output) if verdict is None or verdict.ok else \
                Outcome(UNVERIFIED, output, why=verdict.reason)
        else:
            outcome = Outcome(COPY_FAILED, f"simulated failure "
                              f"({'on' if on_spec else 'off'}-spec task)")
        self._copy_report(task, agent.agent_id, outcome)
        self._drain()
        return task

    def _copy_report(self, task: _Task, agent_id: str, outcome: Outcome) -> None:
        """As `Coordinator._copy_report`: pay the first passing copy in bid order, or spend
        the attempt."""
        copies = task.copies
        if not copies.report(agent_id, outcome):
            return
        task.copies, task.plans = None, None
        paid = copies.paid()
        ratings = {PASSED: SUCCESS, COPY_FAILED: FAILURE, UNVERIFIED: VERIFICATION_FAILURE}
        for aid, o in copies.reported():
            if aid == paid or o.kind not in ratings:
                continue
            if o.kind == UNVERIFIED:
                if task.excluded is None:
                    task.excluded = set()
                task.excluded.add(aid)
                self._event(VERIFICATION_FAILED, task.task_id, aid)
            self.reputation.record(aid, ratings[o.kind])
        if paid is not None:
            self.reputation.record(paid, SUCCESS)
            task.agent, task.result = paid, copies.outcomes[paid].output
            task.status, task.completed_at, task.reason = "completed", self.now, None
            self.by_id[paid].earned += task.price or 0
            self.paid += task.price or 0
            self.rows.add("ledger", None, task.task_id, task.attempts, paid, task.price or 0,
                          task.verify is not None, self.now)
            self._event("task_completed", task.task_id, paid)
            return
        others = sum(1 for a in self.agents
                     if not task.excluded or a.agent_id not in task.excluded)
        task.result = copies.outcomes[copies.agents[0]].output or None
        self._decided(task, copies.decision(task.attempts, self.max_attempts, others),
                      copies.agents[0])

    def _decided(self, task: _Task, decision: Decision, agent_id: str) -> None:
        """As live: what `timmy.market.lifecycle` decided after an attempt without a result."""
        task.attempts, task.reason = decision.attempts, decision.reason
        if decision.action == Action.FAIL:
            task.status, task.completed_at = FAILED, self.now
            self._event(TASK_FAILED, task.task_id, agent_id)
        else:
            task.agent, task.price, task.assigned_at = None, None, None
            self._event(TASK_REQUEUED, task.task_id)
            if self.twin is not None and self.twin.requeue > 0:   # the model's re-auction time
                task.status = "queued"
                self._pending += 1
                self._seq += 1
                heapq.heappush(self.clock, (self.now + self.twin.requeue, self._seq, "auction",
                                            task.task_id, "", 0))
                return
            self._auction(task)

    def _drain(self) -> None:
        passed: list[int] = []   # waiting for a runner it does not exclude to have room
        while self.waiting and any(self._has_room(a) for a in self.agents):
            task = self.tasks[self.waiting.popleft() - 1]
            if task.excluded and not any(self._has_room(a) and self._eligible(task, a)
                                         for a in self.agents):
                passed.append(task.task_id)
                continue
            self._auction(task)
        if passed:
            self.waiting.extendleft(reversed(passed))

    def _crash(self, agent: _Agent) -> None:
        """As live: the running task uses its attempt, the ones waiting behind it do not;
        the runner comes back after restart_seconds with what it had learned."""
        agent.alive, agent.life = False, agent.life + 1
        held = list(agent.queue)
        agent.queue.clear()
        self._event("agent_crashed", None, agent.agent_id)
        self._at(self.now + (self.restart_seconds if self.twin is None else
                             self.twin.restart_seconds(agent.persona.id)), "restart", 0, agent)
        for i, task_id in enumerate(held):
            task = self.tasks[task_id - 1]
            if task.copies is not None:
                self._copy_report(task, agent.agent_id, lost(
                    task.attempts, self.max_attempts, "died", running=False, first=i == 0,
                    crashed=True))
                continue
            decision = after_runner_exit(task.attempts, self.max_attempts, agent.agent_id,
                                         "died", running=task.status == RUNNING, first=i == 0,
                                         crashed=True)
            if decision.action == Action.FAIL:
                task.result = None
            self._decided(task, decision, agent.agent_id)

    def _restart(self, agent: _Agent) -> None:
        agent.alive = True   # with its learned counters, which the coordinator hands over
        agent.restarts += 1
        self._event("agent_restarted", None, agent.agent_id)
        self._drain()

    def _step(self) -> _Task | None:
        """Advance the clock to its next entry; the task it finished or failed, if any."""
        self.now, _, what, task_id, agent_id, life = heapq.heappop(self.clock)
        if what == "auction":   # a model's overhead after the post has passed
            self._pending -= 1
            self._auction(self.tasks[task_id - 1])
            return None
        agent = self.by_id[agent_id]
        if life != agent.life:
            return None   # the runner died since: its plans died with it
        if what == "done":
            return self._finish(task_id, agent_id)
        if what == "crash":
            self._crash(agent)
            task = self.tasks[task_id - 1]
            return task if task.status == "failed" else None
        self._restart(agent)
        return None

    # -- drivers ------------------------------------------------------------
    def run_sequential(self, descriptions: Iterable[str], progress=None,
                       verify: Sequence[str | None] | None = None,
                       max_price: Sequence[int | None] | None = None) -> None:
        """Post each description when the previous one has finished (live: post, wait);
        ``verify``: each one's verify spec (or None); ``max_price`` each one's (or None)."""
        for i, description in enumerate(descriptions):
            task = self.post(description, None if verify is None else verify[i],
                             None if max_price is None else max_price[i])
            while task.status not in ("completed", "failed", CANCELLED):
                self._step()
            if progress is not None:
                progress.update(1)

    def run_arrivals(self, arrivals: Sequence[Arrival], progress=None,
                     verify: Sequence[str | None] | None = None,
                     max_price: Sequence[int | None] | None = None) -> None:
        """Tasks arrive on the virtual clock; runners queue what they win; ``verify`` and
        ``max_price`` as for `run_sequential` (in the order of ``arrivals``)."""
        specs = {id(a): None if verify is None else verify[i] for i, a in enumerate(arrivals)}
        limits = {id(a): None if max_price is None else max_price[i]
                  for i, a in enumerate(arrivals)}
        def step() -> None:
            task = self._step()
            if task is not None and task.status in ("completed", "failed") and progress:
                progress.update(1)

        for arrival in sorted(arrivals, key=lambda a: a.at):
            while self.clock and self.clock[0][0] <= arrival.at:
                step()
            self.now = max(self.now, arrival.at)
            self.post(arrival.description, specs[id(arrival)], limits[id(arrival)])
        while self.clock:
            step()

    def result(self, sink: Sink) -> None:
        """Send every table's rows to ``sink``."""
        rows = self.rows
        for t in self.tasks:
            rows.add("tasks", t.task_id, t.description, t.status, t.agent, t.price, t.attempts,
                     t.result, t.reason, t.created_at, t.assigned_at, t.completed_at)
        for a in self.agents:
            rows.add("agents", a.agent_id, a.persona.id, a.persona.name, None, "stopped",
                     a.restarts, a.won, a.earned, 0.0)
        bid_ids = rows.data["bids"][0]
        bid_ids[:] = range(1, len(bid_ids) + 1)
        entry_ids = rows.data["ledger"][0]
        entry_ids[:] = range(1, len(entry_ids) + 1)
        rows.send(sink)


class SimRun:
    """The outcome of `simulate`: the tables of a live export, and `export`.

    ``tasks``, ``bids``, ``agents``, ``events`` and ``ledger`` are pandas DataFrames with
    the columns of a live export, and `export` writes the same Parquet files. The
    simulator writes no per-bid events (the ``bids`` table has every bid); its events are
    the task and auction ones.
    """

    def __init__(self, tables: dict | None = None, paths: dict[str, Path] | None = None) -> None:
        self._tables, self.paths = tables or {}, paths or {}
        self._frames: dict = {}
        #: Per agent, what its results came to, as `Swarm.reputation` shows it (set by
        #: `simulate`; None from the compiled engine, whose rules do not read it).
        self.reputation: dict[str, dict] | None = None

    def table(self, name: str):
        """One table as a pyarrow Table."""
        if name not in self._tables:
            import pyarrow.parquet as pq

            return pq.read_table(self.paths[name])
        return self._tables[name]

    def _frame(self, name: str):
        if name not in self._frames:
            require("pandas", "analysis")
            self._frames[name] = self.table(name).to_pandas()
        return self._frames[name]

    @property
    def tasks(self):
        return self._frame("tasks")

    @property
    def bids(self):
        return self._frame("bids")

    @property
    def agents(self):
        return self._frame("agents")

    @property
    def events(self):
        return self._frame("events")

    @property
    def ledger(self):
        """A row per paid task, as a live swarm's ``ledger`` table."""
        return self._frame("ledger")

    def metrics(self) -> dict[str, float]:
        """The run in figures: what a sweep records per point.

        ``mean_price``: sats paid per completed task; ``specialist_share``: the share of
        winning bids that were on-spec; ``success_rate``: completed / tasks; ``failed``:
        tasks that gave up; ``reauction_rate``: auctions per task - 1; ``latency_p50_s``,
        ``latency_p95_s``: post to completion of completed tasks; ``makespan_s``: first
        post to last finish.
        """
        tasks, bids = self.tasks, self.bids
        done = tasks[tasks["status"] == "completed"]
        won = bids[bids["won"]]
        latency = done["completed_at"] - done["created_at"]
        n, nan = len(tasks), float("nan")
        return {
            "mean_price": float(done["price_sats"].mean()) if len(done) else nan,
            "specialist_share": float(won["on_spec"].mean()) if len(won) else nan,
            "success_rate": len(done) / n if n else nan,
            "failed": int((tasks["status"] == "failed").sum()),
            "reauction_rate": len(won) / n - 1 if n else nan,
            "latency_p50_s": float(latency.quantile(0.5)) if len(done) else nan,
            "latency_p95_s": float(latency.quantile(0.95)) if len(done) else nan,
            "makespan_s": float(tasks["completed_at"].max() - tasks["created_at"].min())
            if n else nan,
        }

    def summary(self) -> dict:
        """The run's figures: throughput, post-to-done p50/p95/p99, cost per task,
        utilisation per runner, queue over time (`timmy.sim.calibration.summarize`)."""
        from timmy.sim.calibration import summarize_tables

        return summarize_tables({n: getattr(self, n) for n in TABLES})

    def export(self, out_dir: str | Path) -> dict[str, Path]:
        """Write tasks, bids, agents, events and ledger as Parquet files, like `Swarm.export`
        (and reputation, but from the compiled engine, which keeps none)."""
        import pyarrow.parquet as pq

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        written = {}
        for name in TABLES:
            path = out / f"{name}.parquet"
            pq.write_table(self.table(name), path)
            written[name] = path
        if self.reputation is not None:   # the Python engine's, as a live export has it
            written["reputation"] = _write_reputation(self.reputation, out)
        return written


def simulate(workload: Sequence[str] | Sequence[Arrival], *, personas=None, seed: int = 0,
             rule: str = "specialist_first", runners: dict[str, int] | int | None = None,
             task_seconds: float = 0.05, max_attempts: int = 3, runner_queue: int = 32,
             crash_rate: float = 0.0, restart_seconds: float = 0.5, progress: bool = False,
             out: str | Path | None = None,
             engine: str = "auto", verify: str | Sequence[str | None] | None = None,
             verify_timeout: float = DEFAULT_TIMEOUT, budget: int | None = None,
             max_price: int | Sequence[int | None] | None = None,
             approve="all", model=None) -> SimRun:
    """Run ``workload`` through a simulated swarm with the live rules; returns a `SimRun`.

    ``workload``: descriptions (posted one at a time, as a live ``post``/``wait`` loop)
    or `Arrival` items (open loop on the virtual clock). ``runners``: runners per persona
    (an int for all, or {persona: count}); one each by default. ``crash_rate``: the chance
    that a runner dies during a task (keyed like bids); it is back after
    ``restart_seconds`` with what it had learned, as live. ``out``: stream the
    tables to Parquet files in that directory as they are made. ``engine``: "python"
    (the reference), "compiled" (numba; descriptions only, the rules of `COMPILED_RULES`,
    personas of the "adaptive" strategy only) or "auto" (compiled for descriptions when numba
    is installed, it knows the rule and every persona bids "adaptive", else python: any other
    mechanism, e.g. one registered with `timmy.register_mechanism`, runs on the Python
    engine). ``rule``: any registered mechanism, with parameters (``"score:w_price=0.7"``, see
    `timmy.market.mechanisms`).

    It runs the same code as a live swarm: the same keyed draws (seed, agent_id,
    task_id, attempt), the same learned counters per runner, the same clearing rules,
    the same seeded executions (`timmy.engine.executors.simulated_plan`), the same ids.
    Descriptions posted one at a time pick, task for task, the same winner at the same
    price as ``for d in descs: swarm.wait(swarm.post(d).task_id)`` on a fresh live
    swarm (the parity the tests check). With `Arrival` items, tasks queue up and
    runners hold up to ``runner_queue`` tasks each, as in the live engine. A crashed
    runner's running task uses its attempt; the ones waiting in its queue are auctioned
    again without losing one.

    ``verify``: a verify spec for every task, or one per workload item (None: none), as
    ``post(..., verify=)`` live: the simulated result (``"<agent> did: <description>"``,
    what a live simulated runner returns) must pass it to be paid, else the task is
    auctioned again without that agent. Each paid task writes a ``ledger`` row, as live.
    The compiled engine does not verify: "auto" then runs the Python engine.

    ``budget`` (sats) and ``max_price`` (sats, for every task or one per item) as
    ``Swarm(budget=)`` and ``post(..., max_price=)``: a clearing over the task's max_price
    or the budget left waits for approval (`timmy.market.budgets`), which ``approve``
    decides at once: "all" (assigned at the held price, as ``swarm.approve``), "none"
    (cancelled, as ``swarm.reject``) or a callable ``(task, price) -> bool``. The compiled
    engine has no budgets: "auto" then runs the Python engine.

    ``model``: a calibrated `timmy.sim.Model` (or its file, see `timmy.sim.calibrate`): each
    run's duration and success, crashes and restarts per persona, and the coordinator's
    post-to-assign overhead are drawn from it (keyed by the seed, `timmy.sim.twin_draws`)
    instead of ``task_seconds`` and the simulated executor's rates; ``crash_rate``, when
    given, replaces the recorded ones. ``runners`` defaults to the recorded mix, and
    ``workload`` may be a number of tasks to draw from the model's arrivals
    (`timmy.sim.twin_draws.model_arrivals`). It runs on the Python engine.
    """
    twin = None
    if model is not None:
        from timmy.sim.model import load_model
        from timmy.sim.twin_draws import TwinDraws, model_arrivals

        model = load_model(model)
        if engine == "compiled":
            raise ConfigError("the compiled engine does not simulate with a model",
                              hint='use engine="python" (or "auto") with model=')
        if isinstance(workload, int) and not isinstance(workload, bool):
            workload = model_arrivals(model, workload, seed)
        if runners is None:
            runners = {p: n for p, n in model.runners.items() if n > 0}
        twin = TwinDraws(model, seed, crash_rate or None)
    elif isinstance(workload, int):
        raise ConfigError("a number of tasks as the workload needs a model to draw them from",
                          hint="pass model= (timmy.sim.calibrate(...)), or a list of "
                               "descriptions or Arrival items")
    items = list(workload)
    sequential = all(isinstance(i, str) for i in items)
    if not sequential and not all(isinstance(i, Arrival) for i in items):
        raise ConfigError("a workload is a list of descriptions or of Arrival items",
                          hint="use timmy.sim.workloads.demo_descriptions(n, seed) or "
                          "poisson_arrivals(n, rate, seed)")
    if engine not in ("auto", "python", "compiled"):
        raise ConfigError(f"unknown simulation engine {engine!r}",
                          hint='use "auto", "python" or "compiled"')
    specs = _verify_specs(verify, len(items))
    limits = _max_prices(max_price, len(items))
    sim = Simulator(personas=personas, seed=seed, rule=rule, runners=runners,
                    task_seconds=task_seconds, max_attempts=max_attempts,
                    runner_queue=runner_queue, crash_rate=crash_rate,
                    restart_seconds=restart_seconds, verify_timeout=verify_timeout,
                    budget=budget, approve=approve, twin=twin)
    if crash_rate and engine == "compiled":
        raise ConfigError("the compiled engine does not simulate runner crashes",
                          hint='use engine="python" (or "auto") with crash_rate')
    strategies = sorted({a.persona.strategy for a in sim.agents} - {"adaptive"})
    if strategies and engine == "compiled":   # "auto" takes the python engine for them
        raise ConfigError(f"the compiled engine bids with the adaptive strategy only, not "
                          f"{', '.join(strategies)}",
                          hint='use engine="python" (or "auto") with personas of other '
                               "strategies")
    if rule not in COMPILED_RULES and engine == "compiled":
        raise ConfigError(f"the compiled engine does not know the clearing rule {rule!r}",
                          hint=f'use engine="python" (or "auto") with it; the compiled engine '
                          f'clears {", ".join(sorted(COMPILED_RULES))}')
    if (budget is not None or limits is not None) and engine == "compiled":
        raise ConfigError("the compiled engine has no budgets or max_price",
                          hint='use engine="python" (or "auto") with budget/max_price')
    if specs is not None and engine == "compiled":
        raise ConfigError("the compiled engine does not verify results",
                          hint='use engine="python" (or "auto") with verify')
    compiled = (sequential and not crash_rate and not strategies and specs is None
                and twin is None
                and budget is None and limits is None
                and engine != "python" and rule in COMPILED_RULES and _numba_available(engine))
    sink = Sink(out)
    bar = None
    if progress:
        from timmy.progress import progress_bar

        bar = progress_bar(len(items))
    try:
        if compiled:
            from timmy.sim.compiled import simulate_sequential

            simulate_sequential(items, catalog=sim.catalog,
                                agent_ids=[a.agent_id for a in sim.agents], seed=seed,
                                rule=rule, task_seconds=task_seconds,
                                max_attempts=max_attempts, sink=sink, progress=bar)
        else:
            if sequential:
                sim.run_sequential(items, bar, specs, limits)
            else:
                sim.run_arrivals(items, bar, specs, limits)
            sim.result(sink)
    finally:
        if bar is not None:
            bar.close()
    run = sink.close()
    if not compiled:
        run.reputation = sim.reputation.snapshot(a.agent_id for a in sim.agents)
        if out is not None:   # streamed: its reputation beside the tables, as export writes
            _write_reputation(run.reputation, Path(out))
    return run


def _write_reputation(records: dict, out: Path) -> Path:
    import pyarrow.parquet as pq

    from timmy.storage.export import reputation_arrow

    pq.write_table(reputation_arrow(records), out / "reputation.parquet")
    return out / "reputation.parquet"


def _verify_specs(verify, n: int) -> list[str | None] | None:
    """``simulate``'s ``verify``: None, one spec for all, or one per item; each checked as
    a live post checks it."""
    if verify is None:
        return None
    specs = [verify] * n if isinstance(verify, str) else list(verify)
    if len(specs) != n:
        raise ConfigError(f"verify has {len(specs)} specs for {n} workload items",
                          hint="pass one spec for every task, or one per item (None: none)")
    checked: dict[str, str] = {}
    for spec in specs:
        if spec is not None and spec not in checked:
            checked[spec] = check_spec(spec)
    return specs if checked else None


def _max_prices(max_price, n: int) -> list[int | None] | None:
    """``simulate``'s ``max_price``: None, one for all, or one per item; each checked as a
    live post checks it."""
    if max_price is None:
        return None
    if isinstance(max_price, Sequence) and not isinstance(max_price, str):
        limits = list(max_price)
        if len(limits) != n:
            raise ConfigError(f"max_price has {len(limits)} values for {n} workload items",
                              hint="pass one max_price for every task, or one per item "
                                   "(None: none)")
    else:
        limits = [max_price] * n
    limits = [check_sats("max_price", m) for m in limits]
    return limits if any(m is not None for m in limits) else None


def _numba_available(engine: str) -> bool:
    try:
        import numba  # noqa: F401
    except ImportError:
        if engine == "compiled":
            raise ConfigError("the compiled simulation engine needs numba",
                              hint='pip install "timmy[analysis]"') from None
        return False
    return True

