"""`MarketHistory`: what the desktop's stat cards and charts draw, folded from the stored
events (the newest `HISTORY` of them, one page from the swarm) and then from the live stream;
pure (no widgets, no I/O), so a reload that reads the same stored events draws the same picture.

Queue depth needs more than the window: tasks that waited before its first event are in no
stored event of it. `MarketHistory.load` is given the true number waiting now (the store's
counts) and the tasks' statuses (the console's snapshot); the depth at the window's start is
that number minus the net change the window's events made, and each task first seen in the
window counts as waiting before its first event when that event says so (an auction opened
for it, a bid, ...), so the chart is right from its first point and follows events after.
"""

from __future__ import annotations

import math
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass

from timmy.market.lifecycle import status_after

HISTORY = 10_000   # stored events a page starts from: one page (timmy.paging.MAX_LIMIT)
BUCKET = 5         # seconds per point of the throughput and queue-depth charts
POINTS = 120       # points those charts keep (10 minutes at 5 s)
PRICES = 500       # clearing prices kept (the newest)
MIN_POINTS = 23    # the time axis spans at least this many buckets before now
WAITING = ("queued", "bidding")
#: A task first seen through one of these events was waiting (queued or bidding) before it.
WAITED_BEFORE = frozenset({"auction_opened", "bid", "auction_closed", "approval_requested",
                           "task_assigned"})
#: The status of a task first seen through an event that moves nothing itself.
STATUS_SEEN = {"bid": "bidding", "approved": "awaiting_approval",
               "rejected": "awaiting_approval"}


def waited_before(kind: str, agent_id: str | None) -> bool:
    """Whether a task whose first known event is (``kind``, ``agent_id``) was waiting before
    it: a cancel or failure with no agent holding the task took it from the queue or its
    auction (`timmy.engine.coordinator` names the holder on every finish event)."""
    if kind in ("task_cancelled", "task_failed"):
        return agent_id is None
    return kind in WAITED_BEFORE


@dataclass(frozen=True, slots=True)
class Price:
    """One cleared auction: when, the winner's persona, the price, on-spec or not."""

    event_id: int
    ts: float
    persona: str
    sats: int
    on_spec: bool


def waiting_now(status: dict | None) -> int | None:
    """Tasks queued or bidding by a swarm's ``status()`` (None: it does not say)."""
    tasks = (status or {}).get("tasks")
    if not isinstance(tasks, dict):
        return None
    return sum(tasks.get(k, 0) for k in WAITING)


def persona_of(agent_id: str | None, known: dict[str, str] | None = None) -> str:
    """An agent's persona: from ``known`` (agent events) or its id ("forge-2")."""
    if agent_id is None:
        return "?"
    return (known or {}).get(agent_id) or agent_id.rsplit("-", 1)[0]


def percentile(values, q: float) -> float | None:
    """The ``q`` (0..1) percentile of ``values`` by nearest rank, None for none."""
    ordered = sorted(values)
    if not ordered:
        return None
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


class MarketHistory:
    """Completions, clearing prices, earnings and wins by persona, and queue depth, over the
    stored window of events and every live event after it (each event counted once)."""

    def __init__(self, bucket: int = BUCKET, points: int = POINTS, prices: int = PRICES,
                 max_tasks: int = 5000) -> None:
        self.bucket, self.points, self.max_tasks = bucket, points, max_tasks
        self.last_event_id = 0
        self.loaded = False
        self._pending: list = []
        self.personas: dict[str, str] = {}
        self.completions: Counter[int] = Counter()       # bucket start -> completions
        self.depth: OrderedDict[int, int] = OrderedDict()  # bucket start -> queue depth at end
        self.prices: deque[Price] = deque(maxlen=prices)
        self.earned: Counter[str] = Counter()            # persona -> sats paid
        self.wins: Counter[str] = Counter()              # persona -> auctions won
        self.paid_sats = 0
        self.latencies: deque[float] = deque(maxlen=max_tasks)   # post -> completed, seconds
        self.done_ts: deque[float] = deque(maxlen=10_000)
        self._posted: OrderedDict[int, float] = OrderedDict()
        self._status: OrderedDict[int, str] = OrderedDict()
        self._bids: dict[tuple[int, str], bool] = {}      # (task, agent) -> on_spec, open only
        self.waiting = 0
        self.start_depth = 0   # tasks waiting before the first depth point kept
        self._known: dict[int, str] = {}   # task -> status, from the snapshot (`load`)
        self.first_ts: float | None = None
        self.last_ts: float | None = None

    # -- loading ------------------------------------------------------------
    def load(self, events, statuses: dict[int, str] | None = None,
             waiting: int | None = None) -> None:
        """Fold the stored events in, then the live ones that arrived meanwhile (once each).

        ``waiting``: tasks queued or bidding now, by the store (``status()["tasks"]``);
        ``statuses``: task -> status now, of the tasks the console knows (the snapshot). With
        either, queue depth starts from the truth instead of from the window's first event.
        """
        for event in sorted(events, key=lambda e: e.event_id):
            self._fold(event)
        pending, self._pending = self._pending, None
        for event in sorted(pending, key=lambda e: e.event_id):
            self._fold(event)
        statuses = statuses or {}
        if waiting is None and statuses:
            waiting = sum(s in WAITING for s in statuses.values())
        if waiting is not None:
            self._seed(waiting)
        self._known = {t: s for t, s in statuses.items() if t not in self._status}
        self.loaded = True

    def _seed(self, waiting: int) -> None:
        """Shift the depth so that it ends at ``waiting``: the tasks that waited through the
        whole window (and those that waited before their first event in it) were counted
        from zero until now."""
        offset = waiting - self.waiting
        self.waiting += offset
        self.start_depth += offset
        for key in self.depth:
            self.depth[key] += offset

    def apply(self, event) -> None:
        """One live event (kept aside until `load` has the stored ones)."""
        if self._pending is not None:
            self._pending.append(event)
            return
        self._fold(event)

    def _fold(self, event) -> None:
        if event.event_id <= self.last_event_id:
            return   # already counted: stored and live overlap
        self.last_event_id = event.event_id
        ts, kind, tid, aid, data = event.ts, event.kind, event.task_id, event.agent_id, \
            event.data or {}
        self.first_ts = ts if self.first_ts is None else self.first_ts
        self.last_ts = ts
        if aid and data.get("persona"):   # agent events carry their persona
            self.personas[aid] = data["persona"]
        if tid is None:
            return
        if kind == "task_posted":
            self._posted[tid] = ts
            if len(self._posted) > self.max_tasks:
                self._posted.popitem(last=False)
        elif kind == "bid" and aid is not None:
            self._bids[(tid, aid)] = bool(data.get("on_spec"))
        elif kind == "auction_closed":
            on_spec = self._bids.get((tid, aid), False) if aid else False
            for key in [k for k in self._bids if k[0] == tid]:
                del self._bids[key]
            if aid is not None and data.get("price_sats") is not None:
                persona = persona_of(aid, self.personas)
                self.prices.append(Price(event.event_id, ts, persona, data["price_sats"],
                                         on_spec))
                self.wins[persona] += 1
        elif kind == "task_completed" and self._status.get(tid) != "completed":
            self.completions[self._bucket(ts)] += 1
            self.done_ts.append(ts)
            sats = data.get("price_sats") or 0
            self.earned[persona_of(aid, self.personas)] += sats
            self.paid_sats += sats
            if tid in self._posted:
                self.latencies.append(ts - self._posted.pop(tid))
        status = status_after(kind, aid)
        if status is not None:
            self._move(tid, status, ts, kind, aid)
        elif kind in STATUS_SEEN and tid not in self._status and tid not in self._known:
            self._move(tid, STATUS_SEEN[kind], ts, kind, aid)   # so since before the window

    def _move(self, tid: int, status: str, ts: float, kind: str = "",
              agent_id: str | None = None) -> None:
        before = self._status.get(tid) or self._known.pop(tid, None)
        if before in ("completed", "failed", "cancelled"):
            return
        was = before in WAITING if before is not None else waited_before(kind, agent_id)
        self.waiting += (status in WAITING) - was
        self._status[tid] = status
        self._status.move_to_end(tid)
        if len(self._status) > self.max_tasks:
            self._status.popitem(last=False)   # forgotten, still counted: its next event
            #                                    says whether it was waiting (waited_before)
        self.depth[self._bucket(ts)] = self.waiting
        while len(self.depth) > self.points:
            _, self.start_depth = self.depth.popitem(last=False)

    def _bucket(self, ts: float) -> int:
        return int(ts // self.bucket) * self.bucket

    # -- reads for the views ------------------------------------------------
    def axis(self, now: float) -> list[int]:
        """The charts' time buckets: from the first stored event (at most `points` back)
        to now."""
        end = self._bucket(now)
        start = end - (self.points - 1) * self.bucket
        if self.first_ts is not None:   # from the first stored event, two minutes at least
            start = min(max(start, self._bucket(self.first_ts)), end - MIN_POINTS * self.bucket)
        return list(range(min(start, end), end + 1, self.bucket))

    def throughput(self, now: float) -> tuple[list[int], list[float]]:
        """(bucket starts, completions per second in each)."""
        xs = self.axis(now)
        return xs, [self.completions.get(x, 0) / self.bucket for x in xs]

    def queue_depth(self, now: float) -> tuple[list[int], list[int]]:
        """(bucket starts, tasks queued or bidding at the end of each): carried forward."""
        xs = self.axis(now)
        ys, last = [], self.start_depth
        known = sorted(self.depth.items())
        i = 0
        for x in xs:
            while i < len(known) and known[i][0] <= x:
                last = known[i][1]
                i += 1
            ys.append(max(last, 0))
        return xs, ys

    def rate(self, now: float, seconds: int = 60) -> float:
        """Completions per second over the last ``seconds``."""
        recent = sum(1 for ts in self.done_ts if now - ts < seconds)
        return recent / seconds

    def latency(self) -> tuple[float | None, float | None]:
        """p50 and p95 post-to-done latency (seconds) of the completions in the window."""
        return percentile(self.latencies, 0.5), percentile(self.latencies, 0.95)

    def by_persona(self) -> list[tuple[str, int, int, float]]:
        """(persona, auctions won, sats earned, win share) for every persona that won."""
        total = sum(self.wins.values())
        names = sorted(set(self.wins) | set(self.earned))
        return [(p, self.wins.get(p, 0), self.earned.get(p, 0),
                 self.wins.get(p, 0) / total if total else 0.0) for p in names]

    def summary(self) -> str:
        """A stable one-line digest of what the charts show (for tests and the data line)."""
        done = sum(self.completions.values())
        prices = ",".join(f"{p.persona}:{p.sats}{'*' if p.on_spec else ''}"
                          for p in self.prices)
        personas = ",".join(f"{p}:{w}/{e}" for p, w, e, _ in self.by_persona())
        return f"completed {done}; won/earned {personas or '-'}; prices {prices or '-'}"
