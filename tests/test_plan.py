"""Capacity planning (`timmy.sim.plan`, ``timmy plan``) with a model whose numbers are known:
forge runs take 50 ms and quill runs 100 ms on average (exponential), half the posts each."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest

from timmy.sim.experiments import replication_seed
from timmy.sim.model import ArrivalModel, DurationFit, Model, PersonaModel
from timmy.sim.plan import PlanError, plan, simulate_point
from timmy.sim.workloads import keyword_mix, poisson_arrivals

RATE, TARGET, TASKS, REPS, SEED = 20.0, 0.35, 200, 3, 1
MIX = {"forge": 0.5, "quill": 0.5}


def expon(mean: float) -> DurationFit:
    return DurationFit(n=1000, mean=mean, family="expon", params=[0.0, mean],
                       sampler="parametric")


def known_model() -> Model:
    return Model(personas={"forge": PersonaModel("forge", 500, expon(0.05), 1.0, 1.0, share=0.5),
                           "quill": PersonaModel("quill", 500, expon(0.10), 1.0, 1.0, share=0.5)},
                 arrivals=ArrivalModel(rate=10.0, mix=dict(MIX)))


def replications(mix: dict[str, int]) -> list[dict]:
    """The figures of ``mix`` over the plan's replications, simulated here again: the same
    seeds and Poisson arrivals in the model's persona mix as `plan` uses (see its docstring)."""
    out = []
    for r in range(REPS):
        s = replication_seed(SEED, r)
        work = poisson_arrivals(TASKS, RATE, s, descriptions=keyword_mix(TASKS, s, MIX))
        out.append(simulate_point(known_model(), mix, "specialist_first", work, s))
    return out


@pytest.fixture(scope="module")
def planned():
    return plan(known_model(), rate=RATE, target_p95=TARGET, replications=REPS, tasks=TASKS,
                seed=SEED, max_runners=5)


@pytest.mark.timeout(300)
def test_the_plan_meets_the_target_and_one_runner_less_does_not(planned):
    model = known_model()
    assert planned.met and planned.predicted["p95"].mean <= TARGET
    start = planned.candidates[0]
    assert start.step == "start" and not start.meets   # the smallest mix that keeps up misses
    checked = 0
    for persona, n in planned.mix.items():
        smaller = {**planned.mix, persona: n - 1}
        if n == 1 or model.capacity(smaller) <= RATE:
            continue   # cannot keep up at all
        p95 = sum(f["p95"] for f in replications(smaller)) / REPS
        assert p95 > TARGET, f"{smaller} meets the target too: {p95:.3f} s"
        checked += 1
    assert checked >= 1
    # and the plan's own figures for its mix are what simulating it again gives
    again = replications(planned.mix)
    assert planned.predicted["p95"].mean == pytest.approx(sum(f["p95"] for f in again) / REPS)
    assert planned.runners == sum(planned.mix.values()) < 10


@pytest.mark.timeout(300)
def test_the_predicted_figures_have_student_t_intervals_over_the_replications(planned):
    from scipy import stats

    runs = replications(planned.mix)
    for name in ("throughput", "p50", "p95", "cost_per_task"):
        est = planned.predicted[name]
        values = [f[name] for f in runs]
        mean = sum(values) / len(values)
        low, high = stats.t.interval(0.95, len(values) - 1, loc=mean, scale=stats.sem(values))
        assert est.n == REPS
        assert (est.mean, est.low, est.high) == pytest.approx((mean, low, high))
        assert est.low < est.mean < est.high
    table = planned.table()
    assert len(table) == len(planned.candidates) and table["meets"].any()
    assert {"forge", "quill", "runners", "p95", "p95_low", "p95_high"} <= set(table.columns)
    assert "cheapest: forge" in str(planned) and "95% CI" in str(planned)


@pytest.mark.timeout(300)
def test_a_grid_search_finds_no_cheaper_mix_than_the_greedy_one(planned):
    grid = plan(known_model(), rate=RATE, target_p95=TARGET, replications=REPS, tasks=TASKS,
                seed=SEED, max_runners=3, search="grid")
    assert grid.met and {c.step for c in grid.candidates} == {"grid"}
    assert len(grid.candidates) == 3 * 2   # forge 1..3 x quill 2..3
    assert grid.runners <= planned.runners


@pytest.mark.timeout(300)
def test_a_confident_plan_holds_the_interval_not_the_mean_to_the_target(planned):
    sure = plan(known_model(), rate=RATE, target_p95=TARGET, replications=REPS, tasks=TASKS,
                seed=SEED, max_runners=5, confident=True)
    assert sure.met and sure.predicted["p95"].high <= TARGET
    assert planned.predicted["p95"].high > TARGET   # the mean's plan would not do
    assert sure.runners > planned.runners
    assert all(c.meets == (c.figures["p95"].high <= TARGET) for c in sure.candidates)
    assert "the CI's upper end of p95 <= 0.35" in str(sure)


def test_a_rate_no_allowed_mix_keeps_up_with_says_by_how_much():
    with pytest.raises(PlanError) as caught:
        plan(known_model(), rate=500, target_p95=1.0, max_runners=4)
    err = caught.value
    # 4 runners each: forge finishes 4 / (0.5 x 0.05) = 160/s, quill 4 / (0.5 x 0.1) = 80/s
    assert "about 80 tasks/s" in err.message and "525% over" in err.message
    assert "quill needs at least 26 runners" in err.hint and "max_runners" in err.hint


@pytest.mark.timeout(300)
def test_an_unreachable_target_is_reported_not_met():
    result = plan(known_model(), rate=RATE, target_p95=0.01, replications=2, tasks=100,
                  max_runners=3)
    assert not result.met and result.mix is None and result.predicted == {}
    best = result.best
    assert best.figures["p95"].mean == min(c.figures["p95"].mean for c in result.candidates)
    assert "no mix met the target" in str(result)


@pytest.mark.parametrize(("kwargs", "words"), [
    ({"rate": -1.0}, "rate must be a positive number"),
    ({"target_p95": math.nan}, "target_p95 must be a positive number"),
    ({"replications": 1}, "replications must be an integer >= 2"),
    ({"personas": ["lyra"]}, "knows nothing of persona 'lyra'"),
    ({"max_runners": 0}, "max_runners for forge must be an integer >= 1"),
    ({"search": "random"}, "unknown search 'random'"),
])
def test_bad_arguments_are_plan_errors_with_a_hint(kwargs, words):
    args = {"rate": RATE, "target_p95": TARGET, **kwargs}
    with pytest.raises(PlanError) as caught:
        plan(known_model(), **args)
    assert words in caught.value.message and caught.value.hint


def test_an_unknown_mechanism_is_refused_before_anything_runs():
    from timmy.errors import ConfigError

    with pytest.raises(ConfigError) as caught:
        plan(known_model(), rate=RATE, target_p95=TARGET, rule="nope")
    assert "unknown clearing rule 'nope'" in caught.value.message and caught.value.hint


@pytest.mark.timeout(300)
def test_on_dask_the_plan_is_the_same_as_in_process(planned):
    distributed = pytest.importorskip("dask.distributed")
    with distributed.Client(processes=False, n_workers=1, threads_per_worker=2,
                            dashboard_address=None) as client:
        on_dask = plan(known_model(), rate=RATE, target_p95=TARGET, replications=REPS,
                       tasks=TASKS, seed=SEED, max_runners=5, client=client)
    assert on_dask.mix == planned.mix
    assert [c.mix for c in on_dask.candidates] == [c.mix for c in planned.candidates]
    assert on_dask.predicted == planned.predicted


def timmy(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "timmy", *args], capture_output=True,
                          text=True, timeout=240, env=env)


@pytest.mark.timeout(300)
def test_timmy_plan_prints_the_candidates_and_the_cheapest_mix(tmp_path):
    path = known_model().save(tmp_path / "model.toml")
    out = timmy("plan", "--model", str(path), "--rate", "20", "--target-p95", "0.35",
                "--replications", "3", "--tasks", "200", "--seed", "1", "--max-runners", "5")
    assert out.returncode == 0, out.stderr
    assert "cheapest: forge" in out.stdout and "p95" in out.stdout and "meets" in out.stdout
    too_fast = timmy("plan", "--model", str(path), "--rate", "500", "--target-p95", "1",
                     "--max-runners", "4")
    assert too_fast.returncode == 2
    assert "PlanError" in too_fast.stderr and "525% over" in too_fast.stderr
    assert "hint: quill needs at least 26 runners" in too_fast.stderr
