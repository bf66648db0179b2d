"""The ``redundant`` mechanism: the k best bids each run a copy of the task, the first copy in
bid order whose result passes is paid (one ledger row), the others are discarded unpaid, and a
task none of whose copies passed is auctioned again with one attempt spent; live and
simulated alike."""

from __future__ import annotations

import pytest

import timmy
from timmy.engine.executors import simulated_plan
from timmy.errors import ConfigError
from timmy.market import mechanisms as mech
from timmy.market.auction import Bid, check_rule, clear
from timmy.market.lifecycle import Action
from timmy.market.redundancy import FAILED, LOST, PASSED, Copies, Outcome
from timmy.sim.simulator import simulate
from timmy.sim.workloads import demo_descriptions

BIDS = [Bid("a", 30, False), Bid("b", 50, True), Bid("c", 40, True), Bid("d", 20, False)]


# -- the rule, pure ----------------------------------------------------------------------
def test_the_k_best_bids_in_specialist_first_order_win_at_the_highest_winning_bid():
    got = clear(1, BIDS, "redundant")                      # k defaults to 2
    assert got.copies == ("c", "b") and got.winner == "c" and got.price_sats == 50
    got = clear(1, BIDS, "redundant:k=3")
    assert got.copies == ("c", "b", "d") and got.price_sats == 50
    assert "3 best bids (c, b, d)" in got.reason


def test_k_above_the_bidders_runs_one_copy_each_and_k_1_is_specialist_first():
    assert clear(1, BIDS[:2], "redundant:k=5").copies == ("b", "a")
    one = clear(1, BIDS, "redundant:k=1")
    plain = clear(1, BIDS, "specialist_first")
    assert one.copies == () and (one.winner, one.price_sats) == (plain.winner, plain.price_sats)
    assert clear(1, BIDS[:1], "redundant:k=3").copies == ()   # a single bid: one winner


@pytest.mark.parametrize("rule", ["redundant:k=0", "redundant:k=-1", "redundant:k=2.5",
                                  "redundant:k=two", "redundant:n=2"])
def test_a_bad_k_is_refused_with_a_hint(rule):
    with pytest.raises(ConfigError) as info:
        check_rule(rule)
    assert info.value.hint
    with pytest.raises(ConfigError):
        simulate(["fix the bug"], rule=rule)
    with pytest.raises(ConfigError):
        timmy.Swarm("sqlite://", rule=rule)


def test_the_compiled_engine_refuses_it_and_auto_takes_python():
    with pytest.raises(ConfigError, match="does not know the clearing rule"):
        simulate(["fix the bug"], rule="redundant", engine="compiled")
    work = demo_descriptions(20, seed=2)
    auto = simulate(work, seed=1, rule="redundant:k=3", engine="auto")
    python = simulate(work, seed=1, rule="redundant:k=3", engine="python")
    assert auto.tasks.equals(python.tasks) and auto.ledger.equals(python.ledger)


def test_copies_decide_in_bid_order_and_spend_one_attempt_when_none_passed():
    c = Copies(("x", "y", "z"))
    assert not c.report("z", Outcome(PASSED, "z did"))
    assert not c.report("x", Outcome(FAILED, "boom"))
    assert c.report("y", Outcome(PASSED, "y did"))
    assert c.paid() == "y"                                  # first passing in bid order
    none = Copies(("x", "y"), {"x": Outcome(FAILED, "boom"), "y": Outcome(LOST, why="died")})
    d = none.decision(1, 3)
    assert d.action == Action.REQUEUE and d.attempts == 1 and "all 2 copies failed" in d.reason
    assert none.decision(3, 3).action == Action.FAIL
    perm = Copies(("x",), {"x": Outcome(FAILED, "no", permanent=True)})
    assert perm.decision(1, 3).action == Action.FAIL
    free = Copies(("x", "y"), {a: Outcome(LOST, why="stopped", free=True) for a in "xy"})
    assert free.decision(2, 3).action == Action.REQUEUE_FREE


# -- simulated ---------------------------------------------------------------------------
def copies_of(bids, k):
    """The agents of each auction's copies, best first, from a run's bids table."""
    out: dict = {}
    for b in bids.itertuples():
        out.setdefault((b.task_id, b.attempt), []).append(Bid(b.agent_id, int(b.sats),
                                                              bool(b.on_spec)))
    return {key: [b for b in mech.copies(v, k)] for key, v in out.items()}


@pytest.mark.parametrize("k", [2, 3])
def test_simulated_the_first_passing_copy_in_bid_order_is_paid_once(k):
    seed = 3
    run = simulate(demo_descriptions(200, seed=4), seed=seed, rule=f"redundant:k={k}",
                   task_seconds=0.01, max_attempts=2)
    tasks, ledger = run.tasks, run.ledger
    done = tasks[tasks.status == "completed"]
    assert len(done) > 150 and len(ledger) == len(done)
    assert sorted(ledger.task_id) == sorted(done.task_id)          # one row per paid task
    assert list(ledger.sats) == list(done.set_index("task_id").loc[ledger.task_id].price_sats)
    won = copies_of(run.bids, k)
    passed_any = failed_all = 0
    for t in tasks.itertuples():
        last = won[(t.task_id, t.attempts)]
        assert len(last) == k
        oks = [simulated_plan(seed, b.agent_id, t.task_id, t.attempts, b.on_spec, 0.01).ok
               for b in last]
        if t.status == "completed":
            assert t.assigned_agent == last[oks.index(True)].agent_id   # the rule's choice
            assert t.price_sats == max(b.sats for b in last)
            passed_any += oks.index(True) > 0
        else:
            assert not any(oks)
            failed_all += 1
    assert passed_any > 0      # some primary copy failed and a later one was paid
    # every copy's outcome counted: k results per auction
    outcomes = sum(r["outcomes"] for r in run.reputation.values())
    assert outcomes == k * len(won)
    # a task none of whose copies passed went back to auction with one attempt spent
    again = [t for t in tasks.itertuples() if t.attempts > 1]
    assert again and all(not any(simulated_plan(seed, b.agent_id, t.task_id, 1, b.on_spec,
                                                0.01).ok for b in won[(t.task_id, 1)])
                         for t in again)


def test_simulated_crashes_lose_no_task_and_pay_at_most_once():
    run = simulate([a for a in demo_descriptions(150, seed=9)], seed=2,
                   rule="redundant:k=3", task_seconds=0.02, crash_rate=0.2, max_attempts=3)
    assert set(run.tasks.status) <= {"completed", "failed"}
    assert len(run.ledger) == (run.tasks.status == "completed").sum()
    assert run.ledger.task_id.is_unique


# -- live ----------------------------------------------------------------------------------
def live(tmp_path, descriptions, verify=None, **kwargs):
    with timmy.Swarm(f"sqlite:///{tmp_path / 'live.db'}", **kwargs) as swarm:
        swarm.spawn_all()
        tasks = [swarm.wait(swarm.post(d, verify=verify).task_id, timeout=30)
                 for d in descriptions]
        return (tasks, list(swarm.iter_bids()), list(swarm.iter_events()), swarm.ledger(),
                swarm.reputation(), {a.agent_id: a for a in swarm.agents()})


def same(tasks, run):
    assert [(t.task_id, t.status, t.assigned_agent, t.price_sats, t.attempts, t.reason)
            for t in tasks] == [
        (t.task_id, t.status, t.assigned_agent, t.price_sats, t.attempts,
         None if t.reason != t.reason else t.reason) for t in run.tasks.itertuples()]


@pytest.mark.timeout(180)
@pytest.mark.parametrize("k", [2, 3])
def test_live_k_runners_run_each_task_one_is_paid_and_the_simulator_agrees(tmp_path, k):
    work = demo_descriptions(25, seed=11)
    tasks, bids, events, ledger, rep, agents = live(tmp_path, work, seed=5, task_seconds=0,
                                                    rule=f"redundant:k={k}")
    assigned: dict = {}
    for e in events:
        if e.kind == "task_assigned":
            assigned.setdefault((e.task_id, e.data["attempt"]), set()).add(e.agent_id)
    assert all(len(v) == k for v in assigned.values())           # k runners got `assign`
    assert sum(a.tasks_won for a in agents.values()) == k * len(assigned)
    done = [t for t in tasks if t.status == "completed"]
    assert done and [(r["task_id"], r["agent_id"], r["sats"]) for r in ledger] == \
        [(t.task_id, t.assigned_agent, t.price_sats) for t in done]     # one row each
    for t in done:
        assert t.assigned_agent in assigned[(t.task_id, t.attempts)]
    # each copy's result counted in its agent's reputation
    assert sum(r["outcomes"] for r in rep.values()) == k * len(assigned)
    run = simulate(work, seed=5, task_seconds=0, rule=f"redundant:k={k}")
    same(tasks, run)
    assert sorted((b["task_id"], b["attempt"], b["agent_id"], b["sats"], b["won"])
                  for b in bids) == sorted(zip(run.bids.task_id, run.bids.attempt,
                                               run.bids.agent_id, run.bids.sats,
                                               run.bids.won, strict=True))
    assert {a: (r["successes"], r["failures"], r["verification_failures"])
            for a, r in rep.items() if r["outcomes"]} == \
        {a: (r["successes"], r["failures"], r["verification_failures"])
         for a, r in run.reputation.items() if r["outcomes"]}


@pytest.mark.timeout(180)
def test_live_a_verifier_failing_one_copy_pays_the_other_and_all_failing_reauctions(tmp_path):
    work = ["forge a parser for the build", "draft the release notes", "fix the flaky test"]
    for seed in range(1, 50):   # one whose second copy of task 1 runs ok (seeded outcomes)
        plain = simulate(work, seed=seed, task_seconds=0, rule="redundant")
        first = copies_of(plain.bids, 2)
        b = first[(1, 1)][1]
        if simulated_plan(seed, b.agent_id, 1, 1, b.on_spec, 0).ok:
            break
    else:
        pytest.fail("no seed gives task 1's second copy an ok run")
    # fail the best copy of task 1 only, and both copies of task 2 (attempt 1)
    (a1, b1), (a2, b2) = ([b.agent_id for b in first[(i, 1)]] for i in (1, 2))
    spec = f"regex:^(?!{a1} did: forge|{a2} did: draft|{b2} did: draft)"
    tasks, bids, events, ledger, rep, _ = live(tmp_path, work, verify=spec, seed=seed,
                                                    task_seconds=0, rule="redundant")
    one, two = tasks[0], tasks[1]
    assert one.status == "completed" and one.assigned_agent == b1 and one.attempts == 1
    assert rep[a1]["verification_failures"] >= 1
    assert two.attempts >= 2 and two.assigned_agent not in (a2, b2)
    requeued = [e for e in events if e.kind == "task_requeued" and e.task_id == two.task_id]
    assert requeued and "all 2 copies failed" in requeued[0].data["reason"]
    later = {b["agent_id"] for b in bids if b["task_id"] == two.task_id and b["attempt"] == 2}
    assert later and not later & {a2, b2}                      # both excluded
    assert sorted(r["task_id"] for r in ledger) == [t.task_id for t in tasks
                                                     if t.status == "completed"]
    assert all(r["verified"] for r in ledger)
    run = simulate(work, seed=seed, task_seconds=0, rule="redundant", verify=spec)
    same(tasks, run)


@pytest.mark.timeout(120)
def test_live_a_copy_whose_runner_dies_counts_nothing_and_the_other_copy_is_paid(make_swarm,
                                                                                   eventually):
    work = ["forge a parser for the build"]
    for seed in range(1, 200):   # one whose best copy runs long enough to be killed first
        run = simulate(work, seed=seed, rule="redundant", task_seconds=1.0,
                       runners={"forge": 1, "quill": 1})
        won, lost_ = run.bids[run.bids.won].iloc[0], run.bids[~run.bids.won].iloc[0]
        if simulated_plan(seed, won.agent_id, 1, 1, bool(won.on_spec), 1.0).seconds > 3 \
                and simulated_plan(seed, lost_.agent_id, 1, 1, bool(lost_.on_spec), 1.0).ok:
            break
    else:
        pytest.fail("no seed gives the best copy a long run")
    swarm = make_swarm(rule="redundant", task_seconds=1.0, seed=seed)
    swarm.spawn_all(["forge", "quill"])
    eventually(lambda: sum(a.status == "idle" for a in swarm.agents()) == 2, timeout=30)
    tid = swarm.post("forge a parser for the build").task_id

    def copies():
        return [e.agent_id for e in swarm.events(limit=100) if e.kind == "task_assigned"
                and e.task_id == tid]

    eventually(lambda: len(copies()) == 2, timeout=30)
    best = swarm.task(tid).assigned_agent
    other = next(a for a in copies() if a != best)
    swarm.kill(best)
    task = swarm.wait(tid, timeout=60)
    bid = next(b for b in swarm.bids(tid) if b["agent_id"] == other and b["attempt"] == 1)
    assert best == won.agent_id
    assert other == lost_.agent_id and bid["sats"] == lost_.sats
    assert (task.status, task.assigned_agent, task.attempts) == ("completed", other, 1)
    assert [(r["task_id"], r["agent_id"]) for r in swarm.ledger()] == [(tid, other)]
    rep = swarm.reputation()
    assert rep.get(best, {}).get("outcomes", 0) == 0     # a lost copy counts nothing
