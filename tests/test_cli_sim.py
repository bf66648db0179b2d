"""`timmy simulate` and `timmy sweep` as a user runs them."""

from __future__ import annotations

import os
import subprocess
import sys

import pyarrow.parquet as pq
import pytest


def timmy(*args: str, cwd=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200"}   # wide enough that table headers do not wrap
    return subprocess.run([sys.executable, "-m", "timmy", *args], capture_output=True,
                          text=True, timeout=120, cwd=cwd, env=env)


@pytest.mark.timeout(120)
def test_simulate_prints_earnings_and_streams_the_tables(tmp_path):
    out = timmy("simulate", "--tasks", "3000", "--seed", "4", "--out", str(tmp_path / "run"))
    assert out.returncode == 0, out.stderr
    assert "Earnings by persona" in out.stdout and "On- vs off-spec" in out.stdout
    assert "3,000 tasks" in out.stdout
    tasks = pq.read_table(tmp_path / "run" / "tasks.parquet")
    assert tasks.num_rows == 3000
    again = timmy("simulate", "--tasks", "3000", "--seed", "4")
    table = out.stdout.split("3,000 tasks")[0]
    assert again.stdout.split("3,000 tasks")[0] == table   # seeded: the same tables


def test_simulate_help_names_its_options():
    out = timmy("simulate", "--help")
    assert out.returncode == 0
    for option in ("--tasks", "--rule", "--seed", "--out", "--runners"):
        assert option in out.stdout


@pytest.mark.timeout(120)
def test_sweep_runs_a_grid_file_and_writes_the_results(tmp_path):
    grid = tmp_path / "grid.toml"
    grid.write_text('[grid]\nrule = ["specialist_first", "lowest"]\nrunners = [1, 2]\n'
                    "[settings]\ntasks = 120\n")
    out = timmy("sweep", str(grid), "--out", str(tmp_path / "results.csv"))
    assert out.returncode == 0, out.stderr
    assert "specialist share" in out.stdout and "lowest" in out.stdout
    lines = (tmp_path / "results.csv").read_text().splitlines()
    assert len(lines) == 1 + 4 and "rule" in lines[0]


def test_sweep_names_an_unknown_grid_parameter_and_exits_2(tmp_path):
    grid = tmp_path / "grid.toml"
    grid.write_text("[grid]\ncolour = [1, 2]\n")
    out = timmy("sweep", str(grid))
    assert out.returncode == 2
    assert "colour" in out.stderr and "hint:" in out.stderr
