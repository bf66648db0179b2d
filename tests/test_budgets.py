"""Budgets with approval (issue 14, point 6): a clearing over a task's max_price or the
budget left waits in "awaiting_approval" with its winning bid held; approve assigns it at
that price, reject cancels it; from the API, the CLI against a real `timmy serve`, across
a restart; spend in status(); the simulator decides the same with an approval policy."""

from __future__ import annotations

import re

import pytest
from click.testing import CliRunner
from test_service import ServiceProcess

import timmy
from timmy.cli.app import cli
from timmy.errors import ConfigError
from timmy.market import budgets
from timmy.market import lifecycle as lc
from timmy.sim.simulator import simulate
from timmy.sim.workloads import demo_descriptions

CODE = "write a python function to parse the log"
SETTLED = (lc.AWAITING_APPROVAL, *lc.TERMINAL_STATES)


def settle(swarm, task_id: int, eventually, timeout: float = 20.0):
    """The task once it awaits approval or has finished."""
    return eventually(lambda: (t := swarm.task(task_id)).status in SETTLED and t,
                      timeout=timeout, what=f"task {task_id} awaiting or finished")


# -- the pure rules -----------------------------------------------------------------------


def test_the_rules_and_the_lifecycle():
    assert budgets.needs_approval(10, None, None) is None
    assert budgets.needs_approval(10, 10, 10) is None          # at the limit: fine
    assert budgets.needs_approval(11, 10, None).startswith("over max_price: 11 > 10")
    assert budgets.needs_approval(11, None, 10).startswith("over the budget left: 11 > 10")
    assert budgets.needs_approval(11, 5, None, approved=11) is None   # approved ceiling
    assert budgets.budget_left(100, 30, 20) == 50 and budgets.budget_left(None, 1, 2) is None
    assert lc.can_move("bidding", "awaiting_approval")
    for after in ("assigned", "queued", "cancelled"):
        assert lc.can_move("awaiting_approval", after)
    assert not lc.can_move("awaiting_approval", "running")
    assert lc.status_after("approval_requested") == "awaiting_approval"
    assert lc.status_after("approved") is None and lc.status_after("rejected") is None
    assert "awaiting_approval" in lc.ACTIVE_STATES and lc.keeps_waiting("awaiting_approval")


@pytest.mark.parametrize("bad", [-1, 1.5, "10", True])
def test_a_bad_budget_or_max_price_is_a_config_error_with_a_hint(bad, make_swarm):
    with pytest.raises(ConfigError) as info:
        timmy.Swarm(budget=bad)
    assert "budget" in info.value.message and info.value.hint
    swarm = make_swarm()
    with pytest.raises(ConfigError) as info:
        swarm.post(CODE, max_price=bad)
    assert "max_price" in info.value.message and info.value.hint
    with pytest.raises(ConfigError):
        simulate([CODE], max_price=bad)
    with pytest.raises(ConfigError, match="approval policy"):
        simulate([CODE], approve="maybe")


# -- live ---------------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_over_max_price_waits_and_approve_completes_at_the_held_price(make_swarm, eventually):
    swarm = make_swarm()
    swarm.spawn_all()
    task = settle(swarm, swarm.post(CODE, max_price=1).task_id, eventually)
    assert task.status == "awaiting_approval" and task.attempts == 0
    held_agent, held_price = task.assigned_agent, task.price_sats
    assert held_agent and held_price > 1 and "over max_price" in task.reason
    assert [t.task_id for t in swarm.tasks("awaiting_approval")] == [task.task_id]
    assert swarm.status()["tasks"] == {"awaiting_approval": 1}
    swarm.approve(task.task_id)
    done = swarm.wait(task.task_id, 20)
    assert (done.status, done.assigned_agent, done.price_sats, done.attempts) == \
        ("completed", held_agent, held_price, 1)
    assert [(r["task_id"], r["agent_id"], r["sats"]) for r in swarm.ledger()] == \
        [(task.task_id, held_agent, held_price)]
    kinds = [e.kind for e in swarm.events(limit=1000) if e.task_id == task.task_id]
    assert kinds.index("approval_requested") < kinds.index("approved") \
        < kinds.index("task_assigned") < kinds.index("task_completed")
    with pytest.raises(ConfigError, match="not awaiting approval") as info:   # twice: refused
        swarm.approve(task.task_id)
    assert info.value.hint
    # a price within max_price assigns without asking
    fine = swarm.wait(swarm.post(CODE, max_price=10_000).task_id, 20)
    assert fine.status == "completed"


@pytest.mark.timeout(120)
def test_reject_cancels_with_the_reason(make_swarm, eventually):
    swarm = make_swarm()
    swarm.spawn_all()
    task = settle(swarm, swarm.post(CODE, max_price=0).task_id, eventually)
    assert task.status == "awaiting_approval"
    out = swarm.reject(task.task_id)
    assert out.status == "cancelled" and out.reason.startswith("rejected: over max_price")
    assert swarm.wait(task.task_id, 5).status == "cancelled"
    assert swarm.ledger() == []
    with pytest.raises(ConfigError, match="not awaiting approval"):
        swarm.reject(task.task_id)


@pytest.mark.timeout(120)
def test_an_exhausted_budget_waits_and_status_shows_spend(make_swarm, eventually):
    swarm = make_swarm(budget=40)
    swarm.spawn_all()
    assert swarm.status()["budget_left"] == 40 and swarm.status()["spent_sats"] == 0
    paid = 0
    for _ in range(10):   # spend until a clearing does not fit what is left
        task = settle(swarm, swarm.post(CODE).task_id, eventually)
        if task.status == "awaiting_approval":
            break
        assert task.status == "completed"
        paid += task.price_sats
    else:
        pytest.fail("the budget never ran out")
    status = swarm.status()
    assert status["paid_sats"] == paid == sum(r["sats"] for r in swarm.ledger())
    assert status["spent_sats"] == paid and status["held_sats"] == 0
    assert status["budget"] == 40 and status["budget_left"] == 40 - paid
    assert task.price_sats > 40 - paid and "over the budget left" in task.reason
    swarm.approve(task.task_id)   # a human may spend past the budget
    assert swarm.wait(task.task_id, 20).status == "completed"
    assert swarm.status()["budget_left"] == 40 - paid - task.price_sats < 0


@pytest.mark.timeout(120)
def test_approve_when_the_held_agent_is_gone_auctions_again_at_that_ceiling(make_swarm,
                                                                          eventually):
    swarm = make_swarm()
    swarm.spawn_all()
    task = settle(swarm, swarm.post(CODE, max_price=0).task_id, eventually)
    swarm.stop(task.assigned_agent)
    out = swarm.approve(task.task_id)
    assert out.status in ("queued", "bidding") and "has no room" in out.reason
    done = settle(swarm, task.task_id, eventually)
    # a clearing at or below the approved price assigns; one above it would ask again
    assert done.status in ("completed", "awaiting_approval")
    if done.status == "completed":
        assert done.price_sats <= task.price_sats
    else:
        assert done.price_sats > task.price_sats


@pytest.mark.postgres
@pytest.mark.timeout(120)
def test_a_restart_keeps_tasks_awaiting_approval(db_url, eventually):
    with timmy.Swarm(db_url, seed=1, task_seconds=0, auction_window=1.0) as swarm:
        swarm.spawn_all()
        held = [settle(swarm, swarm.post(CODE, max_price=0).task_id, eventually)
                for _ in range(2)]
        queued = swarm.post(CODE, max_price=0)   # no runner yet after the restart
    assert all(t.status == "awaiting_approval" for t in held)
    with timmy.Swarm(db_url, seed=1, task_seconds=0, auction_window=1.0) as swarm:
        again = [swarm.task(t.task_id) for t in held]
        assert [(t.status, t.assigned_agent, t.price_sats) for t in again] == \
            [("awaiting_approval", t.assigned_agent, t.price_sats) for t in held]
        swarm.spawn_all()
        # its max_price survived too: the queued task waits for approval again
        assert settle(swarm, queued.task_id, eventually).status == "awaiting_approval"
        swarm.reject(held[1].task_id)
        out = swarm.approve(held[0].task_id)   # its agent is not this swarm's: auctioned again
        assert "has no room" in out.reason
        assert settle(swarm, held[0].task_id, eventually).status in ("completed",
                                                                    "awaiting_approval")
        assert swarm.task(held[1].task_id).status == "cancelled"


# -- the CLI against a real service ---------------------------------------------------------



@pytest.mark.timeout(120)
def test_cli_approve_and_reject_against_timmy_serve(tmp_path, eventually):
    svc = ServiceProcess(tmp_path / "swarm.db", 0, "--budget", "0")
    url, token = svc.url, svc.token
    try:
        runner = CliRunner()
        common = ["--url", url, "--token", token]
        ids = []
        for _ in range(2):
            out = runner.invoke(cli, ["post", CODE, "--max-price", "1000", *common])
            assert out.exit_code == 0, out.output
            ids.append(int(re.search(r"task (\d+)", out.output).group(1)))
        with timmy.Swarm.attach(url, token=token) as swarm:
            for tid in ids:   # the budget of 0 holds every clearing
                assert settle(swarm, tid, eventually).status == "awaiting_approval"
            out = runner.invoke(cli, ["approve", str(ids[0]), *common])
            assert out.exit_code == 0 and f"task {ids[0]} assigned" in out.output, out.output
            assert swarm.wait(ids[0], 20).status == "completed"
            out = runner.invoke(cli, ["reject", str(ids[1]), *common])
            assert out.exit_code == 0 and f"task {ids[1]} cancelled" in out.output, out.output
            assert "rejected: over the budget left" in out.output
            out = runner.invoke(cli, ["reject", str(ids[1]), *common])
            assert out.exit_code != 0 and "not awaiting approval" in out.output
            status = swarm.status()
            assert status["budget"] == 0 and status["spent_sats"] == status["paid_sats"] > 0
            out = runner.invoke(cli, ["status", *common])
            assert "budget 0 sats" in out.output and "spent" in out.output, out.output
        out = runner.invoke(cli, ["post", CODE, "--max-price", "-5", *common])
        assert out.exit_code != 0 and "max_price" in out.output and "hint" in out.output
    finally:
        svc.stop()


def test_serve_refuses_a_negative_budget(tmp_path):
    out = CliRunner().invoke(cli, ["serve", "--db", str(tmp_path / "x.db"), "--port", "0",
                                   "--no-spawn", "--budget", "-1"])
    assert out.exit_code != 0 and "budget" in out.output and "hint" in out.output


# -- the simulator, and parity ----------------------------------------------------------


def test_simulate_holds_approves_and_rejects():
    descriptions = demo_descriptions(30, seed=5)
    free = simulate(descriptions, seed=5, task_seconds=0)
    approved = simulate(descriptions, seed=5, task_seconds=0, max_price=0, approve="all")
    # approving every held clearing changes nothing but the events
    cols = ["task_id", "status", "assigned_agent", "price_sats", "attempts"]
    assert approved.tasks[cols].equals(free.tasks[cols])
    kinds = approved.events.kind   # every assignment (retries too) was asked for first
    assert (kinds == "approval_requested").sum() == (kinds == "task_assigned").sum() >= 30
    rejected = simulate(descriptions, seed=5, task_seconds=0, max_price=0, approve="none")
    assert set(rejected.tasks.status) == {"cancelled"} and len(rejected.ledger) == 0
    assert rejected.tasks.reason.str.startswith("rejected: over max_price").all()
    budgeted = simulate(descriptions, seed=5, task_seconds=0, budget=200, approve="none")
    assert budgeted.ledger.sats.sum() <= 200
    assert "cancelled" in set(budgeted.tasks.status)
    with pytest.raises(ConfigError, match="no budgets") as info:
        simulate(descriptions, budget=10, engine="compiled")
    assert info.value.hint


@pytest.mark.timeout(240)
def test_live_and_simulated_decide_approvals_the_same_way(tmp_path, eventually):
    descriptions = demo_descriptions(16, seed=9)
    limits = [None if i % 3 else 15 for i in range(len(descriptions))]

    def policy(task, price):   # approve the cheaper held clearings, reject the others
        return price <= 25

    with timmy.Swarm(f"sqlite:///{tmp_path / 'live.db'}", seed=9, task_seconds=0,
                     budget=400) as swarm:
        swarm.spawn_all()
        live = []
        for d, limit in zip(descriptions, limits, strict=True):
            task = settle(swarm, swarm.post(d, max_price=limit).task_id, eventually)
            if task.status == "awaiting_approval":
                decided = swarm.approve if policy(task, task.price_sats) else swarm.reject
                decided(task.task_id)
            live.append(swarm.wait(task.task_id, 30))
        live_ledger = swarm.ledger()
    run = simulate(descriptions, seed=9, task_seconds=0, budget=400, max_price=limits,
                   approve=policy)
    sim = list(run.tasks.itertuples())
    assert [(t.task_id, t.status, t.assigned_agent, t.price_sats, t.attempts) for t in live] \
        == [(t.task_id, t.status, t.assigned_agent, t.price_sats, t.attempts) for t in sim]
    assert [t.reason for t in live] == [None if r != r else r for r in run.tasks.reason]
    statuses = {t.status for t in live}
    assert "cancelled" in statuses and "completed" in statuses
    assert [(r["task_id"], r["agent_id"], r["sats"]) for r in live_ledger] == \
        [(r.task_id, r.agent_id, r.sats) for r in run.ledger.itertuples()]
