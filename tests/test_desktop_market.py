"""The desktop's market at a glance (timmy.widgets.market, cards, charts, teach) on a real local
swarm and on the same swarm behind ``timmy serve``: stat cards, bqplot charts started from the
stored events (a second console draws the same picture), the teaching panel, empty states.
"""

from __future__ import annotations

import time

import pytest

pytest.importorskip("ipywidgets")
pytest.importorskip("bqplot")


from timmy.market.models import Event
from timmy.widgets import desktop
from timmy.widgets.market import MarketHistory, percentile
from timmy.widgets.teach import EMPTY_CHARTS, EMPTY_TASKS, TIPS


def ev(i, kind, task=None, agent=None, ts=None, **data):
    return Event(event_id=i, ts=1000.0 + i if ts is None else ts, kind=kind, task_id=task,
                 agent_id=agent, data=data)


def stream():
    return [ev(1, "agent_joined", agent="forge-1", persona="forge"),
            ev(2, "task_posted", 1, description="fix"),
            ev(3, "auction_opened", 1),
            ev(4, "bid", 1, "forge-1", sats=40, on_spec=True),
            ev(5, "bid", 1, "quill-1", sats=30, on_spec=False),
            ev(6, "auction_closed", 1, "forge-1", price_sats=40, why="lowest on-spec"),
            ev(7, "task_assigned", 1, "forge-1", price_sats=40),
            ev(8, "task_completed", 1, "forge-1", price_sats=40),
            ev(9, "task_posted", 2, description="docs"),
            ev(10, "auction_opened", 2),
            ev(11, "bid", 2, "quill-1", sats=25, on_spec=False),
            ev(12, "auction_closed", 2, "quill-1", price_sats=25, why="lowest"),
            ev(13, "task_assigned", 2, "quill-1", price_sats=25),
            ev(14, "task_completed", 2, "quill-1", price_sats=25),
            ev(15, "task_posted", 3, description="waits")]


def test_history_folds_prices_earnings_latency_and_depth():
    m = MarketHistory()
    m.load(stream())
    assert [(p.persona, p.sats, p.on_spec) for p in m.prices] == \
        [("forge", 40, True), ("quill", 25, False)]
    assert m.by_persona() == [("forge", 1, 40, 0.5), ("quill", 1, 25, 0.5)]
    assert m.paid_sats == 65 and sorted(m.latencies) == [5.0, 6.0]
    assert m.latency() == (5.0, 6.0)
    assert m.waiting == 1   # task 3 queued
    xs, depth = m.queue_depth(1015.0)
    assert depth[-1] == 1 and len(xs) == len(depth)
    xs, rate = m.throughput(1015.0)
    assert sum(rate) * m.bucket == 2


def test_stored_and_live_overlap_counts_each_event_once_in_any_split():
    events = stream()
    whole = MarketHistory()
    whole.load(events)
    for split in range(len(events) + 1):
        m = MarketHistory()
        for e in events[split - 3 if split >= 3 else 0:]:   # live, overlapping the stored
            m.apply(e)
        m.load(events[:split])
        assert m.summary() == whole.summary(), split
        assert m.queue_depth(1020.0) == whole.queue_depth(1020.0)


def test_percentile_by_nearest_rank():
    assert percentile([], 0.5) is None
    assert percentile([3, 1, 2], 0.5) == 2
    assert percentile(range(1, 101), 0.95) == 95


def test_cards_charts_and_teaching_on_a_real_swarm(swarm):
    box = desktop(swarm)
    console = box.console
    assert "How this works" in console.how.value and "sats" in console.how.value
    assert EMPTY_TASKS in console.tasks_html.value
    assert EMPTY_CHARTS in console.charts.empty.value
    assert f'title="{TIPS["price"]}"' in console.tasks_html.value
    swarm.run(["fix the bug in the api client", "write the docs for the cli"], timeout=30)
    deadline = time.monotonic() + 10
    while sum(console.market.completions.values()) < 2:
        assert time.monotonic() < deadline, "the live events never reached the charts"
        time.sleep(0.05)
    console.redraw_now()
    cards = console.cards_html.value
    assert "runners live" in cards and ">9<" in cards
    assert "completions / s" in cards and "post → done p50" in cards
    assert console.charts.empty.value == ""
    cleared = [e for e in swarm.events(limit=10_000)
               if e.kind == "auction_closed" and e.agent_id is not None]
    assert len(console.charts.on_spec.x) + len(console.charts.off_spec.x) == len(cleared)
    assert sum(console.charts.earned.y) == sum(t.price_sats for t in swarm.tasks())
    figures = (console.charts.fig_flow, console.charts.fig_prices, console.charts.fig_personas)
    for fig, box in zip(figures, console.charts.chart_boxes, strict=True):
        assert all(axis.label for axis in fig.axes)
        legend = box.children[1].value   # under the plot, not over it (bqplot's own is off)
        assert all(mark.labels and mark.labels[0] in legend and not mark.display_legend
                   for mark in fig.marks)

    again = desktop(swarm).console   # a reload: the stored events, the same picture
    assert again.market.summary() == console.market.summary()
    assert list(again.charts.earned.y) == list(console.charts.earned.y)
    assert list(again.charts.on_spec.y) == list(console.charts.on_spec.y)
    assert again.cards_html.value.count("timmy-card ") == cards.count("timmy-card ")
    box.close()
    again.box.close()


def test_header_and_cards_count_tasks_awaiting_approval(make_swarm):
    swarm = make_swarm()
    swarm.spawn_all()
    held = swarm.post("fix the held bug", max_price=0)
    deadline = time.monotonic() + 10
    while swarm.task(held.task_id).status != "awaiting_approval":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    console = desktop(swarm).console
    console.redraw_now()
    assert "awaiting_approval 1" in console.header.value
    assert "awaiting_approval 1" in console.cards_html.value
    console.box.close()
