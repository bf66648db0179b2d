"""`timmy report` (a summary by default, --all / --table NAME for the tables), `--db` never
making directories silently (`--create`), and `timmy demo --db X` exporting beside X."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from timmy.analysis import queries as analytics


def timmy(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "timmy", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env=env)


def assert_clean_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("hint: ") and re.match(r"[A-Z]\w+: \S", lines[-2]), lines
    for needle in needles:
        assert needle in proc.stderr, proc.stderr


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    """`timmy demo --db runs/x.db --create` in an empty directory: the working directory."""
    cwd = tmp_path_factory.mktemp("report")
    proc = timmy("demo", "--tasks", "20", "--db", "runs/x.db", "--create", cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    assert "created the directory" in proc.stderr and str(cwd / "runs") in proc.stderr
    assert f"parquet export: {cwd / 'runs' / 'x-export'}/" in proc.stdout
    return cwd


# -- timmy demo --db X: the export beside X ---------------------------------------------------


def test_a_demo_on_another_database_exports_beside_it_and_leaves_data_alone(demo):
    assert (demo / "runs" / "x-export" / "tasks.parquet").is_file()
    assert not (demo / "data").exists()          # no data/demo-export overwritten (or made)
    with duckdb.connect() as con:
        path = (demo / "runs" / "x-export" / "tasks.parquet").as_posix()
        assert con.execute(f"SELECT count(*) FROM read_parquet('{path}')").fetchone() == (20,)


def test_an_explicit_out_still_wins(tmp_path):
    proc = timmy("demo", "--tasks", "3", "--db", "y.db", "--out", "here", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "here" / "tasks.parquet").is_file()
    assert not (tmp_path / "y-export").exists() and not (tmp_path / "data").exists()


# -- timmy report: summary, --all, --table ----------------------------------------------------


@pytest.mark.parametrize("how", ["dir", "--db"])
def test_the_report_is_a_summary_by_default(demo, how):
    args = ["runs/x-export"] if how == "dir" else ["--db", "runs/x.db"]
    proc = timmy("report", *args, cwd=demo)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert re.search(r": 2\d tasks, \d+ auctions, \d+ bids, 9 agents", out), out
    assert "Summary" in out
    for figure in ("tasks by state", "on-spec wins", "post -> complete p50 / p90",
                   "top 3 earners"):
        assert figure in out
    completed = analytics.earnings_by_persona(demo / "runs" / "x-export").completed.sum()
    assert f"{completed} completed" in out
    for name in analytics.REPORTS:                # no table unless asked for
        assert analytics.title(name) not in out
    assert "--all" in out and "--table NAME" in out


def test_all_prints_every_table_and_table_the_ones_named(demo):
    every = timmy("report", "runs/x-export", "--all", cwd=demo)
    assert every.returncode == 0, every.stderr
    assert "Summary" not in every.stdout
    for name in analytics.REPORTS:
        assert analytics.title(name) in every.stdout
    some = timmy("report", "runs/x-export", "--table", "price_by_spec", "--table",
                 "bids_per_auction", cwd=demo)
    assert some.returncode == 0, some.stderr
    shown = [name for name in analytics.REPORTS if analytics.title(name) in some.stdout]
    assert shown == ["price_by_spec", "bids_per_auction"]
    assert "on-spec" in some.stdout and "Summary" not in some.stdout


def test_an_unknown_table_or_all_with_table_is_refused_with_the_names(demo):
    assert_clean_error(timmy("report", "runs/x-export", "--table", "nope", cwd=demo),
                       "--table nope", "win_rate_by_persona", "reputation")
    assert_clean_error(timmy("report", "runs/x-export", "--all", "--table", "balances",
                             cwd=demo), "--all or --table")


# -- --db never makes directories silently ----------------------------------------------------


@pytest.mark.parametrize("args", [
    ["demo", "--tasks", "2"],
    ["run", "t.txt", "--task-seconds", "0"],
    ["serve", "--port", "0"],
    ["dashboards", "--port", "0", "--voila-port", "1"],
], ids=["demo", "run", "serve", "dashboards"])
def test_a_db_in_a_missing_directory_is_refused_without_create(tmp_path, args):
    (tmp_path / "t.txt").write_text("fix the bug\n")
    proc = timmy(*args, "--db", "nowhere/deep/x.db", cwd=tmp_path, timeout=60)
    assert_clean_error(proc, "ConfigError", str(tmp_path / "nowhere" / "deep"), "--create",
                       "mkdir -p")
    assert not (tmp_path / "nowhere").exists()


@pytest.mark.parametrize("args", [
    ["report", "--db", "nowhere/x.db"],
    ["export", "nowhere/x.db", "out"],
    ["doctor", "--db", "nowhere/x.db"],
    ["status", "--db", "nowhere/x.db", "--url", "http://127.0.0.1:1"],
], ids=["report", "export", "doctor", "status"])
def test_commands_that_only_read_a_db_make_no_directory(tmp_path, args):
    proc = timmy(*args, cwd=tmp_path, timeout=60)
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "nowhere").exists()
    if args[0] != "doctor":                       # doctor says "not created yet" and goes on
        assert proc.returncode != 0


def test_create_makes_the_directory_and_says_so(tmp_path):
    (tmp_path / "t.txt").write_text("fix the bug\n")
    proc = timmy("run", "t.txt", "--db", "a/b/x.db", "--create", "--task-seconds", "0",
                 cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"created the directory {tmp_path / 'a' / 'b'}" in proc.stderr
    assert (tmp_path / "a" / "b" / "x.db").is_file()
    again = timmy("run", "t.txt", "--db", "a/b/x.db", "--task-seconds", "0", cwd=tmp_path)
    assert again.returncode == 0 and "created the directory" not in again.stderr, again.stderr


def test_the_default_database_gets_its_directory_and_it_is_said(tmp_path):
    """data/timmy.db, the default of a fresh checkout, still works: made, and said so."""
    (tmp_path / "t.txt").write_text("fix the bug\n")
    proc = timmy("run", "t.txt", "--task-seconds", "0", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"created the directory {tmp_path / 'data'} for the database" in proc.stderr
    assert (tmp_path / "data" / "timmy.db").is_file()
