"""Recent auctions, ranked bid terms, the phone's cards and chart (timmy.widgets.recent,
terms, mobile_cards): the pure logic on hand-made events, then on a real swarm whose
consoles are made again (what a page reload does) and must read the same."""

from __future__ import annotations

import pytest

from timmy.market.models import Event
from timmy.widgets import mobile_cards
from timmy.widgets.recent import RecentAuctions, matches, record_cells, seconds
from timmy.widgets.state import SwarmState
from timmy.widgets.terms import terms


def ev(event_id, kind, task_id=None, agent_id=None, ts=None, **data):
    return Event(event_id=event_id, ts=float(ts if ts is not None else event_id), kind=kind,
                 task_id=task_id, agent_id=agent_id, data=data)


HISTORY = [
    ev(1, "task_posted", 7, ts=10.0, description="fix the parser"),
    ev(2, "auction_opened", 7, ts=10.1, attempt=1, eligible=2),
    ev(3, "bid", 7, "forge-1", sats=30, on_spec=True, attempt=1),
    ev(4, "bid", 7, "quill-1", sats=20, on_spec=False, attempt=1),
    ev(5, "auction_closed", 7, "forge-1", ts=10.2, price_sats=30, rule="specialist_first",
       why="lowest on-spec bid under specialist_first", bids=2, attempt=1),
    ev(6, "task_assigned", 7, "forge-1", ts=10.25, price_sats=30, attempt=1),
    ev(7, "task_posted", 8, ts=11.0, description="write docs"),
    ev(8, "auction_opened", 8, ts=11.1, attempt=1, eligible=2),
    ev(9, "auction_closed", 8, None, ts=11.2, price_sats=None, rule="specialist_first",
       why="no bids", bids=0, attempt=1),
]


def test_recent_auctions_fold_the_history_newest_first_with_post_to_assign():
    recent = RecentAuctions()
    recent.load(HISTORY)
    newest = recent.newest()
    assert [r.task_id for r in newest] == [8, 7]
    seven = newest[1]
    assert (seven.auction_id, seven.bidders, seven.winner, seven.price_sats) == (2, 2,
                                                                                 "forge-1", 30)
    assert seven.to_assign == pytest.approx(0.25)
    assert newest[0].winner is None and newest[0].to_assign is None
    assert recent.why == {7: "lowest on-spec bid under specialist_first", 8: "no bids"}
    cells = record_cells(seven)
    assert cells[2] == "forge-1" and cells[3] == "30 sats" and cells[5] == "250 ms"
    assert seconds(2.5) == "2.5 s"


def test_an_event_seen_twice_counts_once():
    """The stored history and the live stream overlap at page load: no auction twice."""
    recent = RecentAuctions()
    recent.load(HISTORY)
    for event in HISTORY[4:]:
        assert recent.apply(event) is False
    assert len(recent.records) == 2


def test_swarm_state_starts_its_feed_and_why_from_the_history():
    from timmy.market.models import Task

    state = SwarmState(feed_size=5)
    state.load([Task(task_id=7, description="fix the parser", status="completed",
                     assigned_agent="forge-1", price_sats=30)], [])
    state.load_history(HISTORY)
    assert state.tasks[7].why == "lowest on-spec bid under specialist_first"
    assert [e.event_id for e in state.feed] == [5, 6, 7, 8, 9]
    state.apply(HISTORY[-1])                      # already in the feed: not again
    state.apply(ev(10, "task_posted", 9, description="new"))
    assert [e.event_id for e in state.feed] == [6, 7, 8, 9, 10]
    assert state.events_seen == 2, "the history is not counted as events seen"


def test_search_matches_ids_and_text():
    assert matches(12, "fix the parser", "12") and matches(12, "x", "#12")
    assert matches(123, "x", "12") and not matches(21, "x", "12")
    assert matches(3, "Fix the Parser", "parser") and not matches(3, "docs", "parser")
    assert matches(3, "anything", "  ")


BIDS = [{"agent_id": "a-1", "sats": 10, "on_spec": False},
        {"agent_id": "b-1", "sats": 20, "on_spec": True},
        {"agent_id": "c-1", "sats": 15, "on_spec": True}]


def test_terms_rank_bids_as_each_rule_does():
    def order(rule, rel=None):
        return [b["agent_id"] for b in terms(BIDS, rule, rel)]

    assert order("specialist_first") == ["c-1", "b-1", "a-1"]
    assert order("lowest") == ["a-1", "c-1", "b-1"]
    assert order("reputation", {"a-1": 0.2, "b-1": 1.0, "c-1": 1.0}) == ["c-1", "b-1", "a-1"]
    ranked = terms(BIDS, "reputation", {"a-1": 0.2, "b-1": 1.0, "c-1": 1.0})
    assert ranked[2]["key"] == pytest.approx(50.0) and ranked[2]["reliability"] == 0.2
    assert "reliability" not in terms(BIDS, "specialist_first", None)[0]
    scored = terms(BIDS, "score", {"a-1": 1.0, "b-1": 1.0, "c-1": 1.0})
    assert [b["rank"] for b in scored] == [1, 2, 3]
    assert scored[0]["key"] >= scored[1]["key"] >= scored[2]["key"]


def test_the_terms_agree_with_the_engine_winner():
    """What the inspector ranks first is who `clear` picks under every built-in rule."""
    from timmy.market.auction import Bid, clear

    rel = {"a-1": 0.9, "b-1": 0.5, "c-1": 1.0}
    bids = [Bid(b["agent_id"], b["sats"], b["on_spec"]) for b in BIDS]
    for rule in ("specialist_first", "lowest", "second_price", "reputation", "score",
                 "score:w_price=0.9,w_quality=0.1", "first_price"):
        assert terms(BIDS, rule, rel)[0]["agent_id"] == \
            clear(1, bids, rule, reputation=rel).winner, rule


def test_phone_cards_and_price_chart():
    state = SwarmState()
    state.load_history(HISTORY)
    labels = dict(mobile_cards.cards(state))
    assert {"runners live", "queued", "done", "sats paid"} <= set(labels)
    assert mobile_cards.prices(state) == [30, None]
    svg = mobile_cards.price_chart(mobile_cards.prices(state))
    assert svg.count("<rect") == 2 and ">30<" in svg and "sats" in svg
    assert "no auctions yet" in mobile_cards.price_chart([])


def test_a_reload_reads_the_same_why_under_the_reputation_rule(make_swarm, eventually):
    """A real swarm under ``reputation``: the auction_closed event records each bidder's
    reliability; a desktop made after the fact (a reload) shows the same recent auction,
    task why and inspector story as the one that watched it happen."""
    pytest.importorskip("ipywidgets")
    from timmy.widgets import desktop

    swarm = make_swarm(rule="reputation")
    swarm.spawn_all()
    live = desktop(swarm).console
    task = swarm.post("fix the parser bug in the cli")
    assert swarm.wait(task.task_id, timeout=30).status == "completed"
    closed = [e for e in swarm.events(limit=1000)
              if e.kind == "auction_closed" and e.task_id == task.task_id]
    assert closed and set(closed[-1].data["reliability"]) >= {closed[-1].agent_id}

    def shown(console):
        console.redraw_now()
        console._open_auction(task.task_id)
        return (console.recent.cells[0].value, console.state.tasks[task.task_id].why,
                console.inspector.output.value)

    eventually(lambda: live.state.recent.newest(1) and
               live.state.recent.newest(1)[0].task_id == task.task_id
               and live.state.tasks[task.task_id].status == "completed", timeout=10)
    before = shown(live)
    assert "reliability (recorded)" in before[2] and "price/reliability" in before[2]
    again = desktop(swarm).console
    assert shown(again) == before
    live.detach()
    again.detach()
