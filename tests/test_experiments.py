"""Experiments: variants x replications with common random numbers, confidence intervals and
Holm-corrected paired tests, serially and on a real two-worker Dask cluster."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from statsmodels.stats.multitest import multipletests

import timmy.sim
from timmy.errors import ConfigError
from timmy.sim import demo_descriptions, poisson_arrivals, simulate
from timmy.sim.experiments import METRICS, Experiment, experiment, measure, replication_seed

pytestmark = pytest.mark.timeout(120)

TASKS = 150
REPS = 8
VARIANTS = {
    "specialist": {},                                  # simulate's defaults
    "specialist_again": {"rule": "specialist_first"},  # the same thing, spelled out
    "second_price": {"rule": "second_price"},
    "slow": {"task_seconds": 0.2},
}


def workload(seed: int) -> list[str]:
    return demo_descriptions(TASKS, seed)


@pytest.fixture(scope="module")
def serial() -> Experiment:
    return experiment(workload, VARIANTS, replications=REPS, seed=7, progress=False)


def test_the_name_is_exported_lazily():
    assert timmy.sim.experiment is experiment
    assert "experiment" in dir(timmy.sim) and timmy.sim.Experiment is Experiment


def test_tables_are_tidy(serial):
    names = list(VARIANTS)
    assert list(serial.summary.columns) == ["variant", "metric", "mean", "ci_low", "ci_high", "n"]
    assert len(serial.summary) == len(VARIANTS) * len(METRICS)
    assert list(serial.runs.columns) == ["variant", "replication", "seed", "metric", "value"]
    assert len(serial.runs) == len(VARIANTS) * REPS * len(METRICS)
    assert list(serial.comparisons.columns) == ["a", "b", "metric", "diff", "ci_low", "ci_high",
                                                "p", "p_holm", "significant", "n"]
    pairs = len(names) * (len(names) - 1) // 2
    assert len(serial.comparisons) == pairs * len(METRICS)
    assert (serial.summary["n"] == REPS).all()
    s = serial.summary
    assert ((s["ci_low"] <= s["mean"]) & (s["mean"] <= s["ci_high"])).all()
    assert serial.seeds == [replication_seed(7, r) for r in range(REPS)]
    assert len(set(serial.seeds)) == REPS
    wide = serial.table()
    assert list(wide.index) == names
    assert wide[("mean", "spend")].tolist() == s[s["metric"] == "spend"]["mean"].tolist()
    assert "4 variants x 8 replications" in repr(serial)


def test_common_random_numbers_one_workload_and_seed_per_replication():
    calls = []

    def recording(seed: int) -> list[str]:
        calls.append(seed)
        return demo_descriptions(TASKS, seed)

    exp = experiment(recording, {"a": {}, "b": {"rule": "lowest"}, "c": {"max_attempts": 1}},
                     replications=3, seed=11, progress=False)
    # drawn once per replication, whatever the number of variants: all run the same list
    assert calls == exp.seeds == [replication_seed(11, r) for r in range(3)]
    # each run is simulate(workload of its replication, seed of its replication, **variant)
    for r, s in enumerate(exp.seeds):
        for name, spec in exp.variants.items():
            direct = measure(simulate(demo_descriptions(TASKS, s), seed=s, **spec))
            got = exp.runs[(exp.runs["variant"] == name) & (exp.runs["replication"] == r)]
            assert dict(zip(got["metric"], got["value"], strict=True)) == pytest.approx(
                direct, nan_ok=True)


def test_identical_variants_differ_by_exactly_zero_with_p_one(serial):
    same = serial.comparisons[(serial.comparisons["a"] == "specialist")
                              & (serial.comparisons["b"] == "specialist_again")]
    assert len(same) == len(METRICS)
    assert (same["diff"] == 0).all() and (same["p"] == 1).all() and (same["p_holm"] == 1).all()
    assert not same["significant"].any()
    a = serial.runs[serial.runs["variant"] == "specialist"]["value"].to_numpy()
    b = serial.runs[serial.runs["variant"] == "specialist_again"]["value"].to_numpy()
    assert np.array_equal(a, b, equal_nan=True)


def test_pairing_removes_the_replications_spread(serial):
    # posted one at a time, the execution time changes no bid: every replication of "slow"
    # pays what "specialist" paid, although the cost varies a lot between replications
    cost = serial.runs[serial.runs["metric"] == "cost_per_task"]
    per = cost.pivot(index="replication", columns="variant", values="value")
    assert per["specialist"].std() > 0.1
    assert (per["slow"] == per["specialist"]).all()
    row = serial.comparisons.set_index(["a", "b", "metric"]).loc[
        ("specialist", "slow", "cost_per_task")]
    assert row["diff"] == 0 and row["p"] == 1


def test_confidence_intervals_are_scipy_t_intervals(serial):
    for (variant, metric), g in serial.runs.groupby(["variant", "metric"]):
        x = g["value"].to_numpy()
        row = serial.summary[(serial.summary["variant"] == variant)
                             & (serial.summary["metric"] == metric)].iloc[0]
        assert row["mean"] == pytest.approx(x.mean())
        if x.std() == 0:
            assert row["ci_low"] == row["ci_high"] == row["mean"]
            continue
        low, high = stats.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=stats.sem(x))
        assert (row["ci_low"], row["ci_high"]) == pytest.approx((low, high))


def test_the_interval_of_a_few_replications_contains_the_mean_of_many():
    few = experiment(60, {"v": {}}, replications=6, seed=3, metrics=["cost_per_task"],
                     progress=False)
    many = experiment(60, {"v": {}}, replications=60, seed=1003, metrics=["cost_per_task"],
                      progress=False)
    f, m = few.summary.iloc[0], many.summary.iloc[0]
    assert f["ci_low"] < m["mean"] < f["ci_high"]
    assert m["ci_high"] - m["ci_low"] < f["ci_high"] - f["ci_low"]   # more replications, narrower


def test_p_values_are_paired_t_tests_and_holm_matches_statsmodels(serial):
    c = serial.comparisons
    for row in c.itertuples():
        wide = serial.runs[serial.runs["metric"] == row.metric].pivot(
            index="replication", columns="variant", values="value")
        x, y = wide[row.a].to_numpy(), wide[row.b].to_numpy()
        assert row.diff == pytest.approx((x - y).mean())
        if (x == y).all():
            assert row.p == 1
        else:
            assert row.p == pytest.approx(stats.ttest_rel(x, y).pvalue)
    ok = c["p"].notna()
    expected = multipletests(c.loc[ok, "p"], alpha=0.05, method="holm")
    assert np.allclose(c.loc[ok, "p_holm"], expected[1])
    assert (c.loc[ok, "significant"] == expected[0]).all()
    assert (c["p_holm"] >= c["p"]).all()


def test_wilcoxon_when_asked():
    exp = experiment(workload, {"a": {}, "b": {"rule": "second_price"}}, replications=REPS,
                     seed=7, metrics=["cost_per_task", "spend"], test="wilcoxon",
                     progress=False)
    wide = exp.runs[exp.runs["metric"] == "spend"].pivot(index="replication",
                                                          columns="variant", values="value")
    row = exp.comparisons[exp.comparisons["metric"] == "spend"].iloc[0]
    assert row["p"] == pytest.approx(stats.wilcoxon(wide["a"], wide["b"]).pvalue)
    assert exp.test == "wilcoxon"


def test_a_real_difference_is_significant(serial):
    c = serial.comparisons.set_index(["a", "b", "metric"])
    # the second price is above the winning bid: a higher cost per task, every replication
    price = c.loc[("specialist", "second_price", "cost_per_task")]
    assert price["diff"] < 0 and price["ci_high"] < 0 and price["significant"]
    # four times the execution time: slower
    slow = c.loc[("specialist", "slow", "latency_p50_s")]
    assert slow["diff"] < 0 and slow["significant"]
    assert c.loc[("specialist", "slow", "latency_p95_s"), "significant"]


def test_arrival_workloads_from_a_function():
    exp = experiment(lambda s: poisson_arrivals(TASKS, 300.0, s),
                     {"one": {"runners": 1}, "three": {"runners": 3}}, replications=4,
                     seed=2, metrics=["latency_p95_s", "completion_rate"], progress=False)
    row = exp.comparisons[exp.comparisons["metric"] == "latency_p95_s"].iloc[0]
    assert row["diff"] > 0   # one runner per persona queues more than three


def test_a_fixed_list_runs_every_replication_with_its_own_seed():
    exp = experiment(demo_descriptions(TASKS, 5), {"a": {}, "b": {"rule": "lowest"}},
                     replications=3, seed=0, metrics=["cost_per_task"], progress=False)
    values = exp.runs[exp.runs["variant"] == "a"]["value"]
    assert values.nunique() == 3   # the bids' draws differ between replications


def test_plot_has_axes_units_and_a_legend(serial):
    fig = serial.plot()
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert len(axes) == len(METRICS)
    for ax, metric in zip(axes, METRICS, strict=True):
        assert ax.get_title() == metric
        assert METRICS[metric][0] in ax.get_ylabel()
        assert [t.get_text() for t in ax.get_xticklabels()] == list(VARIANTS)
        assert len(ax.containers) == len(VARIANTS)   # an error bar per variant
    [legend] = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == list(VARIANTS)
    assert "95% CI" in legend.get_title().get_text()
    one = serial.plot(["spend"])
    assert len([ax for ax in one.axes if ax.get_visible()]) == 1
    with pytest.raises(ConfigError, match="unknown metric"):
        serial.plot(["speed"])


@pytest.mark.parametrize(("kwargs", "match", "hint"), [
    ({"replications": 1}, "at least 2 replications", "replications=30"),
    ({"replications": 2.5}, "at least 2 replications", "replications=30"),
    ({"variants": {}}, "needs variants", "variants="),
    ({"variants": ["lowest"]}, "needs variants", "variants="),
    ({"metrics": ["speed"]}, "unknown metric 'speed'", "cost_per_task"),
    ({"metrics": []}, "at least one metric", "cost_per_task"),
    ({"variants": {"x": {"rulez": "lowest"}}}, "variant 'x' sets 'rulez'", "task_seconds"),
    ({"variants": {"x": {"seed": 3}}}, "variant 'x' sets 'seed'", "leave 'seed' out"),
    ({"variants": {"x": "lowest"}}, "variant 'x' is str", "variants="),
    ({"variants": {"x": {"rule": "cheapest"}}}, "variant 'x': unknown", "lowest"),
    ({"test": "anova"}, "unknown paired test", "wilcoxon"),
    ({"seed": -1}, "seed is a whole number", "seed=1"),
    ({"confidence": 95}, "confidence must be between 0 and 1", "confidence=0.95"),
    ({"workload": []}, "workload is empty", "Arrival"),
    ({"workload": "write a poem"}, "cannot be a str", "descriptions"),
    ({"workload": lambda s: None}, "workload function gave", "demo_descriptions"),
])
def test_bad_input_is_a_config_error_with_a_hint(kwargs, match, hint):
    args = {"workload": 20, "variants": {"a": {}}, "replications": 2, "progress": False,
            **kwargs}
    with pytest.raises(ConfigError, match=match) as info:
        experiment(args.pop("workload"), args.pop("variants"), **args)
    assert hint in info.value.hint


# -- on Dask -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cluster():
    distributed = pytest.importorskip("dask.distributed")
    with distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1,
                                  dashboard_address=None) as cluster:
        yield cluster


def test_on_a_cluster_the_numbers_are_the_serial_ones(cluster, serial):
    from dask.distributed import Client

    with Client(cluster) as client:
        on_dask = experiment(workload, VARIANTS, replications=REPS, seed=7, client=client,
                             progress=False)
        assert client.status == "running"   # a client that was given is left open
    pd.testing.assert_frame_equal(on_dask.runs, serial.runs)
    pd.testing.assert_frame_equal(on_dask.summary, serial.summary)
    pd.testing.assert_frame_equal(on_dask.comparisons, serial.comparisons)
    # by address: connected for the call, closed after it
    by_address = experiment(workload, {"a": {}, "b": {"rule": "second_price"}},
                            replications=3, seed=7, scheduler=cluster.scheduler_address,
                            metrics=["spend"], progress=False)
    expected = serial.runs[serial.runs["variant"].isin(["specialist", "second_price"])
                           & (serial.runs["metric"] == "spend")
                           & (serial.runs["replication"] < 3)]
    assert sorted(by_address.runs["value"]) == sorted(expected["value"])


def test_an_unreachable_scheduler_is_a_config_error():
    with pytest.raises(ConfigError, match="cannot reach the Dask scheduler") as info:
        experiment(20, {"a": {}}, replications=2, scheduler="tcp://127.0.0.1:9",
                   progress=False)
    assert "dask scheduler" in info.value.hint
