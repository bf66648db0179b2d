"""Paths are literal and every error is one line and a hint (exit 2): an export directory
named with glob characters or a quote (``run[1]`` is not ``run1``), a Parquet column of the
wrong type, a database file with ``?``, ``#`` or ``%`` in its name, a persona too big to hand
to its runner process. Real subprocesses, real files."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import duckdb
import pytest
from test_cli import assert_clean_error, timmy

import timmy as timmy_pkg
from timmy import analytics
from timmy.errors import PersonaError
from timmy.market.personas import MAX_PERSONA_BYTES, persona_from_dict
from timmy.storage.address import db_url, sqlite_file


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> Path:
    """Two exports of different swarms: ``plain`` (3 tasks) and ``other`` (5 tasks)."""
    root = tmp_path_factory.mktemp("exports")
    for name, n in (("plain", 3), ("other", 5)):
        (root / f"{name}.txt").write_text("".join(f"fix bug {i}\n" for i in range(n)))
        proc = timmy("run", f"{name}.txt", "--db", f"{name}.db", "--task-seconds", "0",
                     cwd=root)
        assert proc.returncode == 0, proc.stderr
        proc = timmy("export", f"{name}.db", name, cwd=root)
        assert proc.returncode == 0, proc.stderr
    return root


def tasks_in(source) -> int:
    con = analytics.connect(source)
    try:
        return con.execute("SELECT count(*) FROM tasks").fetchone()[0]
    finally:
        con.close()


@pytest.mark.parametrize("decoy, literal", [
    ("run1", "run[1]"), ("runx", "run?"), ("run-all", "run*"), ("runa", "run[ab]"),
    ("x", "it's"), ("x", "a'b[1]*?"),
], ids=["brackets", "question", "star", "class", "quote", "all"])
def test_an_export_directory_is_read_by_its_literal_name(exports, tmp_path, decoy, literal):
    """The directory named with glob characters is read, not another that the glob matches."""
    shutil.copytree(exports / "other", tmp_path / decoy)      # 5 tasks: what a glob finds
    shutil.copytree(exports / "plain", tmp_path / literal)    # 3 tasks: what was asked for
    assert tasks_in(tmp_path / literal) == 3
    assert tasks_in(str(tmp_path / literal)) == 3
    proc = timmy("report", literal, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert ": 3 tasks," in proc.stdout


def test_a_glob_pattern_matching_nothing_else_is_still_one_directory(exports, tmp_path):
    shutil.copytree(exports / "plain", tmp_path / "a[1]")
    assert tasks_in(tmp_path / "a[1]") == 3                  # no "a1" exists: still literal


def test_a_parquet_column_of_the_wrong_type_is_one_line_and_a_hint(exports, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(exports / "plain", bad)
    path = (bad / "tasks.parquet").as_posix().replace("'", "''")
    with duckdb.connect() as con:    # price_sats as text: a foreign or hand-edited table
        con.execute(f"CREATE TABLE t AS SELECT * REPLACE (CAST(price_sats AS VARCHAR) || 'x' "
                    f"AS price_sats, 'never' AS created_at) FROM read_parquet('{path}')")
        con.execute(f"COPY t TO '{path}' (FORMAT parquet)")
    proc = timmy("report", "bad", cwd=tmp_path)
    assert_clean_error(proc, "tasks.parquet", "price_sats")
    assert "export it again" in proc.stderr


@pytest.mark.parametrize("name", ["x?y.db", "a#b.db", "50%.db", "x%3Fy.db", "q?a=1#f.db"])
def test_a_database_named_with_url_characters_is_that_file(tmp_path, name):
    (tmp_path / "t.txt").write_text("fix the bug\n")
    proc = timmy("run", "t.txt", "--db", name, "--task-seconds", "0", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".db") == [name]
    with sqlite3.connect(tmp_path / name) as conn:
        assert conn.execute("SELECT count(*) FROM tasks").fetchone() == (1,)
    assert sqlite_file(db_url(str(tmp_path / name))) == tmp_path / name
    proc = timmy("export", name, "out", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    for source in (name, "out"):
        proc = timmy("report", source, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert ": 1 tasks," in proc.stdout
    proc = timmy("report", "--db", name, cwd=tmp_path)
    assert proc.returncode == 0 and ": 1 tasks," in proc.stdout, proc.stderr


def test_db_url_leaves_urls_alone_and_quotes_only_what_a_url_would_eat():
    assert db_url("sqlite:///x.db") == "sqlite:///x.db"
    assert db_url("data/timmy.db") == "sqlite:///data/timmy.db"
    assert db_url("x?y.db") == "sqlite:///x%3Fy.db"
    assert sqlite_file(db_url("a#b%c?d.db")) == Path("a#b%c?d.db")


def big_persona(description_bytes: int) -> dict:
    return {"id": "verbose", "role": "Talker", "bid_base": 20, "bid_jitter": 3,
            "preferred_keywords": ["talk"], "description": "x" * description_bytes}


def test_a_persona_too_big_for_a_command_line_is_refused_up_front(tmp_path):
    (tmp_path / "p.json").write_text(json.dumps([big_persona(300_000)]))
    (tmp_path / "t.txt").write_text("talk to me\n")
    for args in (("personas", "--file", "p.json"),
                 ("run", "t.txt", "--db", "t.db", "--personas", "p.json")):
        proc = timmy(*args, cwd=tmp_path)
        assert_clean_error(proc, "PersonaError", f"{MAX_PERSONA_BYTES:,}-byte",
                           "description")
    assert not (tmp_path / "t.db").exists()                  # refused before anything ran
    with pytest.raises(PersonaError, match="byte limit"):
        persona_from_dict(big_persona(300_000))
    ok = persona_from_dict(big_persona(MAX_PERSONA_BYTES - 1000))
    with timmy_pkg.Swarm(tmp_path / "ok.db", personas={"verbose": ok},
                         task_seconds=0) as swarm:           # the biggest allowed one runs
        swarm.spawn("verbose")
        assert swarm.run(["talk to me"], timeout=30)[0].status == "completed"


def test_a_database_value_of_the_wrong_type_is_one_line_and_a_hint(tmp_path):
    """SQLite keeps whatever is written into a column; report and export say which."""
    (tmp_path / "t.txt").write_text("fix the bug\n")
    proc = timmy("run", "t.txt", "--db", "w.db", "--task-seconds", "0", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    with sqlite3.connect(tmp_path / "w.db") as conn:
        conn.execute("UPDATE tasks SET price_sats = 'abc'")
    for args in (("report", "w.db"), ("report", "--db", "w.db"), ("export", "w.db", "out")):
        proc = timmy(*args, cwd=tmp_path)
        assert_clean_error(proc, "ExportError", "'price_sats'", "tasks")
    assert not list((tmp_path / "out").glob("*.tmp"))
