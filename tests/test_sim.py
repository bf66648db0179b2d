"""The simulator runs the live engine's rules: same winners, same prices, same bids."""

from __future__ import annotations

import pandas as pd
import pyarrow.parquet as pq
import pytest

import timmy
from timmy.errors import ConfigError
from timmy.market.bidding import bid_rng, quote
from timmy.sim.simulator import simulate
from timmy.sim.workloads import Arrival, bursts, demo_descriptions, keyword_mix, poisson_arrivals


def live_run(tmp_path, descriptions, **kwargs):
    """A fresh live swarm, every persona spawned, posting one task at a time."""
    with timmy.Swarm(f"sqlite:///{tmp_path / 'live.db'}", **kwargs) as swarm:
        swarm.spawn_all()
        tasks = [swarm.wait(swarm.post(d).task_id, timeout=20) for d in descriptions]
        return tasks, swarm.bids()


@pytest.mark.parametrize("engine", ["python", "compiled"])
@pytest.mark.parametrize("rule", ["specialist_first", "lowest", "second_price"])
@pytest.mark.timeout(60)
def test_simulation_and_live_swarm_pick_the_same_winner_at_the_same_price(tmp_path, rule,
                                                                          engine):
    descriptions = demo_descriptions(60, seed=11)
    live, live_bids = live_run(tmp_path, descriptions, seed=5, rule=rule, task_seconds=0)
    run = simulate(descriptions, seed=5, rule=rule, task_seconds=0, engine=engine)

    sim = list(run.tasks.itertuples())
    assert [(t.task_id, t.status, t.assigned_agent, t.price_sats, t.attempts) for t in live] \
        == [(t.task_id, t.status, t.assigned_agent, t.price_sats, t.attempts) for t in sim]
    # the same reason texts (one lifecycle words them), and failures took part
    assert [t.reason for t in live] == [None if r != r else r for r in run.tasks.reason]
    assert any(t.reason for t in live) or any(t.attempts > 1 for t in live)
    assert sorted((b["task_id"], b["attempt"], b["agent_id"], b["sats"], b["on_spec"], b["won"])
                  for b in live_bids) == sorted(
        zip(run.bids.task_id, run.bids.attempt, run.bids.agent_id, run.bids.sats,
            run.bids.on_spec, run.bids.won, strict=True))
    # learning took part: some bids differ from what an untrained persona draws
    texts = dict(zip(run.tasks.task_id, run.tasks.description, strict=True))
    untrained = [quote(timmy.PERSONAS[b.agent_id.split("-")[0]], texts[b.task_id],
                       bid_rng(5, b.agent_id, b.task_id, b.attempt)).sats
                 for b in run.bids.itertuples()]
    assert sum(u != s for u, s in zip(untrained, run.bids.sats, strict=True)) > 0


def test_simulated_tables_have_the_columns_of_a_live_export(tmp_path):
    with timmy.Swarm(f"sqlite:///{tmp_path / 'x.db'}", seed=1, task_seconds=0) as swarm:
        swarm.spawn("forge")
        swarm.run(["fix the bug"], timeout=20)
        live = swarm.export(tmp_path / "live")
    written = simulate(["fix the bug", "write the readme"], seed=1).export(tmp_path / "sim")
    for name in ("tasks", "bids", "agents", "events"):
        assert pq.read_schema(written[name]) == pq.read_schema(live[name]), name


def test_every_arriving_task_ends_and_no_runner_holds_more_than_its_queue():
    arrivals = poisson_arrivals(400, rate=200.0, seed=3)
    run = simulate(arrivals, seed=3, task_seconds=0.05, runner_queue=4)
    tasks = run.tasks
    assert len(tasks) == 400
    assert set(tasks.status) <= {"completed", "failed"}
    assert (tasks.assigned_at >= tasks.created_at).all()
    # at any assignment, the winner held fewer than runner_queue unfinished tasks
    done = tasks.dropna(subset=["assigned_at"])
    for agent, group in done.groupby("assigned_agent"):
        for t in group.itertuples():
            holding = ((group.assigned_at <= t.assigned_at) & (group.completed_at > t.assigned_at))
            assert holding.sum() <= 4, agent


def test_more_runners_finish_a_burst_sooner():
    work = bursts(300, seed=2, size=300)
    one = simulate(work, seed=2, task_seconds=0.05, runners=1).tasks.completed_at.max()
    three = simulate(work, seed=2, task_seconds=0.05, runners=3).tasks.completed_at.max()
    assert three < 0.8 * one


def test_a_specialist_keeps_a_burst_of_its_work_up_to_its_queue_and_the_rest_overflows():
    work = bursts(300, seed=4, size=300, descriptions=keyword_mix(300, 4, {"forge": 1,
                                                                           "generic": 1}))

    def forge_share(runner_queue):
        t = simulate(work, seed=4, task_seconds=0.05, runner_queue=runner_queue).tasks
        code = t[t.description.str.contains("bug|refactor|implement|unit test|merge")]
        return (code.assigned_agent == "forge-1").mean(), len(code)

    deep, n_code = forge_share(1000)
    shallow, _ = forge_share(8)
    assert n_code > 100
    assert deep > 0.95          # room for the whole burst: the specialist takes it all
    assert shallow < 0.5        # 8 places: the rest overflows to the next-best bidders


def test_a_workload_of_mixed_types_is_refused_with_a_hint():
    with pytest.raises(ConfigError) as info:
        simulate(["fix the bug", Arrival(0.0, "x"), 3])
    assert info.value.hint


def test_runners_naming_an_unknown_persona_is_refused():
    with pytest.raises(ConfigError) as info:
        simulate(["fix the bug"], runners={"nobody": 2})
    assert "nobody" in info.value.message and info.value.hint


@pytest.mark.parametrize("rule", ["specialist_first", "lowest", "second_price"])
@pytest.mark.parametrize("seed", [0, 7, 2**40 + 3])
def test_the_compiled_engine_writes_exactly_what_the_python_reference_writes(rule, seed):
    # failures (max_attempts=2), learning and durations all take part
    work = demo_descriptions(1500, seed=seed % 97) + keyword_mix(500, 1, {"generic": 1})
    kwargs = dict(seed=seed, rule=rule, task_seconds=0.01, max_attempts=2)
    reference = simulate(work, engine="python", **kwargs)
    compiled = simulate(work, engine="compiled", **kwargs)
    assert (reference.tasks.status == "failed").any()
    for name in ("tasks", "bids", "agents", "events"):
        a, b = reference.table(name).to_pandas(), compiled.table(name).to_pandas()
        pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-12, obj=name)


def test_streaming_to_parquet_in_chunks_gives_the_same_tables_as_one_go(tmp_path, monkeypatch):
    work = demo_descriptions(3000, seed=2)
    in_memory = simulate(work, seed=2, engine="python")
    monkeypatch.setattr("timmy.sim.compiled.CHUNK", 700)   # 5 chunks, learning carried across
    streamed = simulate(work, seed=2, out=tmp_path / "run")
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [
        "agents.parquet", "bids.parquet", "events.parquet", "ledger.parquet", "tasks.parquet"]
    for name in ("tasks", "bids", "agents", "events", "ledger"):
        a, b = in_memory.table(name).to_pandas(), streamed.table(name).to_pandas()
        pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-12, obj=name)


@pytest.mark.timeout(60)
def test_run_sequential_reproduces_the_simulation(tmp_path):
    descriptions = demo_descriptions(40, seed=8)
    with timmy.Swarm(f"sqlite:///{tmp_path / 'seq.db'}", seed=8, task_seconds=0) as swarm:
        swarm.spawn_all()
        live = swarm.run(descriptions, timeout=60, sequential=True)
    sim = simulate(descriptions, seed=8, task_seconds=0).tasks
    assert [(t.assigned_agent, t.price_sats) for t in live] == list(
        zip(sim.assigned_agent, sim.price_sats, strict=True))


@pytest.mark.timeout(60)
def test_a_sequential_run_over_its_timeout_says_how_many_are_left(tmp_path):
    from timmy.engine.coordinator import WaitTimeout

    with timmy.Swarm(f"sqlite:///{tmp_path / 'slow.db'}", seed=1, task_seconds=0.2) as swarm:
        swarm.spawn("forge")
        with pytest.raises(WaitTimeout) as info:
            swarm.run(["fix the bug"] * 20, timeout=0.5, sequential=True)
    assert "of 20 tasks unfinished" in info.value.message and info.value.hint


def test_crashing_runners_lose_no_task_and_come_back():
    run = simulate(poisson_arrivals(2000, rate=300.0, seed=6), seed=6, crash_rate=0.05,
                   max_attempts=2, runner_queue=8)
    tasks, events = run.tasks, run.events
    assert len(tasks) == 2000 and set(tasks.status) == {"completed", "failed"}
    crashes = (events.kind == "agent_crashed").sum()
    assert crashes > 10
    assert run.agents.restarts.sum() == crashes == (events.kind == "agent_restarted").sum()
    assert tasks.attempts.max() <= 2
    died = tasks[tasks.reason.str.contains("died during attempt 2", na=False)]
    assert len(died) > 0 and (died.status == "failed").all()
    # a task waiting behind a crashed runner was auctioned again without losing an attempt
    assert (events.kind == "task_requeued").sum() > crashes


def test_the_compiled_engine_refuses_crashes_and_auto_falls_back_to_python():
    work = demo_descriptions(50, seed=1)
    with pytest.raises(ConfigError):
        simulate(work, crash_rate=0.1, engine="compiled")
    run = simulate(work, seed=1, crash_rate=0.2)
    assert len(run.tasks) == 50 and run.agents.restarts.sum() > 0
