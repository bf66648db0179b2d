"""Registered mechanisms and verifiers on Dask workers: ``plugins=[MODULE]`` for `sweep`,
`experiment` and ``timmy sweep --plugin``, on a real two-worker cluster whose workers find
the plugin module on their PYTHONPATH (a module written to a temporary directory)."""

from __future__ import annotations

import os
import subprocess
import sys

import pandas as pd
import pytest

from timmy.errors import ConfigError
from timmy.market.mechanisms import unregister_mechanism
from timmy.market.verification import unregister_verifier
from timmy.sim.experiments import experiment
from timmy.sim.sweeps import sweep

pytestmark = pytest.mark.timeout(120)

PLUGIN = "timmy_test_dearest"
SOURCE = '''
import timmy


def dearest(bids, ctx):
    """The highest bid wins and is paid its bid (ties: the higher agent_id)."""
    best = max(bids, key=lambda b: (b.sats, b.agent_id))
    return best.agent_id, best.sats, "dearest bid"


def says_did(result):
    return " did: " in result


timmy.register_mechanism("dearest", dearest)
timmy.register_verifier("says_did", says_did)
'''
GRID = {"rule": ["dearest", "lowest"], "seed": [0, 1], "load": [400]}


@pytest.fixture(scope="module")
def plugin_dir(tmp_path_factory):
    where = tmp_path_factory.mktemp("plugins")
    (where / f"{PLUGIN}.py").write_text(SOURCE)
    with pytest.MonkeyPatch.context() as mp:
        # this process and every worker the cluster starts can import the plugin
        mp.syspath_prepend(str(where))
        mp.setenv("PYTHONPATH", os.pathsep.join(filter(None, [
            str(where), os.environ.get("PYTHONPATH")])))
        yield where
    unregister_mechanism("dearest")
    unregister_verifier("says_did")
    sys.modules.pop(PLUGIN, None)


@pytest.fixture(scope="module")
def cluster(plugin_dir):
    distributed = pytest.importorskip("dask.distributed")
    with distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1,
                                  dashboard_address=None) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def client(cluster):
    from dask.distributed import Client

    with Client(cluster) as client:
        yield client


def test_a_sweep_imports_its_plugins_on_the_workers(client):
    on_dask = sweep(GRID, client=client, tasks=150, plugins=[PLUGIN], progress=False)
    serial = sweep(GRID, serial=True, tasks=150, plugins=[PLUGIN], progress=False)
    pd.testing.assert_frame_equal(on_dask, serial)
    prices = on_dask.groupby("rule")["mean_price"].mean()
    assert prices["dearest"] > prices["lowest"]   # the plugin's rule really cleared
    # imported by the parent: found by its module without plugins= too
    again = sweep(GRID, client=client, tasks=150, progress=False)
    pd.testing.assert_frame_equal(again, serial)


def test_an_experiment_imports_its_plugins_on_the_workers(client):
    variants = {"dearest": {"rule": "dearest", "verify": "says_did"},
                "unverified": {"rule": "dearest"}, "lowest": {"rule": "lowest"}}
    args = {"replications": 3, "seed": 2, "metrics": ["cost_per_task", "completion_rate"],
            "progress": False, "plugins": [PLUGIN]}
    on_dask = experiment(80, variants, client=client, **args)
    serial = experiment(80, variants, **args)
    pd.testing.assert_frame_equal(on_dask.runs, serial.runs)
    done = on_dask.summary.set_index(["variant", "metric"])["mean"]
    # the verifier passed every result: as many completed as without it
    assert done["dearest", "completion_rate"] == done["unverified", "completion_rate"]
    assert done["dearest", "cost_per_task"] > done["lowest", "cost_per_task"]


def _register_in_main() -> None:
    """What a notebook cell does: functions whose module is ``__main__``."""
    exec(SOURCE.replace('"dearest", dearest', '"cell_rule", dearest')
         .replace('"says_did", says_did', '"cell_check", says_did'), {"__name__": "__main__"})


def test_a_rule_defined_in_a_notebook_is_refused_before_anything_runs(client):
    _register_in_main()
    try:
        with pytest.raises(ConfigError, match="mechanism 'cell_rule' is registered in this "
                           "process only") as info:
            sweep({"rule": ["lowest", "cell_rule"]}, client=client, tasks=50, progress=False)
        assert "plugins=[" in info.value.hint and "module" in info.value.hint
        with pytest.raises(ConfigError, match="verifier 'cell_check'") as info:
            experiment(20, {"a": {"verify": "cell_check"}, "b": {}}, replications=2,
                       client=client, progress=False)
        assert "plugins=[" in info.value.hint
        # serially, this process has them: nothing to refuse
        df = sweep({"rule": ["cell_rule"]}, serial=True, tasks=50, progress=False)
        assert len(df) == 1
    finally:
        unregister_mechanism("cell_rule")
        unregister_verifier("cell_check")


def test_a_plugin_that_cannot_be_imported_is_a_config_error(client):
    with pytest.raises(ConfigError, match="plugin 'no_such_plugin_module' failed to import"):
        sweep({"rule": ["lowest"]}, client=client, tasks=50, plugins=["no_such_plugin_module"],
              progress=False)


def test_timmy_sweep_plugin_runs_a_plugin_rule_on_a_scheduler(cluster, tmp_path):
    grid = tmp_path / "grid.toml"
    grid.write_text('[grid]\nrule = ["dearest", "lowest"]\n[settings]\ntasks = 100\n')
    out = subprocess.run(
        [sys.executable, "-m", "timmy", "sweep", str(grid), "--plugin", PLUGIN,
         "--scheduler", cluster.scheduler_address, "--out", str(tmp_path / "r.csv")],
        capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "200"})
    assert out.returncode == 0, out.stderr
    results = pd.read_csv(tmp_path / "r.csv")
    assert sorted(results["rule"]) == ["dearest", "lowest"]
