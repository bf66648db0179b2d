"""Sweeps: a grid of simulations on a real two-worker Dask cluster, and grid files."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pandas as pd
import pytest

from timmy.errors import ConfigError
from timmy.sim.sweeps import GRID_PARAMETERS, METRICS, SCHEDULER_ENV, check_grid, load_grid, sweep

pytestmark = pytest.mark.timeout(60)

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "grid.toml"

# Two rules x two runner counts x two seeds, at a load where runners are the bottleneck.
GRID = {"rule": ["specialist_first", "lowest"], "runners": [1, 3], "seed": [0, 1],
        "load": [400]}
TASKS = 200


@pytest.fixture(scope="module")
def cluster():
    distributed = pytest.importorskip("dask.distributed")
    with distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1,
                                  dashboard_address=None) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def client(cluster):
    from dask.distributed import Client

    with Client(cluster) as client:
        yield client


@pytest.fixture(scope="module")
def serial() -> pd.DataFrame:
    return sweep(GRID, tasks=TASKS, serial=True, progress=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sweep_on_a_cluster_gives_the_serial_numbers(client, serial):
    on_dask = sweep(GRID, client=client, tasks=TASKS, progress=False)
    assert len(on_dask) == 8
    assert list(on_dask.columns) == [*GRID_PARAMETERS, *METRICS]
    pd.testing.assert_frame_equal(on_dask, serial)
    assert on_dask.attrs["settings"]["tasks"] == TASKS


def test_sweep_rows_are_sorted_by_the_grid_parameters(serial):
    keys = list(serial[list(GRID_PARAMETERS)].itertuples(index=False))
    assert keys == sorted(keys)
    assert set(serial["jitter"]) == {1.0}   # left out of the grid: its default


def test_sweep_metrics_are_sensible(serial):
    assert serial["success_rate"].between(0.9, 1).all()
    assert (serial["failed"] == round((1 - serial["success_rate"]) * TASKS)).all()
    assert (serial["reauction_rate"] >= 0).all()
    assert (serial["latency_p50_s"] <= serial["latency_p95_s"]).all()
    assert (serial["latency_p95_s"] <= serial["makespan_s"]).all()
    assert serial["mean_price"].between(1, 200).all()
    by = serial.set_index(["rule", "runners", "seed"])
    for runners in (1, 3):
        for seed in (0, 1):
            assert (by.loc[("specialist_first", runners, seed), "specialist_share"]
                    >= by.loc[("lowest", runners, seed), "specialist_share"])
    for rule in ("specialist_first", "lowest"):
        for seed in (0, 1):
            assert (by.loc[(rule, 3, seed), "makespan_s"]
                    < by.loc[(rule, 1, seed), "makespan_s"])


def test_jitter_zero_gives_fixed_prices_and_more_jitter_spreads_them():
    df = sweep({"jitter": [0, 2], "load": [20]}, tasks=100, serial=True, progress=False)
    assert list(df["jitter"]) == [0.0, 2.0]
    assert df["mean_price"].nunique() == 2


def test_scheduler_from_the_environment_is_used(cluster, serial, monkeypatch):
    import dask.distributed

    def no_local_cluster(*args, **kwargs):
        raise AssertionError(f"started a local cluster instead of using {SCHEDULER_ENV}")

    monkeypatch.setattr(dask.distributed, "LocalCluster", no_local_cluster)
    monkeypatch.setenv(SCHEDULER_ENV, cluster.scheduler_address)
    grid = {"rule": ["lowest"], "runners": [1, 3], "seed": [0, 1], "load": [400]}
    on_dask = sweep(grid, tasks=TASKS, progress=False)
    pd.testing.assert_frame_equal(on_dask, serial[serial["rule"] == "lowest"]
                                  .reset_index(drop=True))
    assert len(cluster.scheduler.workers) == 2   # the sweep closed its client, not the cluster


def test_unreachable_scheduler_is_named_quickly_with_a_hint():
    address = f"tcp://127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    with pytest.raises(ConfigError) as info:
        sweep({"seed": [0]}, tasks=10, scheduler=address, progress=False)
    assert time.monotonic() - t0 < 10
    assert address in info.value.message
    assert "dask scheduler" in info.value.hint and "local cluster" in info.value.hint


def test_unreachable_scheduler_from_the_environment_says_so(monkeypatch):
    monkeypatch.setenv(SCHEDULER_ENV, "no-port-here")
    with pytest.raises(ConfigError, match=SCHEDULER_ENV):
        sweep({"seed": [0]}, tasks=10, progress=False)


def test_example_grid_loads_with_its_settings():
    grid = load_grid(EXAMPLE)
    assert grid["rule"] == ["specialist_first", "lowest", "second_price"]
    assert grid["seed"] == [0, 1, 2]
    assert grid.size == 36
    assert grid.settings["tasks"] == 500


def test_grid_file_settings_apply_and_keywords_override_them(tmp_path):
    path = tmp_path / "grid.toml"
    path.write_text('[grid]\nload = {start = 10, stop = 31, step = 10}\n'
                    '[settings]\ntasks = 30\n')
    grid = load_grid(path)
    assert grid == {"load": [10.0, 20.0, 30.0]}
    assert sweep(grid, serial=True, progress=False).attrs["settings"]["tasks"] == 30
    df = sweep(grid, serial=True, progress=False, tasks=20)
    assert df.attrs["settings"]["tasks"] == 20
    plain = sweep({"load": [10, 20, 30]}, serial=True, progress=False, tasks=20)
    pd.testing.assert_frame_equal(df, plain)


@pytest.mark.parametrize(("body", "parameter", "words"), [
    ("[grid]\nrule = ['lowest']\njiter = [1, 2]\n", "jiter", "not a grid parameter"),
    ("[grid]\nrule = []\n", "rule", "empty list"),
    ("[grid]\nseed = {start = 5, stop = 5}\n", "seed", "empty range"),
    ("[grid]\nrule = ['lowest', 'cheapest']\n", "rule", "unknown rule 'cheapest'"),
    ("[grid]\njitter = [1, -0.5]\n", "jitter", "negative"),
    ("[grid]\nload = [0]\n", "load", "above 0"),
    ("[grid]\nrunners = [0, 1]\n", "runners", "at least 1"),
    ("[grid]\ntasks = [100]\n", "tasks", "[settings]"),
    ("[grid]\nseed = [1, 1]\n", "seed", "repeats"),
])
def test_bad_grid_file_names_the_file_and_the_parameter(tmp_path, body, parameter, words):
    path = tmp_path / "bad.toml"
    path.write_text(body)
    with pytest.raises(ConfigError) as info:
        load_grid(path)
    assert str(path) in info.value.message
    assert repr(parameter) in info.value.message
    assert words in info.value.message
    assert info.value.hint


def test_bad_grid_dict_is_refused_before_anything_runs():
    with pytest.raises(ConfigError, match=r"grid: grid parameter 'runners' .*2\.5"):
        check_grid({"runners": [1, 2.5]})
    with pytest.raises(ConfigError, match="names no parameter"):
        sweep({}, serial=True, progress=False)
    with pytest.raises(ConfigError, match="unknown setting 'task'"):
        sweep({"seed": [0]}, serial=True, progress=False, task=10)


def test_grid_file_that_is_missing_or_not_toml_is_named(tmp_path):
    with pytest.raises(ConfigError, match="cannot read grid file"):
        load_grid(tmp_path / "nope.toml")
    path = tmp_path / "broken.toml"
    path.write_text("[grid\nrule = 1\n")
    with pytest.raises(ConfigError, match="not valid TOML") as info:
        load_grid(path)
    assert str(path) in info.value.message
    path.write_text("[settings]\ntasks = 10\n")
    with pytest.raises(ConfigError, match=r"no \[grid\] table"):
        load_grid(path)
