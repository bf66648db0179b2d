"""Queue depth on the desktop's chart (`timmy.widgets.market.MarketHistory`) when the history
is longer than the stored window a page starts from: the tasks that waited before the window
are in none of its events, so the depth starts from the store's count of waiting tasks and the
tasks' statuses, then follows events. Checked against a replay of the whole history (random
lifecycles, any window, with and without the snapshot, with forgetting), and on a real swarm
with more than one page of events and tasks still queued.
"""

from __future__ import annotations

import random
import time

import pytest

from timmy.market.lifecycle import status_after
from timmy.market.models import Event
from timmy.widgets.market import BUCKET, HISTORY, WAITING, MarketHistory

pytest.importorskip("ipywidgets")
pytest.importorskip("bqplot")


def lives(seed: int, steps: int = 1500) -> list[Event]:
    """Random task lifecycles, interleaved, as the coordinator emits them (one event a
    second): posts, auctions with bids that assign or find nobody, starts, completions,
    failures (held or in the auction), requeues and cancels (queued, bidding or held)."""
    rng = random.Random(seed)
    status: dict[int, str] = {}
    holder: dict[int, str | None] = {}
    events: list[Event] = []

    def emit(kind, tid, agent=None, **data):
        events.append(Event(event_id=len(events) + 1, ts=10_000.0 + len(events), kind=kind,
                            task_id=tid, agent_id=agent, data=data))

    for _ in range(steps):
        alive = [t for t, s in status.items() if s not in ("completed", "failed", "cancelled")]
        if not alive or rng.random() < 0.25:
            tid = len(status) + 1
            status[tid], holder[tid] = "queued", None
            emit("task_posted", tid, description=f"task {tid}")
            continue
        tid = rng.choice(alive)
        s, agent = status[tid], f"forge-{rng.randint(1, 3)}"
        roll = rng.random()
        if roll < 0.05:
            emit("task_cancelled", tid, holder[tid])
            status[tid] = "cancelled"
        elif s == "queued":
            if roll < 0.7:   # some tasks wait a long time
                emit("auction_opened", tid, attempt=1)
                status[tid] = "bidding"
        elif s == "bidding":
            if roll < 0.4:
                emit("bid", tid, agent, sats=rng.randint(10, 50), on_spec=roll < 0.2)
            elif roll < 0.75:
                emit("auction_closed", tid, agent, price_sats=30, why="lowest")
                emit("task_assigned", tid, agent, price_sats=30)
                status[tid], holder[tid] = "assigned", agent
            elif roll < 0.95:
                emit("auction_closed", tid, None, why="nobody bid")
                status[tid] = "queued"
            else:
                emit("task_failed", tid, None, reason="mechanism failed")
                status[tid] = "failed"
        elif s == "assigned":
            emit("task_started", tid, holder[tid])
            status[tid] = "running"
        elif s == "running":
            if roll < 0.6:
                emit("task_completed", tid, holder[tid], price_sats=30)
                status[tid] = "completed"
            elif roll < 0.8:
                emit("task_failed", tid, holder[tid], reason="crashed")
                status[tid] = "failed"
            else:
                emit("task_requeued", tid, reason="runner gone")
                status[tid], holder[tid] = "queued", None
    return events


def replay(events) -> tuple[dict[int, str], dict[int, int]]:
    """The truth, from the whole history: each task's status, and the depth at the end of
    each bucket that has events."""
    status: dict[int, str] = {}
    depth: dict[int, int] = {}
    for e in events:
        after = status_after(e.kind, e.agent_id)
        if after is not None and status.get(e.task_id) not in ("completed", "failed",
                                                                "cancelled"):
            status[e.task_id] = after
        depth[int(e.ts // BUCKET) * BUCKET] = sum(s in WAITING for s in status.values())
    return status, depth


def waiting(status: dict[int, str]) -> int:
    return sum(s in WAITING for s in status.values())


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("snapshot", ["statuses", "count only"])
@pytest.mark.parametrize("max_tasks", [5000, 40])
def test_queue_depth_from_a_window_matches_the_whole_history(seed, snapshot, max_tasks):
    events = lives(seed)
    start, load_at = len(events) // 3, 2 * len(events) // 3   # stored window, then live
    stored, live = events[start:load_at], events[load_at:]
    before, _ = replay(events[:start])
    now, _ = replay(events[:load_at])
    _, truth = replay(events)
    m = MarketHistory(points=10_000, max_tasks=max_tasks)
    if snapshot == "statuses":   # the console's snapshot: the newest tasks only
        newest = dict(sorted(now.items())[-200:])
        m.load(stored, newest, waiting(now))
    else:
        m.load(stored, waiting=waiting(now))
    for e in live:
        m.apply(e)
    xs, ys = m.queue_depth(events[-1].ts)
    first = int(stored[0].ts // BUCKET) * BUCKET
    assert xs[0] == first and ys[0] == truth[first], "the first point: the queue then"
    assert m.start_depth == waiting(before), "before the window's first event"
    got = {x: y for x, y in zip(xs, ys, strict=True) if x >= first and x in truth}
    assert got == {x: truth[x] for x in got}
    assert ys[-1] == waiting(replay(events)[0])


def test_a_task_waiting_since_before_the_window_leaves_the_queue_when_cancelled():
    m = MarketHistory()
    stored = [Event(event_id=100, ts=1000.0, kind="task_posted", task_id=100, data={})]
    m.load(stored, {7: "queued"}, waiting=3)   # 7, 8 and 9 queued long ago
    assert m.queue_depth(1001.0)[1][-1] == 3
    m.apply(Event(event_id=101, ts=1001.0, kind="task_cancelled", task_id=7, data={}))
    m.apply(Event(event_id=102, ts=1002.0, kind="task_cancelled", task_id=8, data={}))
    m.apply(Event(event_id=103, ts=1003.0, kind="auction_opened", task_id=9, data={}))
    assert m.queue_depth(1004.0)[1][-1] == 1   # 9 is bidding: still waiting


def test_a_task_approved_at_the_window_start_was_not_waiting():
    def e(i, kind, agent=None):
        return Event(event_id=i, ts=1000.0 + i, kind=kind, task_id=5, agent_id=agent, data={})

    m = MarketHistory()   # held for approval before the window; approved, assigned in it
    m.load([e(1, "approved", "forge-1"), e(2, "task_assigned", "forge-1")], waiting=0)
    assert m.start_depth == 0 and m.queue_depth(1003.0)[1] == [0] * len(m.axis(1003.0))


def test_the_chart_starts_from_the_true_queue_after_a_reload_of_a_long_history(make_swarm,
                                                                                eventually):
    """More stored events than a page reads (tasks posted with no runner: all still
    queued); the first point is the queue when the window begins, the last the queue now,
    and a second page (a reload) after live changes draws them right again."""
    from timmy.widgets import desktop

    swarm = make_swarm()   # no runners: every posted task stays queued
    early = swarm.post_many([f"early task {i}" for i in range(50)])
    swarm.post_many([f"task {i}" for i in range(HISTORY)])
    queued = len(early) + HISTORY
    assert swarm.status()["tasks"] == {"queued": queued}

    def first_and_last(console):
        console.redraw_now()
        _, ys = console.market.queue_depth(time.time())
        return ys[0], ys[-1], list(console.charts.depth.y)[-1]

    def before_window() -> int:   # tasks posted before the page's first stored event
        first = swarm.events(limit=HISTORY)[0]
        assert first.kind == "task_posted"
        return sum(t.task_id < first.task_id for t in swarm.tasks(limit=queued))

    box = desktop(swarm)
    assert first_and_last(box.console) == (before_window(), queued, queued)
    for task in early[:3]:
        swarm.cancel(task.task_id)
    eventually(lambda: first_and_last(box.console)[1] == queued - 3, timeout=10,
               what="the cancelled tasks leaving the queue")
    again = desktop(swarm)   # a reload: the window moved by the three cancels
    starts = before_window()   # all of them still queued when the window begins
    assert first_and_last(again.console) == (starts, queued - 3, queued - 3)
    top, ticks = again.console.charts.depth.scales["y"].max, again.console.charts.depth_axis
    assert list(ticks.tick_values) == list(range(0, 15_001, 5000)) and top == 15_000
    box.close()
    again.close()


@pytest.mark.parametrize(("top", "ticks"), [(0, [0, 1]), (5, [0, 1, 2, 3, 4, 5]),
                                            (7, [0, 2, 4, 6, 8]), (48, [0, 10, 20, 30, 40, 50]),
                                            (10_047, [0, 5000, 10_000, 15_000])])
def test_the_depth_axis_has_whole_ticks_from_zero_past_the_top(top, ticks):
    from timmy.widgets.charts import whole_ticks

    assert whole_ticks(top) == ticks
