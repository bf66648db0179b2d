"""`timmy simulate` and `timmy sweep` as a user runs them."""

from __future__ import annotations

import subprocess
import sys

import pyarrow.parquet as pq
import pytest


def timmy(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "timmy", *args], capture_output=True,
                          text=True, timeout=120, cwd=cwd)


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
