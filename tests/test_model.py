"""The digital twin's `Model` (timmy.sim.model): files, versions, fits, summary, plot, capacity."""

from __future__ import annotations

import json
import math
import random

import pytest

import timmy.sim as sim
from timmy.errors import ConfigError, TimmyError
from timmy.sim.model import MODEL_VERSION, QUANTILES, fit_durations, to_toml
from timmy.sim.workloads import poisson_arrivals


@pytest.fixture(scope="module")
def model():
    run = sim.simulate(poisson_arrivals(600, 30.0, 2), seed=2, runners=1, task_seconds=0.05,
                       crash_rate=0.05, restart_seconds=0.25)
    return sim.calibrate(run)


@pytest.mark.parametrize("suffix", [".toml", ".json"])
def test_a_model_round_trips_through_its_file(model, tmp_path, suffix):
    path = model.save(tmp_path / f"model{suffix}")
    again = sim.Model.load(path)
    assert again == model
    assert again.personas["quill"].duration.quantiles == \
        model.personas["quill"].duration.quantiles
    if suffix == ".toml":
        import tomllib

        assert tomllib.loads(path.read_text())["version"] == MODEL_VERSION
    # and it simulates the same run as the model it was saved from
    work = poisson_arrivals(100, 20.0, 3)
    a = sim.simulate(work, seed=3, model=model).tasks
    b = sim.simulate(work, seed=3, model=path).tasks
    assert a.equals(b)


@pytest.mark.parametrize("suffix", [".toml", ".json"])
def test_a_model_of_another_version_is_refused_with_a_hint(model, tmp_path, suffix):
    data = model.to_dict()
    data["version"] = MODEL_VERSION + 1
    path = tmp_path / f"old{suffix}"
    path.write_text(to_toml(data) if suffix == ".toml" else json.dumps(data))
    with pytest.raises(sim.ModelError) as info:
        sim.Model.load(path)
    assert f"version {MODEL_VERSION + 1}" in info.value.message
    assert "timmy calibrate" in info.value.hint
    assert isinstance(info.value, TimmyError)


def test_a_file_that_is_not_a_model_is_refused(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"version": 1, "personas": {}}')
    with pytest.raises(sim.ModelError, match="not a timmy model"):
        sim.Model.load(bad)
    broken = tmp_path / "broken.toml"
    broken.write_text("version = [")
    with pytest.raises(sim.ModelError, match="not a readable model file"):
        sim.Model.load(broken)
    with pytest.raises(sim.ModelError, match="cannot read"):
        sim.Model.load(tmp_path / "missing.toml")


def test_an_exponential_sample_is_fitted_and_its_mean_kept():
    rng = random.Random(7)
    sample = [rng.expovariate(1 / 0.2) for _ in range(3000)]
    fit = fit_durations(sample)
    assert fit.n == 3000
    assert fit.mean == pytest.approx(sum(sample) / len(sample))
    assert set(fit.stats) == {"expon", "gamma", "lognorm", "weibull_min"}
    # the exponential family is not rejected, and its scale is the sample's mean
    assert fit.stats["expon"]["p"] > 0.05
    assert fit.stats["lognorm"]["ks"] > fit.stats["expon"]["ks"]
    assert fit.sampler == "parametric" and fit.better == fit.family
    assert fit.quantiles[QUANTILES.index(0.5)] == pytest.approx(0.2 * math.log(2), rel=0.08)
    assert fit.ppf(0.5) == pytest.approx(0.2 * math.log(2), rel=0.08)


def test_a_sample_no_family_fits_is_drawn_from_its_quantiles():
    sample = [0.01] * 500 + [1.0] * 500   # two spikes: no family of the four fits
    fit = fit_durations(sample)
    assert fit.sampler == "empirical" and fit.better == "empirical"
    assert fit.ppf(0.1) == pytest.approx(0.01) and fit.ppf(0.9) == pytest.approx(1.0)
    same = fit_durations([0.01] * 10)   # one value: nothing to fit, nothing to warn about
    assert same.stats == {} and same.sampler == "empirical" and same.ppf(0.7) == 0.01


def test_the_summary_names_every_persona_and_the_fits(model):
    text = str(model)
    assert text == model.summary()
    assert "arrivals:" in text and "overhead post->assign" in text
    for name, p in model.personas.items():
        assert name in text and p.duration.family in text


def test_the_plot_has_a_panel_per_persona_with_units(model):
    fig = model.plot(["quill", "forge"])
    panels = [ax for ax in fig.axes if ax.get_visible() and ax.get_xlabel()]
    assert len(panels) == 2
    assert panels[0].get_xlabel() == "execution time (s)"
    assert "1/s" in panels[0].get_ylabel()
    assert panels[0].get_title().startswith("forge") or panels[0].get_title().startswith("quill")
    with pytest.raises(ConfigError, match="no persona 'nobody'"):
        model.plot(["nobody"])


def test_capacity_grows_with_runners_and_a_rate_above_it_is_refused(model):
    one = model.capacity()
    assert 0 < one < math.inf
    assert model.capacity(2) == pytest.approx(2 * one)
    assert model.scaled(2.0).capacity() == pytest.approx(one / 2)
    model.check_rate(one * 0.9)
    with pytest.raises(ConfigError) as info:
        model.check_rate(one * 1.5)
    assert "will not keep up" in info.value.message and "50% over" in info.value.message
    assert "runners" in info.value.hint
