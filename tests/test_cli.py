"""The ``timmy`` command, run for real: subprocesses in ``tmp_path``, real swarms, real files.

Commands that start a swarm run as ``python -m timmy ...`` child processes with
``cwd=tmp_path`` (so their default ``data/`` lands there); the quick ones run
through click's `CliRunner`. Databases are read back with sqlite3 and the
Parquet exports with DuckDB.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import click
import duckdb
import pytest
from click.testing import CliRunner

from timmy.cli.app import _TimmyGroup, cli, report_error
from timmy.cli.run import persona_summary
from timmy.errors import ConfigError, PersonaError
from timmy.market.models import Task
from timmy.market.personas import PERSONAS
from timmy.storage.address import db_url

TABLES = ("tasks", "bids", "agents", "events")


def timmy(*args: str, cwd: Path, timeout: float = 90) -> subprocess.CompletedProcess:
    """Run ``python -m timmy ARGS`` in ``cwd`` and capture its output (tables 200 wide)."""
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "timmy", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env=env)


def sqlite_rows(path: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(path) as conn:
        return conn.execute(sql).fetchall()


def parquet_count(directory: Path, table: str, where: str = "true") -> int:
    with duckdb.connect() as conn:
        return conn.execute(f"select count(*) from '{directory / table}.parquet' "
                            f"where {where}").fetchone()[0]


def assert_clean_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    """Exit code 2, ``Kind: message`` then ``hint: ...`` on stderr, and no traceback."""
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("hint: ") and len(lines[-1]) > len("hint: ")
    assert re.match(r"[A-Z]\w+: \S", lines[-2]), lines
    for needle in needles:
        assert needle in proc.stderr


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """One ``timmy demo --tasks 30`` run, shared by the tests that inspect what it wrote."""
    cwd = tmp_path_factory.mktemp("demo")
    return cwd, timmy("demo", "--tasks", "30", cwd=cwd)


@pytest.fixture
def tasks_file(tmp_path: Path) -> Path:
    path = tmp_path / "tasks.txt"
    path.write_text("# tasks for today\n"
                    "fix the bug in the api client\n"
                    "\n"
                    "   \n"
                    "write a blog post about [bold]markup[/bold]\n"
                    "  # an indented comment\n"
                    "book a table for two\n", encoding="utf-8")
    return path


PERSONA_TOML = """\
[[persona]]
id = "scout"
role = "Trail Scout"
bid_base = 20
bid_jitter = 5
preferred_keywords = ["trail", "map"]

[[persona]]
id = "cook"
role = "Camp Cook"
rate_sats = 30
bid_base = 25
bid_jitter = 5
preferred_keywords = ["dinner", "breakfast"]
"""


# -- help -------------------------------------------------------------------------------------


def test_top_level_help_lists_every_command():
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    for command in ("demo", "run", "export", "personas"):
        assert command in result.output


@pytest.mark.parametrize("command, words", [
    ("demo", ["--tasks", "--seed", "--db", "--out", "--rule", "--sequential / --concurrent",
              "data/demo.db", "data/demo-export"]),
    ("run", ["TASKS.txt", "--db", "--seed", "--rule", "--executor", "--task-seconds",
             "--timeout", "--personas", "skipped"]),
    ("export", ["DB", "DIR", "--format", "parquet|csv", "SQLAlchemy URL"]),
    ("personas", ["--file", "TOML", "JSON"]),
])
def test_every_command_has_help(command, words):
    result = CliRunner().invoke(cli, [command, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    for word in words:
        assert word in result.output


def test_python_dash_m_timmy_and_the_console_script_both_run(tmp_path):
    assert timmy("--version", cwd=tmp_path).stdout.strip().endswith("0.1.0")
    script = Path(sys.executable).with_name("timmy")
    if not script.exists():
        pytest.skip("the timmy console script is not installed next to this python")
    proc = subprocess.run([str(script), "--help"], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0 and "Usage: timmy" in proc.stdout


# -- demo -------------------------------------------------------------------------------------


def test_demo_writes_a_database_and_a_parquet_export_duckdb_reads(demo_dir):
    cwd, proc = demo_dir
    assert proc.returncode == 0, proc.stderr
    db = cwd / "data" / "demo.db"
    export = cwd / "data" / "demo-export"
    assert sqlite_rows(db, "select count(*) from tasks") == [(30,)]
    assert sqlite_rows(db, "select count(*) from tasks where status not in "
                           "('completed', 'failed')") == [(0,)]
    for table in TABLES:
        assert (export / f"{table}.parquet").is_file()
    assert parquet_count(export, "tasks") == 30
    assert parquet_count(export, "agents") == 9
    assert parquet_count(export, "bids", "won") >= 30
    assert parquet_count(export, "events", "kind = 'task_posted'") == 30
    assert str(db.resolve()) in proc.stdout
    assert str(export.resolve()) in proc.stdout


def test_demo_prints_winners_and_prices_by_persona_and_the_status(demo_dir):
    _, proc = demo_dir
    for persona in PERSONAS.values():
        assert persona.id in proc.stdout and persona.role in proc.stdout
    for column in ("won", "completed", "failed", "avg price", "earned", "on-spec"):
        assert column in proc.stdout
    assert "status: tasks" in proc.stdout and "runners live 9" in proc.stdout
    assert "30/30" in proc.stderr  # the progress bar reached the end


def test_demo_with_the_same_seed_prints_the_same_table_on_a_fresh_database(tmp_path):
    first = timmy("demo", "--tasks", "20", "--seed", "7", cwd=tmp_path)
    second = timmy("demo", "--tasks", "20", "--seed", "7", cwd=tmp_path)
    assert first.returncode == second.returncode == 0, second.stderr
    assert first.stdout == second.stdout
    # the second run replaced the first run's database rather than adding to it
    assert sqlite_rows(tmp_path / "data" / "demo.db", "select count(*) from tasks") == [(20,)]
    assert sqlite_rows(tmp_path / "data" / "demo.db",
                       "select min(agent_id) from agents") == [("echo-1",)]


def test_demo_concurrent_with_another_rule_db_and_export_dir(tmp_path):
    proc = timmy("demo", "--tasks", "15", "--concurrent", "--rule", "lowest",
                 "--db", "runs/mine.db", "--create", "--out", "runs/export", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "rule lowest" in proc.stdout
    assert sqlite_rows(tmp_path / "runs" / "mine.db", "select count(*) from tasks") == [(15,)]
    assert parquet_count(tmp_path / "runs" / "export", "bids", "rule = 'lowest'") > 0
    assert not (tmp_path / "data" / "demo.db").exists()


# -- run --------------------------------------------------------------------------------------


def test_run_posts_one_task_per_line_skipping_comments_and_blanks(tmp_path, tasks_file):
    proc = timmy("run", str(tasks_file), "--seed", "3", "--task-seconds", "0", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = sqlite_rows(tmp_path / "data" / "timmy.db",
                       "select description, status from tasks order by task_id")
    assert [d for d, _ in rows] == ["fix the bug in the api client",
                                    "write a blog post about [bold]markup[/bold]",
                                    "book a table for two"]
    assert {s for _, s in rows} <= {"completed", "failed"}
    assert "[bold]markup[/bold]" in proc.stdout  # user text is shown as written, not as markup
    assert "forge-1" in proc.stdout  # the code smith won the bug fix
    assert "By persona" in proc.stdout


def test_a_tasks_file_line_is_one_task_whatever_unicode_it_holds(tmp_path):
    from timmy.cli.run import read_tasks_file

    path = tmp_path / "tasks.txt"
    # U+2028/U+2029, U+0085, VT and FF are line breaks to str.splitlines, not to a text file
    path.write_text("fix the bug\u2028in the parser\r\nsum\x0bup \x85the\x0cweek\u2029ok\n",
                    encoding="utf-8", newline="")
    assert read_tasks_file(path) == ["fix the bug\u2028in the parser",
                                     "sum\x0bup \x85the\x0cweek\u2029ok"]


def test_run_adds_to_the_database_it_is_given(tmp_path, tasks_file):
    for _ in range(2):
        proc = timmy("run", str(tasks_file), "--db", "sqlite:///shared.db",
                     "--task-seconds", "0", "--sequential", cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
    assert sqlite_rows(tmp_path / "shared.db", "select count(*) from tasks") == [(6,)]


def test_run_with_a_persona_file_spawns_those_personas(tmp_path):
    personas = tmp_path / "camp.toml"
    personas.write_text(PERSONA_TOML, encoding="utf-8")
    tasks = tmp_path / "camp.txt"
    tasks.write_text("draw the trail map\ncook dinner for ten\n", encoding="utf-8")
    proc = timmy("run", str(tasks), "--personas", str(personas), "--executor", "echo",
                 "--db", "camp.db", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert sqlite_rows(tmp_path / "camp.db", "select agent_id from agents order by 1") == \
        [("cook-1",), ("scout-1",)]
    assert sqlite_rows(tmp_path / "camp.db",
                       "select assigned_agent from tasks order by task_id") == \
        [("scout-1",), ("cook-1",)]


# -- export -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_db(tmp_path_factory) -> Path:
    cwd = tmp_path_factory.mktemp("small")
    (cwd / "t.txt").write_text("fix the bug\nwrite the readme\n", encoding="utf-8")
    proc = timmy("run", "t.txt", "--db", "small.db", "--task-seconds", "0", cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    return cwd / "small.db"


@pytest.mark.parametrize("as_url", [False, True], ids=["path", "url"])
def test_export_a_sqlite_file_to_parquet(tmp_path, small_db, as_url):
    source = f"sqlite:///{small_db}" if as_url else str(small_db)
    proc = timmy("export", source, "out", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    for table in TABLES:
        assert f"out/{table}.parquet" in proc.stdout
    assert parquet_count(tmp_path / "out", "tasks") == 2
    assert parquet_count(tmp_path / "out", "agents") == 9


def test_export_to_csv(tmp_path, small_db):
    result = CliRunner().invoke(cli, ["export", str(small_db), str(tmp_path / "csv"),
                                      "--format", "csv"])
    assert result.exit_code == 0, result.output
    tasks = duckdb.sql(f"select description from read_csv_auto('{tmp_path}/csv/tasks.csv') "
                       "order by task_id").fetchall()
    assert tasks == [("fix the bug",), ("write the readme",)]
    assert sorted(p.name for p in (tmp_path / "csv").iterdir()) == \
        ["agents.csv", "bids.csv", "events.csv", "ledger.csv", "reputation.csv", "tasks.csv"]


# -- personas ---------------------------------------------------------------------------------


def test_personas_shows_the_nine_builtins():
    # rich reads COLUMNS (captured output is otherwise 120 wide, and keywords would wrap)
    result = CliRunner(env={"COLUMNS": "200"}).invoke(cli, ["personas"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "9 personas built in" in result.output
    for p in PERSONAS.values():
        assert p.id in result.output and p.role in result.output
    assert '"pull request"' in result.output and '"generate image"' in result.output
    assert "│  100 │" in result.output  # reel's rate


def test_personas_from_a_file(tmp_path):
    path = tmp_path / "camp.toml"
    path.write_text(PERSONA_TOML, encoding="utf-8")
    result = CliRunner().invoke(cli, ["personas", "--file", str(path)], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "2 personas from" in result.output
    assert "Trail Scout" in result.output and "dinner breakfast" in result.output
    assert "forge" not in result.output


def test_personas_shows_each_personas_strategy(tmp_path):
    result = CliRunner().invoke(cli, ["personas"], terminal_width=200)
    assert result.exit_code == 0, result.output
    header = next(line for line in result.output.splitlines() if "keywords" in line)
    assert "strategy" in header
    assert result.output.count("│ adaptive │") == len(PERSONAS)   # the default, shown
    path = tmp_path / "camp.toml"
    path.write_text(PERSONA_TOML.replace('role = "Camp Cook"',
                                         'role = "Camp Cook"\nstrategy = "shade:0.2"'))
    result = CliRunner().invoke(cli, ["personas", "--file", str(path)], terminal_width=200)
    assert result.exit_code == 0, result.output
    cook = next(line for line in result.output.splitlines() if "Camp Cook" in line)
    scout = next(line for line in result.output.splitlines() if "Trail Scout" in line)
    assert "shade:0.2" in cook and "adaptive" in scout


# -- bad input: one line, a hint, exit code 2 -------------------------------------------------


def test_bad_persona_file_names_the_field(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text(PERSONA_TOML.replace("bid_jitter = 5", "bid_jitter = 500", 1),
                    encoding="utf-8")
    assert_clean_error(timmy("personas", "--file", str(path), cwd=tmp_path),
                       "PersonaError", "bad.toml", "persona #1", "bid_jitter", "500")


def test_bad_persona_file_for_run(tmp_path, tasks_file):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps([{"id": "x", "role": "X"}]), encoding="utf-8")
    proc = timmy("run", str(tasks_file), "--personas", str(path), cwd=tmp_path)
    assert_clean_error(proc, "PersonaError", "bad.json")
    assert not (tmp_path / "data").exists()  # nothing was started or written


@pytest.mark.parametrize("args", [
    ["demo", "--tasks", "5", "--db", "nosuchdialect://x"],
    ["run", "TASKS", "--db", "nosuchdialect://x"],
    ["export", "nosuchdialect://x", "out"],
])
def test_bad_database_url(tmp_path, tasks_file, args):
    args = [str(tasks_file) if a == "TASKS" else a for a in args]
    assert_clean_error(timmy(*args, cwd=tmp_path), "StoreError", "nosuchdialect")


def test_missing_tasks_file(tmp_path):
    assert_clean_error(timmy("run", "nope.txt", cwd=tmp_path), "ConfigError", "nope.txt")


def test_tasks_file_with_only_comments(tmp_path):
    path = tmp_path / "empty.txt"
    path.write_text("# nothing yet\n\n", encoding="utf-8")
    assert_clean_error(timmy("run", str(path), cwd=tmp_path), "holds no tasks")


def test_export_of_a_missing_database_creates_nothing(tmp_path):
    assert_clean_error(timmy("export", "missing.db", "out", cwd=tmp_path),
                       "StoreError", "missing.db")
    assert not (tmp_path / "missing.db").exists()
    assert not (tmp_path / "out").exists()


def test_export_of_a_file_that_is_not_a_database(tmp_path):
    (tmp_path / "notes.db").write_text("just some notes, not sqlite\n" * 100)
    assert_clean_error(timmy("export", "notes.db", "out", cwd=tmp_path), "StoreError")
    assert (tmp_path / "notes.db").read_text().startswith("just some notes")


@pytest.mark.parametrize("mode", ["--sequential", "--concurrent"])
def test_a_workload_over_its_timeout_stops_with_a_hint(tmp_path, mode):
    proc = timmy("demo", "--tasks", "300", "--timeout", "0.05", mode, cwd=tmp_path)
    assert_clean_error(proc, "WaitTimeout", "of 300 tasks unfinished", "--timeout")


def test_a_group_of_timmy_errors_is_reported_like_one_and_other_groups_propagate():
    @click.group(cls=_TimmyGroup)
    def group() -> None:
        pass

    @group.command()
    @click.argument("kind")
    def boom(kind: str) -> None:
        other = PersonaError("second") if kind == "timmy" else ValueError("not ours")
        raise ExceptionGroup("spawn_all", [PersonaError("first", hint="fix it"), other])

    result = CliRunner().invoke(group, ["boom", "timmy"])
    assert result.exit_code == 2
    assert result.stderr.splitlines() == ["PersonaError: first", "hint: fix it"]
    result = CliRunner().invoke(group, ["boom", "mixed"])
    assert isinstance(result.exception, ExceptionGroup)


def test_bad_choice_is_a_usage_error():
    result = CliRunner().invoke(cli, ["demo", "--rule", "cheapest"])
    assert result.exit_code == 2
    assert "specialist_first" in result.output


# -- the helpers behind the commands ----------------------------------------------------------


def test_errors_print_one_line_and_a_hint(capsys):
    report_error(ConfigError("a task description is\nempty", hint="describe the work"))
    report_error(PersonaError("unknown persona 'x'"))
    assert capsys.readouterr().err.splitlines() == [
        "ConfigError: a task description is empty",
        "hint: describe the work",
        "PersonaError: unknown persona 'x'",
    ]


@pytest.mark.parametrize("value, url", [
    ("data/timmy.db", "sqlite:///data/timmy.db"),
    ("/abs/x.db", "sqlite:////abs/x.db"),
    ("sqlite:///y.db", "sqlite:///y.db"),
    ("postgresql+psycopg://u@h/db", "postgresql+psycopg://u@h/db"),
])
def test_db_url_turns_paths_into_sqlite_urls(value, url):
    assert db_url(value) == url


def test_persona_summary_counts_wins_completions_failed_attempts_and_prices():
    tasks = [
        Task(task_id=1, description="a", status="completed", assigned_agent="forge-1",
             price_sats=30, attempts=1),
        Task(task_id=2, description="b", status="completed", assigned_agent="quill-1",
             price_sats=50, attempts=2),
        Task(task_id=3, description="c", status="failed", assigned_agent="quill-1",
             price_sats=40, attempts=1),
    ]

    def bid(task_id, attempt, agent_id, sats, on_spec, won=True):
        return {"task_id": task_id, "attempt": attempt, "agent_id": agent_id, "sats": sats,
                "on_spec": on_spec, "won": won}

    bids = [bid(1, 1, "forge-1", 30, True), bid(1, 1, "quill-1", 60, False, won=False),
            bid(2, 1, "forge-1", 70, False), bid(2, 2, "quill-1", 50, True),
            bid(3, 1, "quill-1", 40, False), bid(99, 1, "forge-1", 1, True)]
    rows = {r["persona"]: r for r in persona_summary(
        tasks, bids, {"forge-1": "forge", "quill-1": "quill"}, ["forge", "quill", "echo"])}
    assert rows["forge"] == {"persona": "forge", "won": 2, "completed": 1, "failed": 1,
                             "earned": 30, "avg_price": 30.0, "on_spec": 0.5}
    assert rows["quill"] == {"persona": "quill", "won": 2, "completed": 1, "failed": 1,
                             "earned": 50, "avg_price": 50.0, "on_spec": 0.5}
    assert rows["echo"]["won"] == 0 and rows["echo"]["avg_price"] is None
