"""Settlement: a ledger row per paid task, written with its completion, at the clearing
price; ``ledger()``/``balances()`` live, over the service and in exports (live and
simulated); the canned ``balances`` query."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import Counter, defaultdict

import pandas as pd
import pyarrow.parquet as pq
import pytest

import timmy
from timmy import analytics
from timmy.sim.simulator import simulate
from timmy.sim.workloads import demo_descriptions


def paid_tasks(swarm):
    return [t for t in swarm.tasks(limit=10_000) if t.status == "completed"]


@pytest.mark.postgres
@pytest.mark.timeout(120)
def test_the_ledger_sums_to_the_completed_tasks_prices(make_swarm):
    swarm = make_swarm(rule="second_price", seed=3)
    swarm.spawn_all()
    swarm.run(demo_descriptions(40, seed=3), timeout=60)
    done = paid_tasks(swarm)
    ledger = swarm.ledger()
    assert len(done) >= 20
    # one row per completed task, with its final attempt, winner and clearing price
    assert sorted((r["task_id"], r["attempt"], r["agent_id"], r["sats"]) for r in ledger) == \
        sorted((t.task_id, t.attempts, t.assigned_agent, t.price_sats) for t in done)
    assert sum(r["sats"] for r in ledger) == sum(t.price_sats for t in done)
    assert not any(r["verified"] for r in ledger)
    # the mechanism's price, not the bid: under second_price the winner bid less
    winning = {(b["task_id"], b["attempt"]): b["sats"] for b in swarm.bids(limit=10_000)
               if b["won"]}
    assert any(r["sats"] > winning[(r["task_id"], r["attempt"])] for r in ledger)
    # balances: per agent, equal to what the agents earned
    balances = swarm.balances()
    per_agent = defaultdict(int)
    for r in ledger:
        per_agent[r["agent_id"]] += r["sats"]
    assert {a: b["sats"] for a, b in balances.items()} == dict(per_agent)
    assert {a: b["tasks"] for a, b in balances.items()} == \
        dict(Counter(r["agent_id"] for r in ledger))
    earned = {a.agent_id: a.earned_sats for a in swarm.agents() if a.earned_sats}
    assert earned == dict(per_agent)


@pytest.mark.postgres
@pytest.mark.timeout(120)
def test_the_ledger_pages_like_the_other_lists(make_swarm):
    swarm = make_swarm(executor="echo")
    swarm.spawn_all(["forge", "quill"])
    swarm.run([f"fix bug {i}" for i in range(7)], timeout=60, sequential=True)
    everything = swarm.ledger()
    assert [r["entry_id"] for r in everything] == sorted(r["entry_id"] for r in everything)
    assert len(everything) == 7
    assert swarm.ledger(limit=3) == everything[-3:]
    assert swarm.ledger(limit=3, after=everything[1]["entry_id"]) == everything[2:5]
    assert swarm.ledger(limit=2, before=everything[2]["entry_id"]) == everything[:2]
    assert list(swarm.iter_ledger(page=2)) == everything
    forge = swarm.ledger("forge-1")
    assert forge and all(r["agent_id"] == "forge-1" for r in forge)


@pytest.mark.timeout(120)
def test_the_ledger_is_exported_and_the_balances_query_agrees(make_swarm, tmp_path):
    swarm = make_swarm(seed=2)
    swarm.spawn_all()
    swarm.run(demo_descriptions(30, seed=2), timeout=60)
    files = swarm.export(tmp_path / "out")
    exported = pq.read_table(files["ledger"]).to_pylist()
    assert exported == swarm.ledger()
    report = analytics.balances(tmp_path / "out")
    assert dict(zip(report.agent_id, report.sats, strict=True)) == \
        {a: b["sats"] for a, b in swarm.balances().items()}
    assert report.share.sum() == pytest.approx(1.0)


def test_a_simulated_run_has_a_ledger_in_memory_and_in_its_export(tmp_path):
    descriptions = demo_descriptions(120, seed=4)
    run = simulate(descriptions, seed=4, engine="python")
    done = run.tasks[run.tasks.status == "completed"]
    assert list(run.ledger.task_id) == list(done.task_id)
    assert list(run.ledger.sats) == list(done.price_sats)
    assert list(run.ledger.entry_id) == list(range(1, len(done) + 1))
    run.export(tmp_path / "sim")
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "sim" / "ledger.parquet"),
                                  run.ledger)
    streamed = simulate(descriptions, seed=4, engine="python", out=tmp_path / "streamed")
    pd.testing.assert_frame_equal(streamed.ledger, run.ledger)
    compiled = simulate(descriptions, seed=4, engine="compiled")   # from its tasks table
    pd.testing.assert_frame_equal(compiled.ledger, run.ledger, check_exact=False, rtol=1e-12)
    direct = analytics.balances(run)
    assert direct.sats.sum() == done.price_sats.sum()


@pytest.mark.timeout(120)
def test_live_and_simulated_ledgers_agree(tmp_path):
    descriptions = demo_descriptions(30, seed=9)
    with timmy.Swarm(f"sqlite:///{tmp_path / 'live.db'}", seed=9, task_seconds=0) as swarm:
        swarm.spawn_all()
        swarm.run(descriptions, timeout=60, sequential=True)
        live = [(r["task_id"], r["attempt"], r["agent_id"], r["sats"], r["verified"])
                for r in swarm.ledger()]
    run = simulate(descriptions, seed=9, task_seconds=0)
    assert live == [(r.task_id, r.attempt, r.agent_id, r.sats, r.verified)
                    for r in run.ledger.itertuples()]


def test_an_export_without_a_ledger_still_analyses(tmp_path):
    run = simulate(demo_descriptions(20, seed=1), seed=1)
    run.export(tmp_path / "old")
    (tmp_path / "old" / "ledger.parquet").unlink()   # as written before the ledger existed
    report = analytics.balances(tmp_path / "old")
    assert report.empty and "sats" in report.columns


@pytest.mark.timeout(120)
def test_the_service_posts_with_verify_and_serves_the_ledger(tmp_path):
    from test_service import ServiceProcess

    svc = ServiceProcess(tmp_path / "swarm.db")
    try:
        with svc.attach() as swarm:
            good = swarm.wait(swarm.post("fix the bug", verify="nonempty").task_id, 30)
            many = swarm.post_many(["fix a bug", "fix two bugs"], verify="regex:bug")
            for t in many:
                swarm.wait(t.task_id, 30)
            ledger = swarm.ledger()
            assert [r["task_id"] for r in ledger] == [good.task_id] + [t.task_id for t in many]
            assert all(r["verified"] for r in ledger)
            assert list(swarm.iter_ledger(page=1)) == ledger
            assert sum(b["sats"] for b in swarm.balances().values()) == \
                sum(r["sats"] for r in ledger)
            with pytest.raises(timmy.ConfigError, match="unknown verifier"):
                swarm.post("fix it", verify="nosuch")
        env = {**os.environ, "COLUMNS": "200"}
        post = subprocess.run(
            [sys.executable, "-m", "timmy", "post", "fix the bug", "--wait", "--verify",
             "regex:^zzz", "--url", svc.url, "--token", svc.token],
            capture_output=True, text=True, timeout=60, env=env)
        assert post.returncode == 0, post.stderr
        m = re.search(r"task (\d+) failed", post.stdout)
        assert m
        with svc.attach() as swarm:   # its results failed verification (or ran, failing)
            kinds = {e.kind for e in swarm.events(limit=10_000) if e.task_id == int(m[1])}
            assert "verification_failed" in kinds
            assert int(m[1]) not in {r["task_id"] for r in swarm.ledger()}
    finally:
        svc.stop()
