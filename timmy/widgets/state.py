"""What a console knows about a swarm: `SwarmState`, a snapshot at start with every event
folded in by `SwarmState.apply` in O(1); pure (no widgets, no I/O).
"""

from __future__ import annotations

from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, field

from timmy.market.lifecycle import AGENT_EVENT_STATUS, TASK_EVENT_STATUS, TERMINAL_STATES
from timmy.widgets.recent import RecentAuctions

AGENT_STATUS = AGENT_EVENT_STATUS   # the status each event implies: the lifecycle's
TASK_STATUS = TASK_EVENT_STATUS


@dataclass(slots=True)
class TaskRow:
    task_id: int
    description: str = ""
    status: str = "queued"
    agent: str | None = None
    price_sats: int | None = None
    attempts: int = 0
    why: str | None = None
    reason: str | None = None
    result: str | None = None


@dataclass(slots=True)
class AgentRow:
    agent_id: str
    persona: str
    status: str = "starting"
    tasks_won: int = 0
    earned_sats: int = 0
    restarts: int = 0
    held: set[int] = field(default_factory=set)
    reliability: float | None = None   # `timmy.market.reputation`; None: not known yet


class SwarmState:
    """Agents, tasks (the newest ``max_tasks``), the last ``feed_size`` events and the recent
    auctions (the desktop's charts and cards fold their own `timmy.widgets.market`)."""

    def __init__(self, feed_size: int = 50, max_tasks: int = 5000) -> None:
        self.agents: dict[str, AgentRow] = {}
        self.tasks: OrderedDict[int, TaskRow] = OrderedDict()
        self.counts: Counter[str] = Counter()
        self.feed: deque = deque(maxlen=feed_size)
        self.completed_ids: deque[int] = deque(maxlen=feed_size)
        self.events_seen = 0
        self.last_event_id = 0
        self.max_tasks = max_tasks
        self.recent = RecentAuctions()   # the last auctions and each task's recorded "why"
        self.history_upto = 0            # events up to this id came from the stored history

    # -- the snapshot -------------------------------------------------------
    def load(self, tasks, agents, reputation: dict | None = None) -> None:
        """Start from ``swarm.tasks()`` and ``swarm.agents()`` (and ``swarm.reputation()``)."""
        for t in tasks:
            row = self._task(t.task_id)
            self._set_status(row, t.status)
            row.description, row.agent, row.price_sats = t.description, t.assigned_agent, \
                t.price_sats
            row.attempts, row.reason, row.result = t.attempts, t.reason, t.result
            if t.status == "completed":
                self.completed_ids.append(t.task_id)
        for a in agents:
            self.agents[a.agent_id] = AgentRow(a.agent_id, a.persona, a.status, a.tasks_won,
                                               a.earned_sats, a.restarts)
        for agent_id, rep in (reputation or {}).items():
            if agent_id in self.agents:
                self.agents[agent_id].reliability = rep.get("reliability")
        for row in self.tasks.values():
            if row.agent in self.agents and row.status in ("assigned", "running"):
                self.agents[row.agent].held.add(row.task_id)

    def load_history(self, events) -> None:
        """Stored events (oldest first, `timmy.widgets.recent.load_history`): the feed, the
        recent auctions and each loaded task's "why" start from them, so a reload shows
        what the page showed (counters stay the snapshot's: nothing is counted twice)."""
        events = list(events)
        self.recent.load(events)
        for event in events[-(self.feed.maxlen or 0):]:
            self.feed.append(event)
        if events:
            self.history_upto = events[-1].event_id
        for task_id, why in self.recent.why.items():
            if task_id in self.tasks:
                self.tasks[task_id].why = why

    # -- events -------------------------------------------------------------
    def apply(self, event) -> None:
        """Fold one event in (any order relative to the snapshot: a finished task stays so)."""
        self.events_seen += 1
        self.last_event_id = max(self.last_event_id, event.event_id)
        if event.event_id > self.history_upto:   # not already in the feed from the history
            self.feed.append(event)
        self.recent.apply(event)
        kind, data, tid, aid = event.kind, event.data or {}, event.task_id, event.agent_id
        if kind in AGENT_STATUS:
            agent = self._agent(aid, data.get("persona"))
            agent.status = AGENT_STATUS[kind]
            agent.restarts = data.get("restarts", agent.restarts)
            return
        if tid is None or kind == "bid":
            return
        row = self._task(tid)
        if kind == "task_posted":
            row.description = data.get("description", row.description)
        elif kind == "auction_closed":
            row.why = data.get("why")
            if (aid is None or data.get("price_sats") is None) \
                    and row.status not in TERMINAL_STATES:
                self._set_status(row, "queued")   # nobody could take it: back in the queue
        elif kind == "approval_requested":   # the winning bid held (timmy.market.budgets)
            row.agent, row.price_sats = aid, data.get("price_sats")
            row.reason = f"awaiting approval: {data.get('reason')}"
        elif kind == "task_assigned":
            row.agent, row.price_sats = aid, data.get("price_sats")
            row.attempts = data.get("attempt", row.attempts)
            agent = self._agent(aid)
            agent.tasks_won += 1
            agent.held.add(tid)
            agent.status = "busy"
        elif kind in ("task_completed", "task_failed", "task_cancelled", "task_requeued"):
            holder = self.agents.get(row.agent or "")
            if holder is not None:
                holder.held.discard(tid)
                if not holder.held and holder.status == "busy":
                    holder.status = "idle"
            row.reason = data.get("reason")
            if "reliability" in data:   # a result counted in its agent's reputation
                self._agent(data.get("rated") or aid).reliability = data["reliability"]
            if kind == "task_completed" and row.status not in TERMINAL_STATES:
                if holder is not None:
                    holder.earned_sats += data.get("price_sats") or 0
                self.completed_ids.append(tid)
            if kind == "task_requeued" and row.status not in TERMINAL_STATES:
                row.agent, row.price_sats = None, None
        if kind in TASK_STATUS:
            self._set_status(row, TASK_STATUS[kind])

    # -- reads for the views ------------------------------------------------
    def rows(self, status: str | None = None, limit: int = 100) -> list[TaskRow]:
        """The newest ``limit`` tasks (in ``status`` if given), newest first."""
        out = []
        for row in reversed(self.tasks.values()):
            if status is None or row.status == status:
                out.append(row)
                if len(out) >= limit:
                    break
        return out

    # -- helpers ------------------------------------------------------------
    def _task(self, task_id: int) -> TaskRow:
        row = self.tasks.get(task_id)
        if row is None:
            row = self.tasks[task_id] = TaskRow(task_id)
            self.counts[row.status] += 1
            if len(self.tasks) > self.max_tasks:
                _, old = self.tasks.popitem(last=False)
                self.counts[old.status] -= 1
        return row

    def _set_status(self, row: TaskRow, status: str) -> None:
        if row.status in TERMINAL_STATES or row.status == status:
            return   # a finished task never moves again (an event older than the snapshot)
        if row.task_id in self.tasks:
            self.counts[row.status] -= 1
            self.counts[status] += 1
        row.status = status

    def _agent(self, agent_id: str, persona: str | None = None) -> AgentRow:
        agent = self.agents.get(agent_id)
        if agent is None:
            agent = self.agents[agent_id] = AgentRow(
                agent_id, persona or agent_id.rsplit("-", 1)[0])
        return agent
