"""Verification gates payment: the built-in verifiers and registered ones (pass, fail,
timeout, raise), a failed result not paid and its agent left out of the task's next
auctions, live and simulated alike, and a restarted swarm still verifying."""

from __future__ import annotations

import json
import time

import anyio
import pytest

import timmy
from timmy.engine.verifiers import check_spec, verify, verify_sync
from timmy.errors import ConfigError
from timmy.market.lifecycle import Action, after_verification_failure
from timmy.market.verification import parse, unregister_verifier
from timmy.sim.simulator import simulate
from timmy.sim.workloads import demo_descriptions


@pytest.fixture
def schema_file(tmp_path):
    path = tmp_path / "schema.json"
    path.write_text(json.dumps({"type": "object", "required": ["n"],
                                "properties": {"n": {"type": "integer"}}}))
    return str(path)


@pytest.fixture
def registered():
    names = []

    def register(name, fn):
        timmy.register_verifier(name, fn)
        names.append(name)

    yield register
    for name in names:
        unregister_verifier(name)


def both(spec, text, timeout=5.0):
    """The verdict blocking (the simulator's) and async (the coordinator's): they agree."""
    sync = verify_sync(spec, text, timeout)
    live = anyio.run(verify, spec, text, timeout)
    assert sync == live
    return sync


# -- each verifier -----------------------------------------------------------------------


def test_nonempty():
    assert both("nonempty", "x").ok
    got = both("nonempty", "  \n")
    assert not got.ok and got.reason == "the result is empty"


def test_regex():
    assert both("regex:b.x", "a box").ok
    got = both("regex:^zzz", "a box")
    assert not got.ok and "does not match regex '^zzz'" in got.reason


def test_json_schema(schema_file):
    assert both(f"json-schema:{schema_file}", '{"n": 3}').ok
    got = both(f"json-schema:{schema_file}", '{"n": "three"}')
    assert not got.ok and "does not fit the schema" in got.reason
    got = both(f"json-schema:{schema_file}", "not json")
    assert not got.ok and "not JSON" in got.reason


def test_command_gets_the_result_on_stdin():
    assert both("command:grep -q box", "a box").ok
    got = both("command:grep -q box; echo nope >&2; exit 3", "a cat")
    assert not got.ok and "exited with code 3: nope" in got.reason


def test_a_command_past_its_timeout_fails_and_is_killed():
    started = time.monotonic()
    got = both("command:sleep 30", "x", timeout=0.3)
    assert not got.ok and "ran past its 0.3s timeout" in got.reason
    assert time.monotonic() - started < 20


def test_registered_verifier_passes_fails_raises_and_hangs(registered):
    registered("has_x", lambda text: "x" in text)
    registered("why_not", lambda text: (False, "too short"))
    registered("boom", lambda text: 1 / 0)
    registered("hangs", lambda text: time.sleep(30))
    assert both("has_x", "box").ok
    assert not both("has_x", "cat").ok
    assert both("why_not", "cat").reason == "too short"
    got = both("boom", "cat")
    assert not got.ok and "raised ZeroDivisionError" in got.reason
    got = both("hangs", "cat", timeout=0.2)
    assert not got.ok and "gave no answer within 0.2s" in got.reason


@pytest.mark.parametrize(("spec", "needle"), [
    ("", "non-empty"), ("regex:", "needs an argument"), ("regex:(", "bad regex"),
    ("nosuch", "unknown verifier 'nosuch'"), ("frob:x", "unknown verifier 'frob'"),
    ("json-schema:/no/such/file.json", "cannot read JSON Schema"), ("command", "needs an"),
])
def test_a_bad_spec_is_refused_with_a_hint(spec, needle):
    with pytest.raises(ConfigError) as info:
        check_spec(spec)
    assert needle in info.value.message and info.value.hint


def test_registering_a_bad_name_or_a_non_callable_is_refused():
    with pytest.raises(ConfigError) as info:
        timmy.register_verifier("regex", len)
    assert info.value.hint
    with pytest.raises(ConfigError):
        timmy.register_verifier("fine", 3)
    assert parse("nonempty").kind == "nonempty"


def test_the_lifecycle_spends_the_attempt_and_fails_when_nobody_is_left():
    d = after_verification_failure(1, 3, "forge-1", "the result is empty", others=2)
    assert d.action == Action.REQUEUE and d.attempts == 1
    assert d.reason == "verification failed: attempt 1 by forge-1: the result is empty"
    assert after_verification_failure(3, 3, "a-1", "no", 2).action == Action.FAIL
    last = after_verification_failure(1, 3, "a-1", "no", others=0)
    assert last.action == Action.FAIL and "no runner is left" in last.reason


# -- live ----------------------------------------------------------------------------------

# The simulated executor answers "<agent> did: <description>": this pattern fails forge-1's
# and quill-1's results only.
NOT_FORGE = r"regex:^(?!forge-1 |quill-1 )"


@pytest.mark.timeout(120)
def test_a_failed_result_is_not_paid_and_its_agent_is_left_out(make_swarm):
    swarm = make_swarm(seed=4)
    swarm.spawn_all()
    task = swarm.wait(swarm.post("forge a parser for the build", verify=NOT_FORGE).task_id, 30)
    events = [e for e in swarm.events(limit=1000) if e.task_id == task.task_id]
    failed = [e for e in events if e.kind == "verification_failed"]
    assert failed, "forge-1 should have won the first auction and failed verification"
    first = failed[0]
    assert first.agent_id in ("forge-1", "quill-1")
    bids = swarm.bids(task.task_id)
    later = {b["agent_id"] for b in bids if b["attempt"] > first.data["attempt"]}
    assert later and first.agent_id not in later          # excluded from the next auctions
    assert task.status == "completed" and task.assigned_agent not in ("forge-1", "quill-1")
    ledger = swarm.ledger()
    assert [(r["task_id"], r["agent_id"], r["sats"], r["verified"]) for r in ledger] == [
        (task.task_id, task.assigned_agent, task.price_sats, True)]
    assert {a.agent_id: a.earned_sats for a in swarm.agents()}[first.agent_id] == 0
    requeued = [e for e in events if e.kind == "task_requeued"]
    assert requeued[0].data["reason"].startswith(
        f"verification failed: attempt 1 by {first.agent_id}: the result does not match")


@pytest.mark.timeout(120)
def test_a_verifier_that_raises_or_hangs_fails_the_result_and_the_swarm_goes_on(
        make_swarm, registered):
    registered("boom", lambda text: 1 / 0)
    registered("hangs", lambda text: time.sleep(30))
    swarm = make_swarm(executor="echo", verify_timeout=0.3, max_attempts=2)
    swarm.spawn_all(["forge", "quill"])
    boom = swarm.wait(swarm.post("build it", verify="boom").task_id, 30)
    assert boom.status == "failed" and "raised ZeroDivisionError" in boom.reason
    assert boom.reason.startswith("verification failed: attempt 2 by ")
    hung = swarm.wait(swarm.post("build it", verify="hangs").task_id, 30)
    assert hung.status == "failed" and "gave no answer within 0.3s" in hung.reason
    ok = swarm.wait(swarm.post("build a box", verify="command:grep -q box").task_id, 30)
    assert ok.status == "completed"
    assert [r["task_id"] for r in swarm.ledger()] == [ok.task_id]


@pytest.mark.timeout(60)
def test_a_task_fails_when_every_runner_failed_it(make_swarm):
    swarm = make_swarm(executor="echo")
    swarm.spawn("forge")
    task = swarm.wait(swarm.post("build a box", verify="regex:^zzz").task_id, 30)
    assert task.status == "failed" and task.attempts == 1
    assert "no runner is left that has not failed it" in task.reason
    assert swarm.ledger() == [] and swarm.balances() == {}


def test_a_bad_spec_is_refused_at_post_and_nothing_is_stored(make_swarm):
    swarm = make_swarm()
    with pytest.raises(ConfigError, match="unknown verifier") as info:
        swarm.post("build a box", verify="nosuch")
    assert info.value.hint
    assert swarm.tasks() == []


@pytest.mark.timeout(120)
def test_a_restarted_swarm_still_verifies(db_path):
    db = f"sqlite:///{db_path}"
    with timmy.Swarm(db, executor="echo", auction_window=0.5) as swarm:   # no runners
        bad = swarm.post("build a box", verify="regex:^zzz").task_id
        good = swarm.post_many(["build a box"], verify="regex:box")[0].task_id
        plain = swarm.post("build a box").task_id
    with timmy.Swarm(db, executor="echo", auction_window=0.5, max_attempts=1) as swarm:
        swarm.spawn_all(["forge", "quill"])
        tasks = {t: swarm.wait(t, 30) for t in (bad, good, plain)}
        ledger = {r["task_id"]: r["verified"] for r in swarm.ledger()}
    assert tasks[bad].status == "failed" and tasks[bad].reason.startswith("verification failed")
    assert tasks[good].status == tasks[plain].status == "completed"
    assert ledger == {good: True, plain: False}


# -- simulated, and parity -----------------------------------------------------------------


@pytest.mark.timeout(180)
def test_live_and_simulated_verify_the_same_way(tmp_path):
    descriptions = demo_descriptions(24, seed=7)
    with timmy.Swarm(f"sqlite:///{tmp_path / 'live.db'}", seed=7, task_seconds=0) as swarm:
        swarm.spawn_all()
        live = [swarm.wait(swarm.post(d, verify=NOT_FORGE).task_id, 30) for d in descriptions]
        live_ledger = swarm.ledger()
        live_bids = swarm.bids(limit=10_000)
    run = simulate(descriptions, seed=7, task_seconds=0, verify=NOT_FORGE)
    sim = list(run.tasks.itertuples())
    assert [(t.task_id, t.status, t.assigned_agent, t.price_sats, t.attempts) for t in live] \
        == [(t.task_id, t.status, t.assigned_agent, t.price_sats, t.attempts) for t in sim]
    assert [t.reason for t in live] == [None if r != r else r for r in run.tasks.reason]
    assert any((t.reason or "").startswith("verification failed") for t in live)
    assert sorted((b["task_id"], b["attempt"], b["agent_id"], b["sats"], b["won"])
                  for b in live_bids) == sorted(
        (b.task_id, b.attempt, b.agent_id, b.sats, b.won) for b in run.bids.itertuples())
    assert [(r["task_id"], r["attempt"], r["agent_id"], r["sats"], r["verified"])
            for r in live_ledger] == [
        (r.task_id, r.attempt, r.agent_id, r.sats, r.verified) for r in run.ledger.itertuples()]


def test_simulate_checks_its_verify_and_the_compiled_engine_refuses_it():
    with pytest.raises(ConfigError, match="unknown verifier"):
        simulate(["a"], verify="nosuch")
    with pytest.raises(ConfigError, match="2 specs for 1"):
        simulate(["a"], verify=["nonempty", None])
    with pytest.raises(ConfigError, match="does not verify") as info:
        simulate(["a"], verify="nonempty", engine="compiled")
    assert info.value.hint
    run = simulate(["fix the bug", "fix the bug"], verify=["regex:^zzz", None], max_attempts=1,
                   engine="auto")
    assert list(run.tasks.status) == ["failed", "completed"]
    assert list(run.ledger.task_id) == [2] and not run.ledger.verified[0]
