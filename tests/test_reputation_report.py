"""The canned ``reputation`` query (`timmy.analytics.reputation`, in ``timmy report``): the
counters and reliability `swarm.reputation()` shows, from a live export, the live store, a
simulated run and its Parquet files; empty, with its columns, where there is no reputation."""

from __future__ import annotations

import os
import subprocess
import sys

import pandas as pd
import pytest

import timmy
from timmy import analytics
from timmy.sim import demo_descriptions, simulate

#: Results of forge-1 and quill-1 fail verification (the simulated output starts with the
#: runner's id), as in tests/test_reputation.py.
NOT_FORGE = r"regex:^(?!forge-1 |quill-1 )"
SHOWN = ["successes", "failures", "verification_failures", "outcomes", "reliability",
         "on_time", "late"]


def expected(reputation: dict) -> pd.DataFrame:
    """What `swarm.reputation()` (or `SimRun.reputation`) says of agents with an outcome."""
    rows = {a: r for a, r in reputation.items() if r["outcomes"] or r["on_time"] or r["late"]}
    return pd.DataFrame.from_dict(rows, orient="index")[SHOWN].sort_index()


def got(report: pd.DataFrame) -> pd.DataFrame:
    return report.set_index("agent_id")[SHOWN].sort_index().rename_axis(None)


@pytest.mark.timeout(180)
def test_the_reputation_report_of_a_live_export_and_store_is_swarm_reputation(tmp_path):
    db = tmp_path / "live.db"
    with timmy.Swarm(f"sqlite:///{db}", seed=4, rule="reputation", task_seconds=0) as swarm:
        swarm.spawn_all()
        for text in demo_descriptions(12, seed=4) + ["forge a parser for the build"] * 3:
            swarm.wait(swarm.post(text, verify=NOT_FORGE).task_id, 30)
        shown = swarm.reputation()
        swarm.export(tmp_path / "export")
    assert shown["quill-1"]["verification_failures"] >= 1
    report = analytics.reputation(tmp_path / "export")
    assert list(report.columns) == ["agent_id", "persona", *SHOWN[:5], "on_time", "late",
                                    "timeliness"]
    pd.testing.assert_frame_equal(got(report), expected(shown), check_dtype=False)
    assert list(report.reliability) == sorted(report.reliability, reverse=True)
    assert report.set_index("agent_id").persona["quill-1"] == "quill"
    pd.testing.assert_frame_equal(analytics.reputation(db), report)   # the store, read live

    proc = subprocess.run([sys.executable, "-m", "timmy", "report", str(tmp_path / "export"),
                           "--table", "reputation"],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode == 0, proc.stderr
    section = proc.stdout.split(analytics.title("reputation"))[1]
    assert "quill-1" in section and "reliability" in section


def test_a_simulated_run_gives_its_reputation_directly_and_from_its_files(tmp_path):
    work = demo_descriptions(60, seed=3)
    run = simulate(work, seed=3, rule="reputation", engine="python", verify=NOT_FORGE)
    report = analytics.reputation(run)
    assert report.set_index("agent_id").verification_failures["quill-1"] >= 1
    pd.testing.assert_frame_equal(got(report), expected(run.reputation), check_dtype=False)
    run.export(tmp_path / "sim")
    streamed = simulate(work, seed=3, rule="reputation", engine="python", verify=NOT_FORGE,
                        out=tmp_path / "streamed")
    for source in (tmp_path / "sim", tmp_path / "streamed", streamed):
        pd.testing.assert_frame_equal(analytics.reputation(source), report)


def test_without_reputation_the_report_is_empty_with_its_columns(tmp_path):
    compiled = simulate(demo_descriptions(30, seed=1), seed=1, engine="compiled")
    assert compiled.reputation is None
    columns = list(analytics.reputation(simulate(["fix the bug"], engine="python")).columns)
    for source in (compiled, compiled.export(tmp_path / "c")["tasks"].parent):
        report = analytics.reputation(source)
        assert report.empty and list(report.columns) == columns
    run = simulate(demo_descriptions(20, seed=1), seed=1, engine="python")
    run.export(tmp_path / "old")
    (tmp_path / "old" / "reputation.parquet").unlink()   # as written before reputation
    assert analytics.reputation(tmp_path / "old").empty
