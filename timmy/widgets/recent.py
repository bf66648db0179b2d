"""Recent auctions: `RecentAuctions` folds ``auction_opened`` / ``auction_closed`` /
``task_posted`` / ``task_assigned`` events (from the stored history at page load, then live)
into the last N auctions, each with its bidder count, winner, price, rule, the recorded "why"
and the time from post to assignment; `RecentPanel` is the desktop's clickable list.

Everything here is derived from stored events, so a reload shows the same list and the
same "why" (`HISTORY` newest events are read at page load: bounded, whatever the history).
Pure except `RecentPanel` and `load_history` (which reads ``swarm.events``).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass

from timmy.widgets import render
from timmy.widgets.render import esc

HISTORY = 2000   # newest stored events a page starts from (two pages at most)
SHOWN = 10       # auctions in the desktop's list


@dataclass(slots=True)
class AuctionRecord:
    """One closed auction, as its stored events tell it."""

    task_id: int
    auction_id: int | None      # the event_id of its auction_opened (None: before the window)
    attempt: int
    rule: str
    bidders: int
    winner: str | None
    price_sats: int | None
    why: str
    closed_ts: float
    posted_ts: float | None = None
    assigned_ts: float | None = None
    reliability: dict | None = None   # bidder -> reliability, when the rule used it
    event_id: int = 0

    @property
    def to_assign(self) -> float | None:
        """Seconds from the task's post to its assignment (None: not known or not assigned)."""
        if self.posted_ts is None or self.assigned_ts is None:
            return None
        return max(0.0, self.assigned_ts - self.posted_ts)


class RecentAuctions:
    """The last ``size`` closed auctions (newest last) and the recorded "why" of each task's
    latest auction. Each event counts once: events at or before ``last_id`` are skipped, so
    the stored history and the live stream may overlap."""

    def __init__(self, size: int = 50, tasks: int = 5000) -> None:
        self.records: deque[AuctionRecord] = deque(maxlen=size)
        self.why: OrderedDict[int, str] = OrderedDict()        # task_id -> latest why
        self.closed: OrderedDict[int, list[AuctionRecord]] = OrderedDict()   # by task
        self._posted: OrderedDict[int, float] = OrderedDict()
        self._opened: dict[int, int] = {}
        self._tasks = tasks
        self.last_id = 0

    def load(self, events) -> None:
        """Fold stored events (oldest first), e.g. ``swarm.events(limit=HISTORY)``."""
        for event in events:
            self.apply(event)

    def apply(self, event) -> bool:
        """Fold one event in; True when the list changed."""
        if event.event_id and event.event_id <= self.last_id:
            return False
        self.last_id = max(self.last_id, event.event_id or 0)
        kind, tid, data = event.kind, event.task_id, event.data or {}
        if tid is None:
            return False
        if kind == "task_posted":
            _put(self._posted, tid, event.ts, self._tasks)
        elif kind == "auction_opened":
            self._opened[tid] = event.event_id
        elif kind == "auction_closed":
            record = AuctionRecord(
                tid, self._opened.pop(tid, None), data.get("attempt", 1), data.get("rule", ""),
                data.get("bids", 0), event.agent_id, data.get("price_sats"),
                data.get("why") or "", event.ts, self._posted.get(tid),
                reliability=data.get("reliability"), event_id=event.event_id)
            self.records.append(record)
            _put(self.why, tid, record.why, self._tasks)
            _put(self.closed, tid, [*self.closed.get(tid, [])[-9:], record], self._tasks)
            return True
        elif kind == "task_assigned":
            for record in reversed(self.closed.get(tid, [])):
                if record.winner == event.agent_id and record.assigned_ts is None:
                    record.assigned_ts = event.ts
                    return True
        return False

    def newest(self, n: int = SHOWN) -> list[AuctionRecord]:
        return list(self.records)[-n:][::-1]


def _put(d: OrderedDict, key, value, cap: int) -> None:
    d[key] = value
    d.move_to_end(key)
    if len(d) > cap:
        d.popitem(last=False)


def load_history(swarm, limit: int = HISTORY) -> list:
    """The newest ``limit`` stored events, oldest first (at most two calls); [] from a swarm
    that cannot say (the page then starts empty, as before)."""
    from timmy.errors import TimmyError

    try:
        events = list(swarm.events(limit=min(limit, 1000)))
        if limit > 1000 and len(events) == 1000:
            older = swarm.events(before=events[0].event_id, limit=limit - 1000)
            events = list(older) + events
    except (AttributeError, TimmyError):
        return []
    return events


def seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.1f} s"


def record_cells(r: AuctionRecord) -> tuple[str, ...]:
    """The escaped cells of one auction's row: task, bidders, winner, price, rule, post→assign."""
    return (f"#{esc(r.task_id)}", esc(r.bidders), esc(r.winner or "none"),
            "-" if r.price_sats is None else f"{esc(r.price_sats)} sats",
            f"<code>{esc(r.rule)}</code>", esc(seconds(r.to_assign)))


COLUMNS = ("task", "bidders", "winner", "price", "rule", "post → assigned")


def matches(task_id: int, description: str, query: str) -> bool:
    """The inspector's search: ``12`` or ``#12`` matches task 12 (and ids starting 12);
    anything else matches description text, case-insensitively."""
    q = query.strip().lower()
    if not q:
        return True
    if q.lstrip("#").isdigit():
        return str(task_id).startswith(q.lstrip("#"))
    return q in (description or "").lower()


class RecentPanel:
    """The last `SHOWN` auctions, one row each: a button (the task, opens it in the
    inspector) and its bidders, winner, price, rule and post→assign time."""

    def __init__(self, w, on_open) -> None:
        self.on_open = on_open
        self.buttons, self.cells, self.rows = [], [], []
        for _ in range(SHOWN):
            button = w.Button(description="", layout=w.Layout(width="90px", min_height="44px"),
                              tooltip="open this auction in the inspector")
            button.add_class("timmy-recent-open")
            button.on_click(self._clicked)
            cells = w.HTML(layout=w.Layout(width="100%"))
            row = w.HBox([button, cells], layout=w.Layout(display="none"))
            self.buttons.append(button)
            self.cells.append(cells)
            self.rows.append(row)
        self.empty = w.HTML()
        head = w.HTML("<div style='font-size:12px;color:#555'>"
                      + " · ".join(esc(c) for c in COLUMNS) + "</div>")
        self.box = w.VBox([head, self.empty, *self.rows])
        self.box.add_class("timmy-recent")
        self._shown: list = []

    def _clicked(self, button) -> None:
        i = self.buttons.index(button)
        if i < len(self._shown):
            self.on_open(self._shown[i].task_id)

    def update(self, records: list[AuctionRecord]) -> None:
        key = [(r.event_id, r.assigned_ts) for r in records]
        if key == [(r.event_id, r.assigned_ts) for r in self._shown]:
            return
        self._shown = list(records)
        self.empty.value = ("" if records else
                            "<i>no auctions yet: post a task (each auction closes in "
                            "milliseconds; they are listed here)</i>")
        for i, row in enumerate(self.rows):
            if i < len(records):
                r = records[i]
                cells = record_cells(r)
                self.buttons[i].description = f"#{r.task_id}"
                self.cells[i].value = ("<div style='font-size:12px;line-height:1.3'>"
                                       + " · ".join(cells[1:]) + "<br><span style='color:#666'>"
                                       + esc(render.clip(r.why, 90)) + "</span></div>")
                row.layout.display = None
            else:
                row.layout.display = "none"
