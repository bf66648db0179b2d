"""`timmy.analytics` answers its questions right, from an export or straight from a live store.

One real run for the module: a live swarm (nine personas plus a second forge,
``max_attempts=2``) works through 120 demo tasks and 20 tasks nobody
specialises in (off-spec work fails more often: some tasks are re-auctioned and
a few fail twice), one at a time so the run is the same every time, and
exports them. Every canned query is checked
against numbers computed here from the Parquet files with pandas and plain
Python (never the module's SQL), and must give the same table when it reads the
live SQLite file instead of the export.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import timmy
from timmy import analytics
from timmy.errors import ExportError, StoreError, TimmyError
from timmy.market.personas import PERSONAS, persona_from_dict
from timmy.sim.workloads import GENERIC, demo_descriptions
from timmy.storage.export import export_store
from timmy.storage.store import Store

TABLES = ("tasks", "bids", "agents", "events")


@dataclass
class Run:
    export: Path
    db: Path
    tasks: pd.DataFrame
    bids: pd.DataFrame
    agents: pd.DataFrame


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Run:
    """140 tasks through a live swarm, exported; the swarm stays up while tests read it."""
    tmp = tmp_path_factory.mktemp("analytics")
    with timmy.Swarm(f"sqlite:///{tmp}/x.db", seed=1, task_seconds=0, max_attempts=2) as swarm:
        swarm.spawn_all()
        swarm.spawn("forge")                      # two agents of one persona
        for description in demo_descriptions(120, 1) + list(GENERIC) * 3:
            swarm.run([description], timeout=30)  # one at a time: the same run every time
        swarm.export(tmp / "export")
        frames = {t: pq.read_table(tmp / "export" / f"{t}.parquet").to_pandas()
                  for t in ("tasks", "bids", "agents")}
        yield Run(tmp / "export", tmp / "x.db", **frames)


@pytest.fixture(scope="module")
def con(run):
    con = analytics.connect(run.export)
    yield con
    con.close()


def persona_of(run: Run) -> dict[str, str]:
    return dict(zip(run.agents.agent_id, run.agents.persona, strict=True))


def assert_frame(got: pd.DataFrame, expected: pd.DataFrame, key: str | list[str]) -> None:
    """Same columns in the same order, and the same rows (matched by ``key``)."""
    assert list(got.columns) == list(expected.columns)
    assert len(got) == len(expected)
    pd.testing.assert_frame_equal(
        got.set_index(key).sort_index(), expected.set_index(key).sort_index(),
        check_dtype=False, check_exact=False, rtol=1e-9)


# -- the run is the one the tests need ---------------------------------------------------


def test_the_run_has_re_auctions_failures_and_two_agents_of_one_persona(run):
    assert len(run.tasks) == 120 + 3 * len(GENERIC)
    assert (run.tasks.attempts > 1).sum() >= 3
    assert (run.tasks.status == "failed").sum() >= 1
    assert sorted(run.agents.agent_id[run.agents.persona == "forge"]) == ["forge-1", "forge-2"]


# -- connect -----------------------------------------------------------------------------


def test_connect_gives_the_four_tables_with_the_exported_rows(con, run):
    for table in TABLES:
        expected = pq.read_table(run.export / f"{table}.parquet")
        assert con.execute(f"SELECT count(*) FROM {table}").fetchone()[0] == expected.num_rows
        assert [r[0] for r in con.execute(f"DESCRIBE {table}").fetchall()] == \
            expected.schema.names


@pytest.mark.parametrize("name", sorted(analytics.REPORTS))
def test_every_query_gives_the_same_table_from_the_live_sqlite_file(run, con, name):
    live = analytics.connect(run.db)  # the swarm is still running on it
    try:
        pd.testing.assert_frame_equal(analytics.REPORTS[name](live),
                                      analytics.REPORTS[name](con))
    finally:
        live.close()


def test_a_sqlite_url_and_a_path_are_both_live_sources(run, con):
    expected = analytics.bids_per_auction(con)
    pd.testing.assert_frame_equal(analytics.bids_per_auction(f"sqlite:///{run.db}"), expected)
    pd.testing.assert_frame_equal(analytics.bids_per_auction(str(run.db)), expected)


def test_every_query_also_takes_a_source_instead_of_a_connection(run, con):
    pd.testing.assert_frame_equal(analytics.win_rate_by_persona(run.export),
                                  analytics.win_rate_by_persona(con))


def test_reports_lists_every_query_with_a_docstring_and_a_title():
    assert list(analytics.REPORTS) == [
        "win_rate_by_persona", "earnings_by_persona", "price_by_keyword", "price_by_spec",
        "latency_percentiles", "reauctions_and_failures", "bids_per_auction",
        "price_over_time", "balances", "reputation"]
    for name, query in analytics.REPORTS.items():
        assert query.__name__ == name and len(query.__doc__) > 100
        assert 10 < len(analytics.title(name)) < 90


# -- task_keywords ---------------------------------------------------------------------------


def keyword_pattern(keyword: str) -> re.Pattern:
    """A keyword as whole words: its words, separated by anything not a letter or digit."""
    body = r"[^a-z0-9]+".join(re.escape(w) for w in re.findall(r"[a-z0-9]+", keyword))
    return re.compile(rf"(?<![a-z0-9]){body}(?![a-z0-9])")


def test_task_keywords_lists_every_whole_word_keyword_of_every_task(con, run):
    expected = sorted(
        (t.task_id, k, p.id) for t in run.tasks.itertuples() for p in PERSONAS.values()
        for k in p.preferred_keywords if keyword_pattern(k).search(t.description.lower()))
    got = con.execute("SELECT task_id, keyword, persona FROM task_keywords "
                      "ORDER BY ALL").fetchall()
    assert got == expected


@pytest.fixture
def store_with(tmp_path):
    """A real (runner-less) store holding the given task descriptions; returns its path."""
    def make(descriptions) -> Path:
        path = tmp_path / "tasks.db"
        store = Store(f"sqlite:///{path}")
        if descriptions:
            store.insert_tasks(descriptions, created_at=1.7e9)
        store.dispose()
        return path
    return make


def test_keywords_match_on_word_boundaries_only(store_with):
    path = store_with(["be specific about the ci pipeline", "a specific request",
                       "open a pull request", "pull the request", "CI/CD, please"])
    con = analytics.connect(path)
    rows = con.execute("SELECT task_id, keyword, persona FROM task_keywords").fetchall()
    by_task = {i: sorted((k, p) for t, k, p in rows if t == i) for i in range(1, 6)}
    assert by_task == {
        1: [("ci", "helm"), ("pipeline", "helm")],       # "specific" holds no "ci"
        2: [],
        3: [("pull", "helm"), ("pull request", "forge")],
        4: [("pull", "helm")],                            # the phrase needs its words together
        5: [("cd", "helm"), ("ci", "helm")],
    }


def test_task_keywords_follow_the_catalog_given(store_with):
    chef = persona_from_dict({"id": "chef", "role": "Cook", "bid_base": 20, "bid_jitter": 5,
                              "preferred_keywords": ["dinner", "table"]})
    path = store_with(["book a table for dinner", "fix the bug"])
    con = analytics.connect(path, personas=[chef])
    assert con.execute("SELECT * FROM task_keywords ORDER BY keyword").fetchall() == \
        [(1, "dinner", "chef"), (1, "table", "chef")]
    assert analytics.connect(path, personas={"chef": chef}).execute(
        "SELECT count(*) FROM task_keywords").fetchone() == (2,)


def test_a_keyword_of_two_personas_counts_each_task_once(store_with):
    con = analytics.connect(store_with(["push the branch to git", "git blame the parser"]))
    git = analytics.price_by_keyword(con).set_index("keyword").loc["git"]
    assert (git.personas, git.tasks, git.completed) == ("forge, helm", 2, 0)


# -- each canned query against numbers computed here ---------------------------------------


def test_win_rate_by_persona(con, run):
    bids = run.bids.assign(persona=run.bids.agent_id.map(persona_of(run)))
    rows = []
    for persona, group in bids.groupby("persona"):
        entered, won = group.auction_id.nunique(), int(group.won.sum())
        rows.append((persona, entered, won, won / entered))
    expected = pd.DataFrame(rows, columns=["persona", "auctions_entered", "won", "win_rate"])
    got = analytics.win_rate_by_persona(con)
    assert_frame(got, expected, "persona")
    assert list(got.won) == sorted(got.won, reverse=True)
    forge = got.set_index("persona").loc["forge"]   # two agents, each auction counted once
    assert forge.auctions_entered == run.bids.auction_id.nunique()


def test_earnings_by_persona(con, run):
    done = run.tasks[run.tasks.status == "completed"]
    earned = Counter()
    completed = Counter()
    for t in done.itertuples():
        persona = persona_of(run)[t.assigned_agent]
        earned[persona] += t.price_sats
        completed[persona] += 1
    total = sum(earned.values())
    expected = pd.DataFrame(
        [(p, completed[p], earned[p], earned[p] / completed[p] if completed[p] else np.nan,
          earned[p] / total) for p in sorted(set(run.agents.persona))],
        columns=["persona", "completed", "sats_earned", "mean_price", "earnings_share"])
    got = analytics.earnings_by_persona(con)
    assert_frame(got, expected, "persona")
    assert list(got.sats_earned) == sorted(got.sats_earned, reverse=True)
    # The coordinator's own counters agree: agents.earned_sats, summed by persona.
    assert got.set_index("persona").sats_earned.to_dict() == \
        run.agents.groupby("persona").earned_sats.sum().to_dict()


def test_price_by_keyword(con, run):
    wins = run.bids[run.bids.won]
    owners: dict[str, set[str]] = {}
    tasks_of: dict[str, list] = {}
    for t in run.tasks.itertuples():
        found = {k for p in PERSONAS.values() for k in p.preferred_keywords
                 if keyword_pattern(k).search(t.description.lower())}
        for p in PERSONAS.values():
            for k in set(p.preferred_keywords) & found:
                owners.setdefault(k, set()).add(p.id)
        for k in found or {"(none)"}:
            tasks_of.setdefault(k, []).append(t)
    rows = []
    for keyword, tasks in tasks_of.items():
        prices = [t.price_sats for t in tasks if t.status == "completed"]
        won = wins[wins.task_id.isin([t.task_id for t in tasks])]
        rows.append((keyword, ", ".join(sorted(owners.get(keyword, ()))), len(tasks),
                     len(prices), np.mean(prices) if prices else np.nan,
                     np.median(prices) if prices else np.nan,
                     won.on_spec.mean() if len(won) else np.nan))
    expected = pd.DataFrame(rows, columns=["keyword", "personas", "tasks", "completed",
                                           "mean_price", "median_price", "on_spec_share"])
    got = analytics.price_by_keyword(con)
    assert_frame(got, expected, "keyword")
    assert got.keyword.iloc[-1] == "(none)"
    assert list(got.tasks[:-1]) == sorted(got.tasks[:-1], reverse=True)
    assert got.set_index("keyword").loc["(none)"].on_spec_share == 0.0  # nobody's speciality


def test_price_by_spec(con, run):
    tasks = run.tasks.set_index("task_id")
    wins = run.bids[run.bids.won]
    last = wins.groupby("task_id").auction_id.max()
    rows = []
    for on_spec in (True, False):
        group = wins[wins.on_spec == on_spec]
        status = group.task_id.map(tasks.status)
        is_last = group.auction_id.values == group.task_id.map(last).values
        succeeded = is_last & (status == "completed").values
        decided = ~is_last | status.isin(["completed", "failed"]).values
        paid = group.task_id[succeeded].map(tasks.price_sats)
        rows.append(("on-spec" if on_spec else "off-spec", len(group), group.sats.mean(),
                     int(succeeded.sum()), paid.mean(), paid.median(),
                     succeeded.sum() / decided.sum()))
    expected = pd.DataFrame(rows, columns=["spec", "wins", "mean_bid", "completed",
                                           "mean_price", "median_price", "success_rate"])
    got = analytics.price_by_spec(con)
    assert_frame(got, expected, "spec")
    assert list(got.spec) == ["on-spec", "off-spec"]
    assert got.completed.sum() == (run.tasks.status == "completed").sum()
    assert got.wins.sum() == run.bids[run.bids.won].auction_id.nunique()


def test_latency_percentiles(con, run):
    done = run.tasks[run.tasks.status == "completed"]
    stages = {"post -> assign": done.assigned_at - done.created_at,
              "assign -> complete": done.completed_at - done.assigned_at,
              "post -> complete": done.completed_at - done.created_at}
    expected = pd.DataFrame(
        [(stage, len(s), *np.percentile(s * 1000, [50, 90, 99]), (s * 1000).max())
         for stage, s in stages.items()],
        columns=["stage", "tasks", "p50_ms", "p90_ms", "p99_ms", "max_ms"])
    got = analytics.latency_percentiles(con)
    assert list(got.stage) == list(stages)
    assert_frame(got, expected, "stage")


def reason_group(reason) -> str:
    if reason is None:
        return "(no reason)"
    return re.sub(r"\d+", "N", re.sub(r"\b[a-z][a-z0-9_]*-\d+\b", "<agent>", reason))


def test_reauctions_and_failures(con, run):
    tasks = run.tasks
    auctions = tasks.task_id.map(run.bids.groupby("task_id").auction_id.nunique()).fillna(0)
    n = len(tasks)
    rows = [("attempts", str(k), v) for k, v in sorted(Counter(tasks.attempts).items())]
    rows += [("auctions", str(int(k)), v) for k, v in sorted(Counter(auctions).items())]
    rows += [("re-auctioned", "more than one auction", int((auctions > 1).sum()))]
    rows += [("status", k, v) for k, v in
             sorted(Counter(tasks.status).items(), key=lambda kv: (-kv[1], kv[0]))]
    failed = Counter(reason_group(r) for r in tasks.reason[tasks.status == "failed"])
    rows += [("failure", k, v) for k, v in sorted(failed.items(), key=lambda kv: (-kv[1], kv[0]))]
    expected = pd.DataFrame([(*r, r[2] / n) for r in rows],
                            columns=["what", "value", "tasks", "share"])
    got = analytics.reauctions_and_failures(con)
    pd.testing.assert_frame_equal(got, expected, check_dtype=False)
    assert failed and all("<agent>" in k and "gave up after N attempts" in k for k in failed)


def test_bids_per_auction(con, run):
    sizes = Counter(run.bids.groupby("auction_id").size())
    total = sum(sizes.values())
    expected = pd.DataFrame([(k, v, v / total) for k, v in sorted(sizes.items())],
                            columns=["bids", "auctions", "share"])
    got = analytics.bids_per_auction(con)
    pd.testing.assert_frame_equal(got, expected, check_dtype=False)
    assert 10 in set(got.bids)   # ten runners were up for almost every auction


@pytest.mark.parametrize("buckets, window", [(50, 5), (7, 3), (1, 1), (2000, 40)])
def test_price_over_time(con, run, buckets, window):
    done = run.tasks[run.tasks.status == "completed"]
    t0, width = done.completed_at.min(), done.completed_at.max() - done.completed_at.min()
    index = np.minimum(np.floor((done.completed_at - t0) / width * buckets), buckets - 1)
    groups = done.price_sats.groupby(index.astype(int))
    count, total = groups.size(), groups.sum()
    rows = []
    for b in count.index:
        near = [i for i in count.index if b - window < i <= b]
        rows.append((b, b * width / buckets, count[b], total[b] / count[b],
                     total[near].sum() / count[near].sum()))
    expected = pd.DataFrame(rows, columns=["bucket", "start_s", "tasks", "mean_price",
                                           "moving_avg"])
    got = analytics.price_over_time(con, buckets=buckets, window=window)
    pd.testing.assert_frame_equal(got, expected, check_dtype=False)
    assert got.tasks.sum() == len(done)
    if buckets == 2000:  # empty buckets are skipped, and the window counts them all the same
        assert len(got) < buckets and (got.bucket.diff().dropna() > 1).any()


def test_price_over_time_refuses_an_empty_bucket_count(con):
    with pytest.raises(TimmyError, match="buckets >= 1") as info:
        analytics.price_over_time(con, buckets=0)
    assert info.value.hint


def test_an_empty_store_gives_every_table_its_columns(store_with, con, tmp_path):
    path = store_with([])
    export_store(Store(f"sqlite:///{path}", create=False), tmp_path / "empty")
    for source in (path, tmp_path / "empty"):
        empty = analytics.connect(source)
        for name, query in analytics.REPORTS.items():
            got = query(empty)
            assert list(got.columns) == list(query(con).columns), name
        assert list(analytics.latency_percentiles(empty).tasks) == [0, 0, 0]


# -- bad input ---------------------------------------------------------------------------


def write_tables(directory: Path, run: Run, tables=TABLES) -> None:
    directory.mkdir(exist_ok=True)
    for t in tables:
        (directory / f"{t}.parquet").write_bytes((run.export / f"{t}.parquet").read_bytes())


@pytest.mark.parametrize("present, missing", [((), "tasks.parquet"),
                                              (("tasks", "agents"), "bids.parquet"),
                                              (("tasks", "bids", "agents"), "events.parquet")])
def test_a_directory_that_is_not_an_export_names_the_missing_file(tmp_path, run, present,
                                                                  missing):
    write_tables(tmp_path / "half", run, present)
    with pytest.raises(ExportError) as info:
        analytics.connect(tmp_path / "half")
    assert str(tmp_path / "half") in info.value.message and missing in info.value.message
    assert "timmy export" in info.value.hint and "swarm.export" in info.value.hint
    assert isinstance(info.value, TimmyError)


def test_a_csv_export_is_told_to_export_parquet(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    export_store(store, tmp_path / "csv", fmt="csv")
    with pytest.raises(ExportError, match=r"no tasks\.parquet") as info:
        analytics.connect(tmp_path / "csv")
    assert "--format csv" in info.value.hint


def test_a_corrupt_or_foreign_table_file_is_named(tmp_path, run):
    write_tables(tmp_path / "bad", run)
    (tmp_path / "bad" / "bids.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(ExportError, match=r"bids\.parquet is not a readable Parquet file"):
        analytics.connect(tmp_path / "bad")
    pq.write_table(pa.table({"task_id": [1]}), tmp_path / "bad" / "bids.parquet")
    with pytest.raises(ExportError, match=r"bids\.parquet has no column 'bid_id'") as info:
        analytics.connect(tmp_path / "bad")
    assert info.value.hint


def test_paths_that_are_neither_an_export_nor_a_database(tmp_path, run):
    with pytest.raises(ExportError, match="no export directory or database at"):
        analytics.connect(tmp_path / "nowhere")
    with pytest.raises(ExportError, match="one table of an export") as info:
        analytics.connect(run.export / "bids.parquet")
    assert str(run.export) in info.value.hint
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    with pytest.raises(ExportError, match="neither an export directory nor a SQLite database"):
        analytics.connect(notes)


def test_a_missing_sqlite_url_is_refused_and_no_file_is_created(tmp_path):
    with pytest.raises(StoreError, match="no database file") as info:
        analytics.connect(f"sqlite:///{tmp_path / 'missing.db'}")
    assert info.value.hint
    assert list(tmp_path.iterdir()) == []


def test_a_sqlite_database_that_is_not_timmys_is_a_store_error(tmp_path):
    import sqlite3

    with sqlite3.connect(tmp_path / "other.db") as db:
        db.execute("CREATE TABLE t (x)")
    with pytest.raises(StoreError, match="not a timmy database"):
        analytics.connect(tmp_path / "other.db")


# -- timmy report ----------------------------------------------------------------------------


def timmy_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "timmy", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=60, env={**os.environ, "COLUMNS": "160"})


@pytest.mark.parametrize("how", ["dir", "sqlite file", "--db"])
def test_timmy_report_prints_every_table(run, tmp_path, how):
    args = {"dir": [str(run.export)], "sqlite file": [str(run.db)],
            "--db": ["--db", f"sqlite:///{run.db}"]}[how]
    proc = timmy_cli("report", "--all", *args, cwd=tmp_path)   # the summary without --all
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert f"{len(run.tasks)} tasks" in out and f"{len(run.bids):,} bids" in out
    for name in analytics.REPORTS:
        assert analytics.title(name) in out
    assert "forge" in out and "post -> assign" in out and "%" in out
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("args, needle", [(["nowhere"], "no export directory or database"),
                                          (["."], "has no tasks.parquet"),
                                          ([], "nothing to report on")])
def test_timmy_report_on_a_bad_directory_exits_2_with_a_hint(tmp_path, args, needle):
    proc = timmy_cli("report", *args, cwd=tmp_path)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert needle in lines[-2] and lines[-1].startswith("hint: ")


# -- the simulator's runs ----------------------------------------------------------------------


def test_a_simulated_run_is_analysed_directly_or_from_its_export(tmp_path):
    from timmy.sim.simulator import simulate

    sim = simulate(demo_descriptions(150, 2), seed=2)
    sim.export(tmp_path / "sim")
    direct, exported = analytics.connect(sim), analytics.connect(tmp_path / "sim")
    for name, query in analytics.REPORTS.items():
        pd.testing.assert_frame_equal(query(direct), query(exported), obj=name)
    assert analytics.earnings_by_persona(direct).completed.sum() == \
        (sim.tasks.status == "completed").sum()


def test_something_that_is_not_a_source_is_refused():
    with pytest.raises(TimmyError, match="cannot analyse a int") as info:
        analytics.connect(42)
    assert "SimRun" in info.value.hint
