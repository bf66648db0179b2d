"""Clearing mechanisms as plugins: the registry, the built-ins, live/simulated parity for each
(and for a user-registered one), mechanisms that raise or lie, and ``timmy serve --plugin``."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_service import ServiceProcess

import timmy
from timmy.cli.app import cli
from timmy.errors import ConfigError
from timmy.market import mechanisms as mech
from timmy.market.auction import RULES, Auction, Bid, check_rule, clear
from timmy.market.lifecycle import Action
from timmy.sim.replays import replay
from timmy.sim.simulator import COMPILED_RULES, simulate
from timmy.sim.sweeps import check_grid
from timmy.sim.workloads import demo_descriptions

BUILTINS = ("first_price", "reputation", "score", "score:w_price=0.9,w_quality=0.1")


def priciest(bids, ctx):
    """A user mechanism: the highest bid wins (ties: the higher agent_id), paid its bid."""
    best = bids[-1]
    return mech.Award(best.agent_id, best.sats, f"highest bid under {ctx.rule}")


def flaky(bids, ctx):
    """Raises on every third task, lies (a non-bidder) on every fifth, else priciest."""
    if ctx.task_id % 3 == 0:
        raise ValueError(f"no clearing for task {ctx.task_id}")
    if ctx.task_id % 5 == 0:
        return "nobody-1", 10, "made up"
    return priciest(bids, ctx)


@pytest.fixture(autouse=True)
def registered():
    timmy.register_mechanism("priciest", priciest)
    timmy.register_mechanism("flaky", flaky)
    yield
    mech.unregister_mechanism("priciest")
    mech.unregister_mechanism("flaky")


# -- the registry ---------------------------------------------------------------
def test_an_unknown_rule_names_every_registered_mechanism():
    with pytest.raises(ConfigError) as info:
        check_rule("vickrey")
    assert "'vickrey'" in info.value.message
    for name in (*RULES, "first_price", "reputation", "score", "priciest", "flaky"):
        assert name in info.value.hint
    with pytest.raises(ConfigError):
        timmy.Swarm("sqlite://", rule="vickrey")
    with pytest.raises(ConfigError):
        simulate(["fix the bug"], rule="vickrey")


def test_registry_refuses_bad_names_builtins_non_callables_and_unknown_parameters():
    for bad in ("", "has space", "a:b", 3):
        with pytest.raises(ConfigError) as info:
            timmy.register_mechanism(bad, priciest)
        assert info.value.hint
    with pytest.raises(ConfigError, match="built-in"):
        timmy.register_mechanism("lowest", priciest)
    with pytest.raises(ConfigError, match="not callable"):
        timmy.register_mechanism("x", 42)
    with pytest.raises(ConfigError) as info:
        check_rule("score:w_cost=1")
    assert "w_cost" in info.value.message and "w_price" in info.value.hint
    with pytest.raises(ConfigError):
        check_rule("lowest:x=1")
    with pytest.raises(ConfigError):
        check_rule("score:w_price")
    with pytest.raises(ConfigError):
        check_rule("score:w_price=high")
    assert check_rule("score:w_price=0.7, w_quality=0.3") == "score:w_price=0.7, w_quality=0.3"
    assert check_rule("priciest:anything=goes") == "priciest:anything=goes"
    assert mech.split_rule("priciest:k=v,n=2") == ("priciest", {"k": "v", "n": 2.0})
    # RULES keeps meaning today's three; the names a swarm accepts are a live view
    assert set(RULES) == {"specialist_first", "lowest", "second_price"}
    assert mech.mechanism_names()[:6] == (*RULES, "first_price", "reputation", "score")
    assert {"priciest", "flaky"} <= set(mech.mechanism_names())
    mech.unregister_mechanism("priciest")
    assert "priciest" not in mech.mechanism_names()
    with pytest.raises(ConfigError):
        check_rule("priciest")


def test_registering_a_name_again_replaces_it():
    timmy.register_mechanism("priciest", lambda bids, ctx: (bids[0].agent_id, 1, "cheapest"))
    got = clear(1, [Bid("a", 10), Bid("b", 20)], "priciest")
    assert (got.winner, got.price_sats, got.reason) == ("a", 1, "cheapest")


# -- the built-ins on hand-made bids ---------------------------------------------------
BIDS = [Bid("forge-1", 30, on_spec=True), Bid("quill-1", 20), Bid("sage-1", 20),
        Bid("atlas-1", 45, on_spec=True)]


def test_first_price_is_lowest_by_another_name_ties_to_the_lower_agent_id():
    for bids in (BIDS, BIDS[::-1]):
        a, b = clear(1, bids, "lowest"), clear(1, bids, "first_price")
        assert (a.winner, a.price_sats) == (b.winner, b.price_sats) == ("quill-1", 20)
        assert b.rule == "first_price" and "first_price" in b.reason and b.error is None


def test_reputation_divides_the_price_by_the_reliability():
    assert clear(1, BIDS, "reputation").winner == "quill-1"   # everyone 1.0: the lowest
    rel = {"quill-1": 0.5, "sage-1": 0.4, "forge-1": 1.0}
    got = clear(1, BIDS, "reputation", reputation=rel)
    assert (got.winner, got.price_sats) == ("forge-1", 30)    # 30/1.0 < 20/0.5 < 20/0.4
    assert "30/1.00" in got.reason
    # equal price/reliability: the lower bid, then the lower agent_id
    tie = clear(1, [Bid("b", 20), Bid("a", 20), Bid("c", 10)], "reputation",
                reputation={"c": 0.5})
    assert tie.winner == "c"
    assert clear(1, [Bid("b", 20), Bid("a", 20)], "reputation").winner == "a"
    # a bidder of reliability 0 never beats one with any
    assert clear(1, [Bid("a", 1), Bid("b", 90)], "reputation", reputation={"a": 0}).winner == "b"


def test_score_weighs_price_against_expected_quality():
    # quality dominates: the cheapest on-spec bid (0.95 vs 0.6) wins
    q = clear(1, BIDS, "score:w_price=0.1,w_quality=0.9")
    assert (q.winner, q.price_sats) == ("forge-1", 30) and "quality 0.95" in q.reason
    # price dominates: the cheapest bid, ties to the lower agent_id
    p = clear(1, BIDS, "score:w_price=0.9,w_quality=0.1")
    assert (p.winner, p.price_sats) == ("quill-1", 20)
    # reliability lowers expected quality
    r = clear(1, BIDS, "score:w_price=0.1,w_quality=0.9", reputation={"forge-1": 0.5})
    assert r.winner == "atlas-1"
    ctx = mech.Context(1, rule="score", reputation={"x": 0.5})
    assert mech.expected_quality(Bid("x", 5, True), ctx) == pytest.approx(0.475)


def test_a_user_mechanism_sees_sorted_bids_the_task_and_the_reputation():
    seen = {}

    def spy(bids, ctx):
        seen.update(bids=bids, ctx=ctx)
        return bids[0].agent_id, bids[0].sats, "first"

    timmy.register_mechanism("spy", spy)
    try:
        auction = Auction(task_id=7, eligible={"b", "a", "c"}, rule="spy:k=2",
                          description="fix the bug")
        for bid in (Bid("b", 5), Bid("a", 5), Bid("c", 1)):
            auction.submit(bid)
        got = auction.close(unavailable=["c"], reputation={"a": 0.25})
    finally:
        mech.unregister_mechanism("spy")
    assert [b.agent_id for b in seen["bids"]] == ["a", "b"]
    ctx = seen["ctx"]
    assert (ctx.task_id, ctx.description, ctx.rule, dict(ctx.params)) == (
        7, "fix the bug", "spy:k=2", {"k": 2.0})
    assert dict(ctx.reputation) == {"a": 0.25, "b": 1.0}
    assert (got.winner, got.price_sats, got.reason, got.rule) == ("a", 5, "first", "spy:k=2")


@pytest.mark.parametrize("answer, says", [
    (ValueError("boom"), "raised ValueError: boom"),
    (("nobody", 5, "x"), "which did not bid"),
    ((None, None, "x"), "awarded none"),
    (("a", -1, "x"), "not a whole number"),
    (("a", 2.5, "x"), "not a whole number"),
    (("a", True, "x"), "not a whole number"),
    ("a", "not an Award"),
])
def test_a_mechanism_that_raises_or_lies_assigns_nothing(answer, says):
    def bad(bids, ctx):
        if isinstance(answer, Exception):
            raise answer
        return answer

    timmy.register_mechanism("bad", bad)
    try:
        got = clear(3, [Bid("a", 5), Bid("b", 6)], "bad")
    finally:
        mech.unregister_mechanism("bad")
    assert got.winner is None and got.price_sats is None
    assert says in got.error and says in got.reason
    decision = mech.after_mechanism_failure(1, 3, "bad", got.error)
    assert decision.action == Action.REQUEUE and decision.attempts == 1
    assert decision.reason == f"mechanism 'bad' failed: {got.error}"
    last = mech.after_mechanism_failure(3, 3, "bad", got.error)
    assert last.action == Action.FAIL and last.reason.endswith("gave up after 3 attempts")


def test_a_clearing_returned_by_a_mechanism_is_read_as_an_award():
    timmy.register_mechanism("old", lambda bids, ctx: timmy.Clearing(
        ctx.task_id, "old", bids[1].agent_id, 9, tuple(bids), "second"))
    try:
        got = clear(3, [Bid("a", 5), Bid("b", 6)], "old")
    finally:
        mech.unregister_mechanism("old")
    assert (got.winner, got.price_sats, got.reason) == ("b", 9, "second")


# -- parity: live vs simulated ----------------------------------------------------------
def live_run(tmp_path, descriptions, **kwargs):
    """A fresh live swarm, every persona spawned (real runners), one task at a time."""
    with timmy.Swarm(f"sqlite:///{tmp_path / 'live.db'}", **kwargs) as swarm:
        swarm.spawn_all()
        tasks = [swarm.wait(swarm.post(d).task_id, timeout=20) for d in descriptions]
        return tasks, list(swarm.iter_bids()), list(swarm.iter_events())


def nan_none(v):
    return None if v != v else v


def assert_same(live, live_bids, run):
    sim = list(run.tasks.itertuples())
    assert [(t.task_id, t.status, t.assigned_agent, t.price_sats, t.attempts) for t in live] \
        == [(t.task_id, t.status, nan_none(t.assigned_agent), nan_none(t.price_sats),
             t.attempts) for t in sim]
    assert [t.reason for t in live] == [None if r != r else r for r in run.tasks.reason]
    assert sorted((b["task_id"], b["attempt"], b["agent_id"], b["sats"], b["on_spec"], b["won"],
                   b["rule"]) for b in live_bids) == sorted(
        zip(run.bids.task_id, run.bids.attempt, run.bids.agent_id, run.bids.sats,
            run.bids.on_spec, run.bids.won, run.bids.rule, strict=True))


@pytest.mark.parametrize("rule", [*BUILTINS, "priciest"])
@pytest.mark.timeout(90)
def test_live_and_simulated_pick_the_same_winner_at_the_same_price(tmp_path, rule):
    descriptions = demo_descriptions(40, seed=11)
    live, live_bids, _ = live_run(tmp_path, descriptions, seed=5, rule=rule, task_seconds=0)
    engines = ["python", "compiled"] if rule in COMPILED_RULES else ["python", "auto"]
    runs = [simulate(descriptions, seed=5, rule=rule, task_seconds=0, engine=e)
            for e in engines]
    for run in runs:
        assert_same(live, live_bids, run)
    assert any(t.status == "completed" for t in live)
    if rule == "priciest":   # the user's mechanism did clear: the priciest bid won
        by_auction: dict = {}
        for b in live_bids:
            by_auction.setdefault((b["task_id"], b["attempt"]), []).append(b)
        for bids in by_auction.values():
            won = [b for b in bids if b["won"]]
            assert won and won[0]["sats"] == max(b["sats"] for b in bids)


def test_the_compiled_engine_clears_first_price_as_the_python_engine_does():
    import pandas as pd

    work = demo_descriptions(600, seed=3)
    kwargs = dict(seed=4, rule="first_price", task_seconds=0.01, max_attempts=2)
    a, b = simulate(work, engine="python", **kwargs), simulate(work, engine="compiled", **kwargs)
    for name in ("tasks", "bids", "agents", "events"):
        pd.testing.assert_frame_equal(a.table(name).to_pandas(), b.table(name).to_pandas(),
                                      check_exact=False, rtol=1e-12, obj=name)


def test_the_compiled_engine_refuses_other_mechanisms_and_auto_runs_them_in_python():
    from timmy.sim.compiled import RULE_CODES

    assert set(RULE_CODES) == COMPILED_RULES
    for rule in ("reputation", "score", "priciest"):
        with pytest.raises(ConfigError) as info:
            simulate(["fix the bug"], rule=rule, engine="compiled")
        assert rule in info.value.message and 'engine="python"' in info.value.hint
        auto = simulate(demo_descriptions(30, seed=1), rule=rule, engine="auto")
        python = simulate(demo_descriptions(30, seed=1), rule=rule, engine="python")
        assert auto.tasks.equals(python.tasks) and (auto.bids.rule == rule).all()


@pytest.mark.timeout(90)
def test_a_failing_mechanism_requeues_live_and_simulated_alike(tmp_path):
    descriptions = demo_descriptions(16, seed=2)
    live, live_bids, events = live_run(tmp_path, descriptions, seed=3, rule="flaky",
                                       task_seconds=0, max_attempts=3)
    run = simulate(descriptions, seed=3, rule="flaky", task_seconds=0, max_attempts=3,
                   engine="auto")
    assert_same(live, live_bids, run)
    # task 3 raised on every attempt: failed after 3, with the reason; task 5 was lied about
    t3, t5, t4 = live[2], live[4], live[3]
    assert t3.status == "failed" and t3.attempts == 3
    assert t3.reason == ("mechanism 'flaky' failed: raised ValueError: no clearing for task 3; "
                         "gave up after 3 attempts")
    assert t5.status == "failed" and "chose 'nobody-1', which did not bid" in t5.reason
    assert t4.status in ("completed", "failed") and "mechanism" not in (t4.reason or "")
    failed = [e for e in events if e.kind == "mechanism_failed"]
    bad = {t for t in range(1, 17) if t % 3 == 0 or t % 5 == 0}
    assert len(failed) == 3 * len(bad) == int((run.events.kind == "mechanism_failed").sum())
    assert {e.task_id for e in failed} == bad
    assert all(live[t - 1].status == "failed" for t in bad)
    first = next(e for e in failed if e.task_id == 3)
    assert first.data["rule"] == "flaky" and "ValueError" in first.data["error"]
    requeued = [e for e in events if e.kind == "task_requeued" and e.task_id == 3]
    assert len(requeued) == 2 and "mechanism 'flaky' failed" in requeued[0].data["reason"]
    # the swarm kept running: the other tasks were cleared
    assert all(live[t - 1].assigned_agent for t in set(range(1, 17)) - bad)


def test_a_failing_mechanism_keeps_a_concurrent_swarm_running(make_swarm, eventually):
    swarm = make_swarm(rule="flaky", max_attempts=2)
    swarm.spawn_all()
    tasks = swarm.run(demo_descriptions(30, seed=4), timeout=60)
    assert all(t.status in ("completed", "failed") for t in tasks)
    by_id = {t.task_id: t for t in tasks}
    assert by_id[3].status == "failed" and "mechanism 'flaky' failed" in by_id[3].reason
    assert any(t.status == "completed" for t in tasks)
    assert swarm.status()["rule"] == "flaky"
    assert swarm.post("fix the bug").task_id == 31   # still taking work


# -- replay, sweeps, CLI ----------------------------------------------------------------
def test_replay_and_sweeps_take_any_registered_name():
    run = simulate(demo_descriptions(30, seed=1), seed=1, rule="lowest")
    again = replay(run, "priciest")
    assert (again.price >= again.actual_price).all() and again.changed.any()
    assert again.error.isna().all()
    flaky_again = replay(run, "flaky")
    assert flaky_again.winner.isna().any() and flaky_again.error.notna().any()
    grid = check_grid({"rule": ["priciest", "score:w_price=0.8"], "seed": [1]})
    assert grid["rule"] == ["priciest", "score:w_price=0.8"]
    with pytest.raises(ConfigError) as info:
        check_grid({"rule": ["vickrey"]})
    assert "vickrey" in info.value.message and "priciest" in info.value.hint


def write_plugin(tmp_path: Path, name: str = "myplugin", body: str | None = None) -> Path:
    body = body or textwrap.dedent("""
        import timmy

        def priciest(bids, ctx):
            best = bids[-1]
            return timmy.Award(best.agent_id, best.sats, "highest bid (plugin)")

        timmy.register_mechanism("plugged", priciest)
    """)
    (tmp_path / f"{name}.py").write_text(body)
    return tmp_path


def test_cli_rule_takes_registered_names_and_refuses_unknown_ones(tmp_path, monkeypatch):
    write_plugin(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    runner = CliRunner()
    out = runner.invoke(cli, ["simulate", "--tasks", "50", "--rule", "vickrey"])
    assert out.exit_code == 2 and "unknown clearing rule 'vickrey'" in out.output
    assert "score" in out.output
    out = runner.invoke(cli, ["simulate", "--tasks", "50", "--rule", "plugged",
                              "--plugin", "myplugin", "--engine", "auto"])
    assert out.exit_code == 0, out.output
    assert "rule plugged" in out.output
    out = runner.invoke(cli, ["simulate", "--tasks", "50", "--rule", "score:w_price=0.2"])
    assert out.exit_code == 0, out.output
    out = runner.invoke(cli, ["simulate", "--plugin", "no_such_plugin_mod"])
    assert out.exit_code == 2 and "no_such_plugin_mod" in out.output and "hint" in out.output


def plugin_env(plugin_dir: Path) -> dict:
    """This environment with ``plugin_dir`` first on PYTHONPATH."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(plugin_dir),
                                                      env.get("PYTHONPATH", "")]))
    return env


def start_service(db: Path, plugin_dir: Path, *extra: str) -> subprocess.Popen:
    """``timmy serve`` that is expected to refuse to start (ServiceProcess waits for a URL)."""
    env = plugin_env(plugin_dir)
    return subprocess.Popen(
        [sys.executable, "-m", "timmy", "serve", "--db", str(db), "--port", "0",
         "--task-seconds", "0", "--seed", "1", *extra],
        cwd=db.parent, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


@pytest.mark.timeout(90)
def test_serve_with_a_plugin_clears_with_its_mechanism(tmp_path):
    (tmp_path / "plugins").mkdir()
    plugins = write_plugin(tmp_path / "plugins")
    db = tmp_path / "swarm.db"
    svc = ServiceProcess(db, 0, "--plugin", "myplugin", "--rule", "plugged",
                         env=plugin_env(plugins))
    try:
        with svc.attach() as swarm:
            assert swarm.status()["rule"] == "plugged"
            done = [swarm.wait(swarm.post(d).task_id, timeout=20)
                    for d in demo_descriptions(6, seed=1)]
            assert all(t.status in ("completed", "failed") for t in done)
            closed = [e for e in swarm.iter_events() if e.kind == "auction_closed"]
            assert closed and all(e.data["why"] == "highest bid (plugin)" for e in closed)
            bids = swarm.bids()
        for tid in {b["task_id"] for b in bids}:
            mine = [b for b in bids if b["task_id"] == tid and b["attempt"] == 1]
            won = [b for b in mine if b["won"]]
            assert won[0]["sats"] == max(b["sats"] for b in mine)
    finally:
        svc.stop()


def test_serve_with_a_plugin_that_fails_to_import_says_so(tmp_path):
    plugins = write_plugin(tmp_path, "broken", "raise RuntimeError('half-written plugin')\n")
    proc = start_service(tmp_path / "swarm.db", plugins, "--plugin", "broken", "--rule",
                         "plugged")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert "plugin 'broken' failed to import: RuntimeError: half-written plugin" in err
    assert "register_mechanism" in err          # the hint
    proc = start_service(tmp_path / "swarm.db", plugins, "--rule", "plugged")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0 and "unknown clearing rule 'plugged'" in err
