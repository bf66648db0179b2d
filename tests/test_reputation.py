"""Reputation (issue 14, point 5): the pure rule; an agent whose results fail verification
loses reliability and then loses ``reputation`` auctions it would win under ``lowest``; it
survives a restart; live and simulated runs agree under ``reputation`` and ``score``; the
dashboards' agent table shows it."""

from __future__ import annotations

import pytest

import timmy
from timmy.market.auction import Bid, clear
from timmy.market.reputation import (
    FAILURE,
    PRIOR,
    SUCCESS,
    VERIFICATION_FAILURE,
    Reputation,
    reliability,
    timeliness,
)
from timmy.sim import demo_descriptions, simulate

#: Results of forge-1 and quill-1 fail verification (the simulated executor's output starts
#: with the runner's id).
NOT_FORGE = r"regex:^(?!forge-1 |quill-1 )"
OUTCOME_KEYS = ("successes", "failures", "verification_failures", "outcomes", "reliability")


# -- the pure rule -------------------------------------------------------------------
def test_reliability_is_the_laplace_estimate_and_timeliness_stays_apart():
    assert reliability(0) == PRIOR == 0.5
    assert reliability(1) == pytest.approx(2 / 3)
    assert reliability(0, 1) == reliability(0, 0, 1) == pytest.approx(1 / 3)
    assert reliability(8, 1, 1) == pytest.approx(9 / 12)
    assert reliability(1000, 0) < 1.0 and reliability(0, 1000) > 0.0
    assert timeliness(0, 0) is None and timeliness(3, 1) == 0.75

    rep = Reputation()
    assert rep["nobody"] == rep.get("nobody", 1.0) == PRIOR and "nobody" not in rep
    for outcome in (SUCCESS, SUCCESS, FAILURE, VERIFICATION_FAILURE):
        rep.record("a", outcome)
    rep.timed("a", late=True)
    rep.timed("a", late=False)
    assert rep["a"] == pytest.approx(3 / 6) and list(rep) == ["a"] and len(rep) == 1
    shown = rep.snapshot(["a", "b"])
    assert shown["a"] == {"successes": 2, "failures": 1, "verification_failures": 1,
                          "on_time": 1, "late": 1, "outcomes": 4,
                          "reliability": pytest.approx(0.5), "timeliness": 0.5}
    assert shown["b"]["reliability"] == PRIOR and shown["b"]["outcomes"] == 0
    # lateness never enters reliability
    rep.timed("a", late=True)
    assert rep["a"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="unknown outcome"):
        rep.record("a", "great")
    # read back from stored counters
    again = Reputation({"a": {"successes": 2, "failures": 1, "verification_failures": 1,
                              "on_time": 1, "late": 2}})
    assert again.snapshot() == rep.snapshot()


def test_the_mechanisms_read_a_reputation_with_the_prior_for_newcomers():
    rep = Reputation()
    rep.record("a", VERIFICATION_FAILURE)            # a: 1/3; b, c: 0.5 (no outcome yet)
    bids = [Bid("a", 40), Bid("b", 55), Bid("c", 70)]
    assert clear(1, bids, "lowest", reputation=rep).winner == "a"
    assert clear(1, bids, "reputation", reputation=rep).winner == "b"   # 40*3=120 > 55*2
    assert clear(1, bids, "reputation").winner == "a"   # no reputation given: all 1.0
    # an empty reputation is not "none given": everyone is at the prior, the lowest wins
    assert clear(1, bids, "reputation", reputation=Reputation()).winner == "a"


# -- live ------------------------------------------------------------------------------
def _quill_lost_while_lowest(bids, since_task: int) -> list[int]:
    """Auctions after ``since_task`` where quill-1 bid strictly lowest and did not win."""
    lost = []
    auctions: dict[int, list[dict]] = {}
    for b in bids:
        auctions.setdefault(b["auction_id"], []).append(b)
    for rows in auctions.values():
        rows.sort(key=lambda b: b["sats"])
        if rows[0]["task_id"] > since_task and rows[0]["agent_id"] == "quill-1" \
                and len(rows) > 1 and rows[1]["sats"] > rows[0]["sats"] and not rows[0]["won"]:
            assert clear(0, [Bid(b["agent_id"], b["sats"]) for b in rows],
                         "lowest").winner == "quill-1"   # it would have won under lowest
            lost.append(rows[0]["task_id"])
    return lost


@pytest.mark.timeout(180)
def test_failing_verification_costs_reliability_and_then_auctions(make_swarm):
    swarm = make_swarm(seed=4, rule="reputation", task_seconds=0)
    swarm.spawn_all()
    first = swarm.wait(swarm.post("forge a parser for the build", verify=NOT_FORGE).task_id, 30)
    failed = [e for e in swarm.events(limit=1000)
              if e.task_id == first.task_id and e.kind == "verification_failed"]
    assert [e.agent_id for e in failed] == ["quill-1"]   # the lowest bid won, and failed
    rep = swarm.reputation()
    assert rep["quill-1"]["verification_failures"] == 1
    assert rep["quill-1"]["reliability"] == pytest.approx(1 / 3)
    assert rep["quill-1"]["reliability"] < PRIOR
    assert rep[first.assigned_agent]["successes"] == 1
    assert rep[first.assigned_agent]["reliability"] == pytest.approx(2 / 3)
    assert set(rep) == {a.agent_id for a in swarm.agents()}
    # the failed result's event says what it did to the agent
    requeued = [e for e in swarm.events(limit=1000)
                if e.task_id == first.task_id and e.kind == "task_requeued"]
    assert requeued[0].data["rated"] == "quill-1"
    assert requeued[0].data["reliability"] == pytest.approx(1 / 3, abs=1e-4)

    for _ in range(4):
        swarm.wait(swarm.post("forge a parser for the build", verify=NOT_FORGE).task_id, 30)
    lost = _quill_lost_while_lowest(swarm.bids(limit=10_000), first.task_id)
    assert lost, "quill-1 bid lowest again but should have lost on its reliability"


@pytest.mark.postgres
@pytest.mark.timeout(180)
def test_reputation_survives_a_restart_on_the_same_database(tmp_path, rows_of, db_url):
    url = db_url
    with timmy.Swarm(url, seed=4, rule="reputation", task_seconds=0) as swarm:
        swarm.spawn_all()
        for _ in range(3):
            swarm.wait(swarm.post("forge a parser for the build", verify=NOT_FORGE).task_id,
                       30)
        before = swarm.reputation()
    assert before["quill-1"]["verification_failures"] >= 1
    stored = dict(rows_of(url, "SELECT agent_id, successes + failures + verification_failures "
                               "FROM reputation"))
    assert stored == {a: r["outcomes"] for a, r in before.items() if r["outcomes"]}

    with timmy.Swarm(url, seed=4, rule="reputation", task_seconds=0) as swarm:
        after = swarm.reputation()   # loaded before any runner is spawned
        assert {a: r for a, r in after.items() if r["outcomes"]} == \
            {a: r for a, r in before.items() if r["outcomes"]}
        swarm.spawn_all()
        task = swarm.wait(swarm.post("forge a parser for the build",
                                     verify=NOT_FORGE).task_id, 30)
        winners = {b["agent_id"] for b in swarm.bids(task.task_id) if b["won"]}
        assert "quill-1" not in winners   # still paying for what it did before the restart
        assert sum(r["outcomes"] for r in swarm.reputation().values()) > \
            sum(r["outcomes"] for r in before.values())
        files = swarm.export(tmp_path / "out")
    assert "reputation" in files and files["reputation"].name == "reputation.parquet"


# -- parity ----------------------------------------------------------------------------
@pytest.mark.timeout(240)
@pytest.mark.parametrize("rule", ["reputation", "score:w_price=0.5,w_quality=0.5"])
def test_live_and_simulated_agree_under_reputation_and_score(tmp_path, rule):
    descriptions = demo_descriptions(30, seed=21)
    with timmy.Swarm(f"sqlite:///{tmp_path / 'live.db'}", seed=3, rule=rule,
                     task_seconds=0) as swarm:
        swarm.spawn_all()
        live = [swarm.wait(swarm.post(d, verify=NOT_FORGE).task_id, 30) for d in descriptions]
        bids = swarm.bids(limit=10_000)
        live_rep = swarm.reputation()
    run = simulate(descriptions, seed=3, rule=rule, task_seconds=0, verify=NOT_FORGE,
                   engine="auto")

    sim = list(run.tasks.itertuples())
    assert [(t.task_id, t.status, t.assigned_agent, t.price_sats, t.attempts) for t in live] \
        == [(t.task_id, t.status, t.assigned_agent, t.price_sats, t.attempts) for t in sim]
    assert sorted((b["task_id"], b["attempt"], b["agent_id"], b["sats"], b["won"])
                  for b in bids) == sorted(
        (b.task_id, b.attempt, b.agent_id, b.sats, b.won) for b in run.bids.itertuples())

    def outcomes(rep):
        return {a: tuple(r[k] for k in OUTCOME_KEYS) for a, r in rep.items()}
    assert outcomes(live_rep) == outcomes(run.reputation)
    # reputation moved: some failed verification, some failed outright, some succeeded
    assert any(r["verification_failures"] for r in live_rep.values())
    assert any(r["failures"] for r in live_rep.values())
    assert len({round(r["reliability"], 6) for r in live_rep.values()}) > 2


# -- the dashboards ----------------------------------------------------------------------
def test_the_agent_table_has_a_reliability_column(make_swarm):
    pytest.importorskip("ipywidgets")
    from timmy.market.models import Event
    from timmy.widgets import desktop
    from timmy.widgets.render import agents_table
    from timmy.widgets.state import SwarmState

    state = SwarmState()
    state.apply(Event(event_id=1, ts=0.0, kind="agent_joined", task_id=None,
                      agent_id="forge-1", data={"persona": "forge"}))
    html = agents_table(state.agents.values())
    assert "<th" in html and "reliability" in html and "–" in html   # nothing known yet
    state.apply(Event(event_id=2, ts=0.0, kind="task_requeued", task_id=1, agent_id=None,
                      data={"rated": "forge-1", "reliability": 1 / 3, "reason": "x"}))
    assert state.agents["forge-1"].reliability == pytest.approx(1 / 3)
    assert "0.33" in agents_table(state.agents.values())

    swarm = make_swarm(seed=4, task_seconds=0)
    swarm.spawn_all()
    swarm.wait(swarm.post("forge a parser for the build", verify=NOT_FORGE).task_id, 30)
    box = desktop(swarm)   # loaded from swarm.reputation()
    console = box.console
    try:
        console.redraw_now()
        shown = console.agents_html.value
        assert "reliability" in shown
        rep = swarm.reputation()
        assert console.state.agents["quill-1"].reliability == rep["quill-1"]["reliability"]
        assert f"{rep['quill-1']['reliability']:.2f}" in shown
    finally:
        box.close()


@pytest.mark.timeout(120)
def test_the_service_serves_the_reputation(tmp_path):
    from test_service import ServiceProcess

    svc = ServiceProcess(tmp_path / "swarm.db")
    try:
        with svc.attach() as swarm:
            task = swarm.wait(swarm.post("forge a parser for the build",
                                         verify=NOT_FORGE).task_id, 30)
            rep = swarm.reputation()
            assert set(rep) == {a.agent_id for a in swarm.agents()}
            assert sum(r["outcomes"] for r in rep.values()) == task.attempts >= 1
            for r in rep.values():
                assert r["reliability"] == reliability(r["successes"], r["failures"],
                                                       r["verification_failures"])
            assert any(r["outcomes"] for r in rep.values())
    finally:
        svc.stop()
