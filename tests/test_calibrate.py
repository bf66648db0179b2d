"""Calibrating a digital twin from recorded tables (timmy.sim.calibration) and simulating
with it (``simulate(model=)``, ``SimRun.summary``, ``timmy calibrate``/``simulate --model``)."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from dataclasses import replace

import pytest

import timmy.sim as sim
from timmy.engine.executors import OFF_SPEC_SUCCESS, ON_SPEC_SUCCESS
from timmy.errors import ConfigError
from timmy.sim.workloads import demo_descriptions, poisson_arrivals
from timmy.storage.address import safe_url

TASK_SECONDS = 0.05
# The simulated executor's durations: exponential, mean TASK_SECONDS, capped at 5x
TRUE_MEAN = TASK_SECONDS * (1 - math.exp(-5))


@pytest.fixture(scope="module")
def recorded():
    """A simulated run of 3000 Poisson arrivals with known parameters, and its model."""
    run = sim.simulate(poisson_arrivals(3000, 40.0, 11), seed=11, runners=2,
                       task_seconds=TASK_SECONDS, crash_rate=0.05, restart_seconds=0.3)
    return run, sim.calibrate(run)


def _pooled(model, attr: str, runs: str) -> float:
    n = sum(getattr(p, runs) for p in model.personas.values())
    return sum(getattr(p, attr) * getattr(p, runs) for p in model.personas.values()
               if getattr(p, attr) is not None) / n


def test_calibration_recovers_the_known_parameters(recorded):
    _, model = recorded
    assert set(model.personas) == {"echo", "mace", "helm", "seer", "forge", "quill", "pixel",
                                   "lyra", "reel"}
    assert model.tasks == 3000 and model.rule == "specialist_first"
    runs = sum(p.tasks for p in model.personas.values())
    mean = sum(p.duration.mean * p.tasks for p in model.personas.values()) / runs
    # 3000 tasks, about 3300 runs: the mean of an exponential within 5 %
    assert mean == pytest.approx(TRUE_MEAN, rel=0.05)
    for p in model.personas.values():   # about 200-500 runs each: within 20 %
        assert p.duration.mean == pytest.approx(TRUE_MEAN, rel=0.2), p.name
        assert p.runners == 2
    assert _pooled(model, "success_on_spec", "on_spec_runs") == \
        pytest.approx(ON_SPEC_SUCCESS, abs=0.02)
    assert _pooled(model, "success_off_spec", "off_spec_runs") == \
        pytest.approx(OFF_SPEC_SUCCESS, abs=0.06)
    crashes = sum(p.crashes for p in model.personas.values())
    assert crashes / (runs + crashes) == pytest.approx(0.05, abs=0.015)
    assert all(p.restart_seconds == pytest.approx(0.3) for p in model.personas.values()
               if p.crashes)
    assert model.arrivals.rate == pytest.approx(40.0, rel=0.06)
    assert model.arrivals.burstiness == pytest.approx(1.0, abs=0.08)
    assert model.arrivals.n == 3000 and sum(model.arrivals.mix.values()) == pytest.approx(1)
    # the simulator assigns at the post: no coordinator overhead to find
    assert model.overhead.base == pytest.approx(0, abs=1e-9)
    assert model.overhead.per_queued == pytest.approx(0, abs=1e-9)


def test_the_exponential_family_is_found_for_exponential_durations(recorded):
    _, model = recorded
    quill = model.personas["quill"].duration   # the most runs (it takes the generic tasks)
    assert quill.stats["expon"]["p"] > 0.01
    assert quill.stats["lognorm"]["ks"] > quill.stats["expon"]["ks"]


def test_too_few_tasks_are_refused_saying_how_many_are_needed():
    run = sim.simulate(demo_descriptions(20, 1), seed=1, engine="python")
    with pytest.raises(sim.CalibrationError) as info:
        sim.calibrate(run)
    assert "needs at least 50" in info.value.message
    assert f"has {int((run.tasks['status'] == 'completed').sum())} completed" \
        in info.value.message
    assert "min_tasks" in info.value.hint
    assert sim.calibrate(run, min_tasks=5).tasks == 20


def test_simulating_with_a_model_repeats_for_a_seed(recorded):
    _, model = recorded
    work = poisson_arrivals(400, 30.0, 5)
    a = sim.simulate(work, seed=5, model=model)
    b = sim.simulate(work, seed=5, model=model)
    c = sim.simulate(work, seed=6, model=model)
    assert a.tasks.equals(b.tasks) and a.bids.equals(b.bids) and a.events.equals(b.events)
    assert not a.tasks["completed_at"].equals(c.tasks["completed_at"])
    # the durations are the model's, not task_seconds'
    d = sim.simulate(work, seed=5, model=model, task_seconds=3.0)
    assert a.tasks.equals(d.tasks)


def test_doubling_the_durations_doubles_p50_and_halves_throughput(recorded):
    _, crashing = recorded
    # no crashes: a restart takes as long either way, which moves work between runners
    model = sim.Model(**{**vars(crashing), "personas": {
        n: replace(p, crash_rate=0.0) for n, p in crashing.personas.items()},
        "overhead": replace(crashing.overhead, dispatch=0.0)})   # messaging does not double
    work = demo_descriptions(400, 8)   # one at a time: no queueing to blur the scaling
    one = sim.simulate(work, seed=8, model=model).summary()
    two = sim.simulate(work, seed=8, model=model.scaled(2.0)).summary()
    assert two["p50"] == pytest.approx(2 * one["p50"], rel=0.01)
    assert two["p95"] == pytest.approx(2 * one["p95"], rel=0.01)
    assert two["throughput"] == pytest.approx(one["throughput"] / 2, rel=0.02)
    assert two["cost_per_task"] == pytest.approx(one["cost_per_task"])


def test_a_model_run_draws_its_arrivals_and_takes_any_runner_mix(recorded):
    _, model = recorded
    run = sim.simulate(600, seed=4, model=model, runners={"quill": 3, "forge": 1},
                       rule="second_price")
    assert len(run.tasks) == 600
    assert sorted(run.agents["agent_id"]) == ["forge-1", "quill-1", "quill-2", "quill-3"]
    assert set(run.bids["rule"]) == {"second_price"}
    created = run.tasks["created_at"]
    assert (len(created) - 1) / (created.max() - created.min()) == \
        pytest.approx(model.arrivals.rate, rel=0.15)
    # the recorded mix of runners by default
    default = sim.simulate(50, seed=4, model=model)
    assert len(default.agents) == 18


def test_a_model_runs_on_the_python_engine_only():
    with pytest.raises(ConfigError, match="compiled engine does not simulate with a model"):
        sim.simulate(demo_descriptions(5, 1), engine="compiled",
                     model=_small_model())
    with pytest.raises(ConfigError, match="needs a model"):
        sim.simulate(100)


def test_the_coordinators_overhead_delays_assignment(recorded):
    _, model = recorded
    slow = sim.Model.from_dict({**model.to_dict(),
                                "overhead": {"base": 0.2, "per_queued": 0.0, "n": 1,
                                             "residuals": []}})
    run = sim.simulate(demo_descriptions(30, 2), seed=2, model=slow)
    events = run.events
    first = events[events["kind"] == "task_assigned"].groupby("task_id")["ts"].min()
    created = run.tasks.set_index("task_id")["created_at"]
    assert list((first - created[first.index]).round(9)) == [0.2] * len(first)
    assert run.summary()["p50"] >= 0.2
    # calibrated back from that run: the overhead found again
    assert sim.calibrate(run, min_tasks=10).overhead.base == pytest.approx(0.2)


def test_the_overhead_grows_with_the_queue_up_to_what_was_seen(recorded):
    _, model = recorded
    busy = sim.Model.from_dict({**model.to_dict(),
                                "overhead": {"base": 0.05, "per_queued": 0.1, "n": 1,
                                             "residuals": [], "max_queued": 2}})
    burst = [sim.Arrival(0.0, d) for d in demo_descriptions(6, 3)]
    run = sim.simulate(burst, seed=3, model=busy)
    events = run.events
    first = events[events["kind"] == "task_assigned"].groupby("task_id")["ts"].min()
    # posted together: 0, 1, 2, 3... queued ahead, the line capped at 2 queued
    assert list(first.sort_index().round(9)) == [0.05, 0.15, 0.25, 0.25, 0.25, 0.25]


def test_the_dispatch_to_an_idle_runner_is_found_again(recorded):
    _, model = recorded
    assert model.overhead.dispatch == pytest.approx(0.0, abs=0.006)   # none simulated
    slow = sim.Model.from_dict({**model.to_dict(), "overhead": {
        **model.to_dict()["overhead"], "dispatch": 0.02}})
    run = sim.simulate(poisson_arrivals(3000, 40.0, 12), seed=12, model=slow)
    again = sim.calibrate(run)
    assert again.overhead.dispatch == pytest.approx(0.02, abs=0.006)
    runs = sum(p.tasks for p in again.personas.values())
    mean = sum(p.duration.mean * p.tasks for p in again.personas.values()) / runs
    assert mean == pytest.approx(TRUE_MEAN, rel=0.08)   # the dispatch taken out again


def test_summary_gives_the_figures_of_a_run(recorded):
    run, _ = recorded
    s = run.summary()
    done = run.tasks[run.tasks["status"] == "completed"]
    assert s["tasks"] == 3000 and s["completed"] == len(done)
    assert s["p50"] <= s["p95"] <= s["p99"]
    assert s["throughput"] == pytest.approx(40.0, rel=0.1)
    assert s["cost_per_task"] == pytest.approx(run.ledger["sats"].sum() / len(done))
    assert set(s["utilisation"]) == set(run.agents["agent_id"])
    assert all(0 <= u <= 1 for u in s["utilisation"].values())
    assert 0 < len(s["queue"]) <= 200
    assert s["queue"][-1][1] == 0   # everything finished


@pytest.mark.postgres
def test_calibrate_from_the_database_of_a_live_run(make_swarm, db_url, tmp_path):
    swarm = make_swarm(task_seconds=0.01)
    swarm.spawn_all(["quill", "forge"])
    descs = [d for d in demo_descriptions(200, 3)][:60]
    swarm.run(descs, timeout=120)
    swarm.export(tmp_path / "export")
    model = sim.calibrate(db_url, min_tasks=20)
    assert set(model.personas) == {"quill", "forge"}
    for p in model.personas.values():
        assert p.runners == 1 and p.tasks > 0
        assert 0.001 < p.duration.mean < 1.0   # live time: the executor's plus messaging
    assert model.overhead.n >= 55 and model.overhead.base > 0   # live auctions take time
    assert model.arrivals.n == 60
    assert model.source == safe_url(db_url)   # its password masked, if any
    assert sim.calibrate(tmp_path / "export", min_tasks=20).personas.keys() == \
        model.personas.keys()
    live = sim.summarize(db_url)
    assert live["tasks"] == 60 and live["completed"] == sum(t.status == "completed"
                                                            for t in swarm.tasks())
    predicted = sim.simulate(descs, seed=1, model=model).summary()
    assert predicted["tasks"] == 60 and predicted["completed"] > 40


def test_the_commands_calibrate_and_simulate_with_a_model(recorded, tmp_path):
    run, _ = recorded
    run.export(tmp_path / "export")
    env = {**os.environ, "COLUMNS": "200"}

    def timmy(*args):
        return subprocess.run([sys.executable, "-m", "timmy", *args], capture_output=True,
                              text=True, timeout=120, env=env)

    out = timmy("calibrate", str(tmp_path / "export"), "-o", str(tmp_path / "m.toml"))
    assert out.returncode == 0, out.stderr
    assert "arrivals:" in out.stdout and (tmp_path / "m.toml").is_file()
    out = timmy("simulate", "--tasks", "300", "--model", str(tmp_path / "m.toml"),
                "--runners", "quill=2,forge=1", "--rate", "10")
    assert out.returncode == 0, out.stderr
    assert "tasks/s" in out.stdout and "p95" in out.stdout and "sats per task" in out.stdout
    out = timmy("simulate", "--tasks", "50", "--model", str(tmp_path / "m.toml"),
                "--runners", "quill=1", "--rate", "1000")
    assert out.returncode == 2
    assert "will not keep up" in out.stderr and "--overload" in out.stderr
    out = timmy("simulate", "--tasks", "50", "--model", str(tmp_path / "m.toml"),
                "--runners", "quill=1", "--rate", "1000", "--overload")
    assert out.returncode == 0, out.stderr
    out = timmy("calibrate", str(tmp_path / "export"), "-o", str(tmp_path / "x.toml"),
                "--min-tasks", "100000")
    assert out.returncode == 2
    assert "needs at least 100000" in out.stderr and "hint:" in out.stderr


def _small_model():
    return sim.calibrate(sim.simulate(demo_descriptions(60, 1), seed=1, engine="python"),
                         min_tasks=10)


def test_a_live_runner_killed_mid_task_counts_as_a_crash(make_swarm, eventually, rows_of):
    swarm = make_swarm(task_seconds=0.2)
    swarm.spawn_all(["quill"])
    posted = [swarm.post(d) for d in demo_descriptions(12, 5)]

    def running():
        return any(t.status == "running" for t in swarm.tasks())

    for _ in range(2):   # twice, each while it runs a task
        eventually(running, timeout=20)
        swarm.kill("quill-1")
        eventually(lambda: swarm.agents()[0].status in ("idle", "busy"), timeout=20)
    for t in posted:
        swarm.wait(t.task_id, timeout=60)
    model = sim.calibrate(swarm.db, min_tasks=5)
    quill = model.personas["quill"]
    # a kill lands on a running task, or (rarely) just after it finished: what was written
    cut = [r for r in rows_of(swarm.db, "SELECT data FROM events WHERE kind IN "
                                        "('task_requeued', 'task_failed')")
           if "died" in r[0] and ("during attempt" in r[0] or "before finishing" in r[0])]
    assert quill.crashes == len(cut) and 1 <= len(cut) <= 2
    assert quill.crash_rate == pytest.approx(len(cut) / (quill.tasks + len(cut)))
    assert 0 < quill.restart_seconds < 10
    # the runs cut short are not durations: every one is about the executor's
    assert quill.duration.quantiles[0] >= 0.0


def test_an_experiment_compares_variants_of_a_model(recorded):
    _, model = recorded
    exp = sim.experiment(lambda seed: sim.model_arrivals(model, 150, seed, rate=20.0),
                         {"now": {"model": model},
                          "second": {"model": model, "rule": "second_price"}},
                         replications=3, progress=False, metrics=["cost_per_task"])
    prices = exp.table("cost_per_task")["mean"]["cost_per_task"]
    assert prices["second"] > prices["now"]   # second price pays the runner-up's bid
