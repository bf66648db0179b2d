"""The task lifecycle's one rule: states and moves, attempt accounting, events, reason texts;
and the engines that restate it (the compiled simulator over arrays) held to it decision by
decision, the Python simulator's and a live swarm's event streams held to its moves."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import timmy
from timmy.market import lifecycle as lc
from timmy.market import models
from timmy.market.lifecycle import Action
from timmy.sim.simulator import simulate
from timmy.sim.workloads import demo_descriptions, keyword_mix, poisson_arrivals

attempts_and_max = st.integers(1, 50).flatmap(
    lambda m: st.tuples(st.integers(1, m), st.just(m)))


# -- states and moves -------------------------------------------------------
def test_the_states_split_into_active_and_terminal_and_models_still_export_them():
    assert (*lc.ACTIVE_STATES, *lc.TERMINAL_STATES) == lc.TASK_STATES
    assert lc.TASK_STATES == ("queued", "bidding", "assigned", "running", "awaiting_approval",
                              "completed", "failed", "cancelled")
    assert set(lc.HELD_STATES) == {"assigned", "running"}
    for name in ("TASK_STATES", "ACTIVE_STATES", "TERMINAL_STATES", "QUEUED", "BIDDING",
                 "ASSIGNED", "RUNNING", "COMPLETED", "FAILED", "CANCELLED",
                 "AGENT_WORKING_STATES"):
        assert getattr(models, name) is getattr(lc, name), name
    assert models.Task(task_id=1, description="x").status == lc.QUEUED


def test_the_moves_a_task_may_make():
    assert set(lc.TRANSITIONS) == set(lc.TASK_STATES)
    for state in lc.TERMINAL_STATES:           # a finished task never moves again
        assert not lc.TRANSITIONS[state]
        assert not any(lc.can_move(state, other) for other in lc.TASK_STATES)
    for state in lc.ACTIVE_STATES:             # any unfinished task may be cancelled
        assert lc.can_move(state, lc.CANCELLED)
    assert lc.can_move("queued", "bidding") and not lc.can_move("queued", "assigned")
    assert lc.can_move("bidding", "queued")    # nobody with room bid
    assert lc.can_move("bidding", "assigned") and not lc.can_move("bidding", "running")
    assert lc.can_move("bidding", "failed")   # its mechanism failed on the last attempt
    assert lc.can_move("assigned", "completed")   # "started" may never have arrived
    for held in lc.HELD_STATES:                # a failed or lost attempt
        assert lc.can_move(held, "queued") and lc.can_move(held, "failed")
    assert not lc.can_move("running", "assigned") and not lc.can_move("nonsense", "queued")


# -- events -----------------------------------------------------------------
def test_each_task_event_implies_a_status():
    assert lc.TASK_EVENT_STATUS == {
        "task_posted": "queued", "auction_opened": "bidding", "task_assigned": "assigned",
        "task_started": "running", "task_completed": "completed", "task_failed": "failed",
        "task_cancelled": "cancelled", "task_requeued": "queued",
        "approval_requested": "awaiting_approval"}
    assert lc.FINISH_EVENT == {"completed": "task_completed", "failed": "task_failed",
                               "cancelled": "task_cancelled"}
    for status, kind in lc.FINISH_EVENT.items():
        assert lc.TASK_EVENT_STATUS[kind] == status
    assert lc.status_after("auction_closed", winner=None) == "queued"
    assert lc.status_after("auction_closed", winner="forge-1") is None
    assert lc.status_after("task_timed_out") is None and lc.status_after("bid") is None
    assert lc.AGENT_EVENT_STATUS == {
        "agent_joined": "idle", "agent_restarted": "idle", "agent_crashed": "restarting",
        "agent_left": "stopped", "agent_failed": "failed", "agent_reconnected": "idle",
        "agent_disconnected": "disconnected"}


def test_the_widgets_fold_events_with_the_lifecycle_maps():
    from timmy.widgets import state

    assert state.TASK_STATUS is lc.TASK_EVENT_STATUS
    assert state.AGENT_STATUS is lc.AGENT_EVENT_STATUS


# -- attempt accounting and reasons -----------------------------------------
def test_a_failed_attempt_is_auctioned_again_until_the_last_one():
    d = lc.after_failure(1, 3, "forge-1", "boom")
    assert d == lc.Decision(Action.REQUEUE, 1, "attempt 1 by forge-1 failed: boom")
    assert (d.status, d.event) == ("queued", "task_requeued")
    d = lc.after_failure(3, 3, "forge-1", "boom")
    assert d == lc.Decision(Action.FAIL, 3,
                            "attempt 3 by forge-1 failed: boom; gave up after 3 attempts")
    assert (d.status, d.event) == ("failed", "task_failed")
    assert lc.after_failure(1, 3, "a-1", "x" * 500).reason == "attempt 1 by a-1 failed: " + \
        "x" * 200


def test_a_permanent_failure_is_not_auctioned_again():
    d = lc.after_failure(1, 3, "quill-2", "no such model")
    assert d.action == Action.REQUEUE
    d = lc.after_failure(1, 3, "quill-2", "no such model", permanent=True)
    assert d == lc.Decision(Action.FAIL, 1, "attempt 1 by quill-2 failed: no such model "
                            "(not auctioned again: it would fail the same way)")


def test_a_runner_that_ends_costs_an_attempt_only_to_what_it_was_working_on():
    how = lc.exit_how("restart", -9)
    assert how == "died (exit code -9)"
    assert lc.exit_how("stopped", 0) == "stopped"
    assert lc.exit_how("disconnected", None) == "lost its connection"
    assert lc.exit_how("failed", 1) == "died (exit code 1)"
    first = lc.after_runner_exit(2, 3, "forge-1", how, running=False, first=True, crashed=True)
    assert first == lc.Decision(Action.REQUEUE, 2,
                                "runner forge-1 died (exit code -9) during attempt 2")
    last = lc.after_runner_exit(3, 3, "forge-1", how, running=True, first=True, crashed=True)
    assert last == lc.Decision(Action.FAIL, 3, "runner forge-1 died (exit code -9) during "
                               "attempt 3; gave up after 3 attempts")
    behind = lc.after_runner_exit(3, 3, "forge-1", how, running=False, first=False,
                                  crashed=True)
    assert behind == lc.Decision(Action.REQUEUE_FREE, 2,
                                 "runner forge-1 died (exit code -9) before starting it")
    running_behind = lc.after_runner_exit(1, 3, "f-1", how, running=True, first=False,
                                          crashed=True)
    assert running_behind.action == Action.REQUEUE and running_behind.attempts == 1
    stopped = lc.after_runner_exit(3, 3, "forge-1", "stopped", running=True, first=True,
                                   crashed=False)
    assert stopped == lc.Decision(Action.REQUEUE_FREE, 2,
                                  "runner forge-1 stopped before finishing it")


def test_a_deadline_spends_the_attempt_of_the_task_past_it_and_no_other():
    d = lc.after_deadline(1, 3, "forge-1", 5.0, first=True, head_task_id=7)
    assert d == lc.Decision(Action.REQUEUE, 1, "no result within 5s from forge-1 (attempt 1; "
                            "the runner was restarted)")
    d = lc.after_deadline(3, 3, "forge-1", 0.25, first=True, head_task_id=7)
    assert d.action == Action.FAIL and d.reason == (
        "no result within 0.25s from forge-1 (attempt 3; the runner was restarted); "
        "gave up after 3 attempts")
    d = lc.after_deadline(3, 3, "forge-1", 5.0, first=False, head_task_id=7)
    assert d == lc.Decision(Action.REQUEUE_FREE, 2, "runner forge-1 was restarted before "
                            "starting it (task 7 ahead of it got no result within 5s)")


def test_a_restarted_coordinator_requeues_what_it_finds_or_fails_a_used_up_attempt():
    assert lc.after_coordinator_restart("bidding", 3, 3) == lc.Decision(
        Action.REQUEUE, 3, "re-queued after a coordinator restart")
    assert lc.after_coordinator_restart("assigned", 2, 3).action == Action.REQUEUE
    assert lc.after_coordinator_restart("running", 3, 3) == lc.Decision(
        Action.FAIL, 3, "coordinator stopped during attempt 3 of 3")


@given(attempts_and_max, st.booleans())
def test_a_spent_attempt_fails_the_task_exactly_when_it_was_the_last(am, permanent):
    attempts, max_attempts = am
    d = lc.after_failure(attempts, max_attempts, "a-1", "out", permanent=permanent)
    assert d.attempts == attempts
    assert (d.action == Action.FAIL) == (permanent or attempts == max_attempts)
    assert d.reason.startswith(f"attempt {attempts} by a-1 failed: out")
    assert d.reason.endswith(f"; gave up after {attempts} attempts") == (
        d.action == Action.FAIL and not permanent)


@given(attempts_and_max, st.booleans(), st.booleans(), st.booleans())
def test_only_a_crash_in_the_task_being_worked_spends_its_attempt(am, running, first, crashed):
    attempts, max_attempts = am
    d = lc.after_runner_exit(attempts, max_attempts, "a-1", "died", running=running,
                             first=first, crashed=crashed)
    spent = crashed and (first or running)
    assert d.attempts == (attempts if spent else attempts - 1)
    assert d.action == (lc.spent_action(attempts, max_attempts) if spent
                        else Action.REQUEUE_FREE)
    assert d.status == ("failed" if d.action == Action.FAIL else "queued")


# -- the compiled engine against the rule ------------------------------------
@settings(deadline=None)   # the first example imports numba
@given(st.integers(0, 40))
def test_the_compiled_kernels_decision_table_is_the_lifecycles_rule(max_attempts):
    from timmy.sim.compiled import failure_actions

    actions = failure_actions(max_attempts)
    assert len(actions) == max(max_attempts, 1)
    for n, action in enumerate(actions, start=1):
        assert action == lc.spent_action(n, max_attempts)
        assert (action == Action.FAIL) == (n == len(actions))


def test_the_compiled_engines_event_codes_are_the_lifecycles_kinds():
    from timmy.sim import compiled

    assert compiled.EVENT_KINDS[compiled._POSTED] == lc.TASK_POSTED
    assert compiled.EVENT_KINDS[compiled._REQUEUED] == lc.TASK_REQUEUED
    assert compiled.EVENT_KINDS[compiled._FAILED] == lc.TASK_FAILED
    assert compiled.EVENT_KINDS[compiled._COMPLETED] == lc.TASK_COMPLETED
    assert compiled.END_STATES == (lc.COMPLETED, lc.FAILED)


def _decisions(run):
    """Each task's attempts as the engine ended them: (attempt, winner, on_spec, the event
    that followed it), from the bids and events tables."""
    bids = run.bids[run.bids.won]
    winners = {(b.task_id, b.attempt): (b.agent_id, bool(b.on_spec)) for b in bids.itertuples()}
    ends = run.events[run.events.kind.isin(["task_completed", "task_requeued", "task_failed"])]
    attempt: dict[int, int] = {}
    out = []
    for e in ends.itertuples():
        tid = int(e.task_id)
        attempt[tid] = attempt.get(tid, 0) + 1
        agent, on_spec = winners[(tid, attempt[tid])]
        out.append((tid, attempt[tid], agent, on_spec, e.kind))
    return out


@pytest.mark.parametrize("max_attempts", [1, 2, 3, 5])
def test_the_compiled_engine_decides_every_attempt_as_the_lifecycle_does(max_attempts):
    # off-spec work fails often (40 %): many re-queues, and tasks that use up their attempts
    work = keyword_mix(800, 3, {"generic": 1}) + demo_descriptions(400, seed=3)
    run = simulate(work, seed=3, task_seconds=0.0, max_attempts=max_attempts,
                   engine="compiled")
    tasks = run.tasks.set_index("task_id")
    decided = {"requeued": 0, "failed": 0}
    for tid, attempt, agent, on_spec, kind in _decisions(run):
        if kind == "task_completed":
            assert tasks.at[tid, "status"] == "completed" and tasks.at[tid, "attempts"] == attempt
            continue
        what = f"simulated failure ({'on' if on_spec else 'off'}-spec task)"
        d = lc.after_failure(attempt, max_attempts, agent, what)
        assert kind == d.event, (tid, attempt)
        decided[d.status if d.status == "failed" else "requeued"] += 1
        if d.action == Action.FAIL:
            row = tasks.loc[tid]
            assert (row.status, row.attempts, row.reason, row.result) == (
                d.status, d.attempts, d.reason, what)
    assert decided["failed"] > 0 and (max_attempts == 1 or decided["requeued"] > 0)


# -- the event streams keep to the moves ------------------------------------
def _check_moves(events):
    status: dict[int, str] = {}
    moves = 0
    for e in events:
        if e.task_id is None:
            continue
        new = lc.status_after(e.kind, e.agent_id)
        if new is None or status.get(e.task_id) == new:
            continue
        old = status.get(e.task_id)
        assert (old is None and new == "queued") or lc.can_move(old, new), (e.task_id, old, new)
        status[e.task_id] = new
        moves += 1
    return status, moves


def test_a_simulation_with_crashes_moves_its_tasks_only_as_the_lifecycle_allows():
    run = simulate(poisson_arrivals(600, rate=300.0, seed=6), seed=6, crash_rate=0.05,
                   max_attempts=2, runner_queue=8)
    ev = run.events.dropna(subset=["task_id"])
    events = [SimpleNamespace(task_id=int(tid), kind=kind, agent_id=aid)
              for tid, kind, aid in zip(ev.task_id, ev.kind,
                                        ev.agent_id.astype(object).where(ev.agent_id.notna(),
                                                                         None), strict=True)]
    status, moves = _check_moves(events)
    assert moves > 3 * 600
    assert status == dict(zip(run.tasks.task_id, run.tasks.status, strict=True))
    reasons = run.tasks.reason.dropna()
    assert reasons.str.endswith("died during attempt 2; gave up after 2 attempts").any()
    assert (run.events.kind == "agent_crashed").sum() > 5


@pytest.mark.timeout(60)
def test_a_live_swarm_moves_its_tasks_only_as_the_lifecycle_allows(tmp_path):
    descriptions = keyword_mix(30, 5, {"generic": 1})
    with timmy.Swarm(f"sqlite:///{tmp_path / 'live.db'}", seed=5, task_seconds=0,
                     max_attempts=2) as swarm:
        swarm.spawn_all()
        tasks = [swarm.wait(swarm.post(d).task_id, timeout=20) for d in descriptions]
        events = list(swarm.iter_events())
    status, moves = _check_moves(events)
    assert moves >= 4 * len(tasks)
    assert status == {t.task_id: t.status for t in tasks}
    assert "running" in {lc.status_after(e.kind) for e in events}
    failed = [t for t in tasks if t.status == "failed"]
    retried = [e for e in events if e.kind == "task_requeued"]
    assert failed or retried
    for t in failed:   # the live engine words it as the lifecycle does
        assert t.reason == lc.after_failure(t.attempts, 2, t.assigned_agent, t.result).reason
