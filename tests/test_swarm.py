"""A live swarm end to end: real runner processes, a real database, the public API.

Every test that takes ``db_url`` or ``make_swarm`` runs on an SQLite file and again on
PostgreSQL (the ``postgres`` marker, see conftest.py).

Who wins, what they are paid, when auctions close, what every bidder hears,
and that nothing posted is ever lost. Expected bids are computed with
`timmy.market.bidding` itself: a bid is a pure function of (seed, agent_id, task_id,
attempt) and the persona, so a test can know every price before it posts.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import Counter, defaultdict

import anyio
import psutil
import pytest

from timmy import AsyncSwarm, Event, Swarm
from timmy.market.auction import Bid, clear
from timmy.market.bidding import bid_rng, quote
from timmy.market.personas import PERSONAS

pytestmark = pytest.mark.postgres

# One description per built-in persona, on-spec for that persona and no other.
SPECIALITIES = {
    "echo": "research the topic and summarise what you find",
    "mace": "audit the firewall for intrusion attempts",
    "helm": "deploy the containers to kubernetes",
    "seer": "predict next month from the sales metric",
    "forge": "fix the bug in the api client",
    "quill": "write a blog article",
    "pixel": "draw a portrait illustration",
    "lyra": "compose a melody for the album",
    "reel": "animate a cinematic clip",
}

TERMINAL = {"completed", "failed", "cancelled"}


def fresh_bids(seed: int, task_id: int, description: str, attempt: int = 1) -> list[Bid]:
    """The bids every built-in persona's first runner makes before it has learned anything."""
    bids = []
    for pid, persona in PERSONAS.items():
        agent_id = f"{pid}-1"
        q = quote(persona, description, bid_rng(seed, agent_id, task_id, attempt))
        bids.append(Bid(agent_id, q.sats, q.on_spec))
    return bids


def as_bids(rows: list[dict]) -> list[Bid]:
    return sorted((Bid(r["agent_id"], r["sats"], bool(r["on_spec"])) for r in rows),
                  key=lambda b: b.agent_id)


def winners(rows: list[dict]) -> list[str]:
    return [r["agent_id"] for r in rows if r["won"]]


# -- who wins ------------------------------------------------------------------


def test_speciality_descriptions_are_on_spec_for_exactly_their_persona():
    for pid, description in SPECIALITIES.items():
        on_spec = [p for p, persona in PERSONAS.items() if persona.is_on_spec(description)]
        assert on_spec == [pid], description


@pytest.mark.timeout(30)
def test_every_specialist_wins_its_task_under_specialist_first(make_swarm):
    swarm = make_swarm(executor="echo")
    swarm.spawn_all()
    for pid, description in SPECIALITIES.items():
        task = swarm.wait(swarm.post(description).task_id, timeout=10)
        assert (task.status, task.assigned_agent, task.attempts) == ("completed", f"{pid}-1", 1)
        assert task.result == description  # the echo executor hands the description back
        won = [r for r in swarm.bids(task.task_id) if r["won"]]
        assert [(r["agent_id"], bool(r["on_spec"]), r["sats"]) for r in won] == \
            [(f"{pid}-1", True, task.price_sats)]


def off_spec_upset(description: str) -> tuple[int, str, str]:
    """A seed under which `lowest` gives ``description`` (task 1) to a cheaper off-spec
    persona than specialist_first does: (seed, specialist, cheap generalist)."""
    for seed in range(1000):
        bids = fresh_bids(seed, 1, description)
        specialist = clear(1, bids, "specialist_first").winner
        cheapest = clear(1, bids, "lowest")
        if cheapest.winner != specialist and not cheapest.winning_bid.on_spec:
            return seed, specialist, cheapest.winner
    raise AssertionError(f"no seed under 1000 makes an off-spec persona win {description!r}")


@pytest.mark.timeout(30)
def test_lowest_rule_lets_a_cheap_off_spec_persona_win_where_specialist_first_does_not(
        tmp_path):
    description = SPECIALITIES["reel"]
    seed, specialist, generalist = off_spec_upset(description)
    assert specialist == "reel-1"
    expected = sorted(fresh_bids(seed, 1, description), key=lambda b: b.agent_id)

    assigned = {}
    for rule in ("specialist_first", "lowest"):
        db = f"sqlite:///{tmp_path / rule}.db"
        with Swarm(db=db, seed=seed, rule=rule, executor="echo", task_seconds=0,
                   auction_window=5) as swarm:
            swarm.spawn_all()
            task = swarm.wait(swarm.post(description).task_id, timeout=10)
            assert as_bids(swarm.bids(task.task_id)) == expected  # the same sealed bids...
            assigned[rule] = (task.assigned_agent, task.price_sats)

    by_agent = {b.agent_id: b.sats for b in expected}
    assert assigned["specialist_first"] == (specialist, by_agent[specialist])
    assert assigned["lowest"] == (generalist, by_agent[generalist])  # ...another winner
    assert by_agent[generalist] < by_agent[specialist]


@pytest.mark.timeout(30)
def test_second_price_pays_the_winner_the_second_lowest_eligible_bid(make_swarm):
    description = "analyse the data and summarise it"   # on-spec for echo and seer
    swarm = make_swarm(rule="second_price", executor="echo")
    swarm.spawn_all()
    task = swarm.wait(swarm.post(description).task_id, timeout=10)

    rows = swarm.bids(task.task_id)
    on_spec = sorted((r["sats"], r["agent_id"]) for r in rows if r["on_spec"])
    assert {a for _, a in on_spec} == {"echo-1", "seer-1"}
    (low, low_agent), (second, _) = on_spec
    assert task.assigned_agent == low_agent == winners(rows)[0]
    assert task.price_sats == second >= low
    assert all(r["rule"] == "second_price" for r in rows)


# -- what every bidder hears ---------------------------------------------------


@pytest.mark.timeout(30)
def test_every_live_runner_bids_once_and_exactly_one_wins(make_swarm):
    swarm = make_swarm()
    agents = swarm.spawn_all()
    for description in ("fix the bug in the api client", "paint the fence"):
        task = swarm.wait(swarm.post(description).task_id, timeout=10)
        by_attempt = defaultdict(list)
        for row in swarm.bids(task.task_id):
            by_attempt[row["attempt"]].append(row)
        assert sorted(by_attempt) == list(range(1, task.attempts + 1))
        for rows in by_attempt.values():   # a failed attempt is auctioned again, to everyone
            assert sorted(r["agent_id"] for r in rows) == sorted(a.agent_id for a in agents)
            assert len(winners(rows)) == 1
        assert winners(by_attempt[task.attempts]) == [task.assigned_agent]


@pytest.mark.timeout(30)
def test_losing_bidders_hear_the_clearing_price(make_swarm, scripted_runner, tmp_path,
                                                 eventually):
    # echo-1 is a program that bids too high to win (the top of its off-spec range) and
    # writes down all it hears; every other persona is the real runner.
    command = scripted_runner("recorder", """
        if args.persona != "echo":
            become_real_runner()
        hello()
        with open(os.path.join(HERE, args.agent_id + ".jsonl"), "a") as log:
            for msg in messages():
                log.write(json.dumps(msg) + "\\n")
                log.flush()
                if msg["type"] == "announce":
                    say("bid", task_id=msg["task_id"], sats=108, on_spec=False)
    """)
    swarm = make_swarm(runner_command=command)
    swarm.spawn_all()
    task = swarm.wait(swarm.post("fix the bug in the api client").task_id, timeout=10)
    assert task.assigned_agent == "forge-1"

    def heard():
        log = tmp_path / "echo-1.jsonl"
        lines = log.read_text().splitlines() if log.exists() else []
        return [m for m in map(json.loads, lines) if m["type"] == "auction_closed"]

    closed = eventually(heard, what="echo-1 hearing the auction close")
    assert closed == [{"v": 1, "type": "auction_closed", "task_id": task.task_id,
                       "winner": "forge-1", "price_sats": task.price_sats}]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("description", [
    "fix the bug\nin the api client\n",                   # newlines inside one message
    'write a "blog" article: {"v": 1, "type": "bid"}',      # JSON-looking text
    "dessine un portrait: café, naïve, 日本語, emoji 🎨",     # non-ASCII
    "x" * 7_999 + "!",                                      # exactly the 8000-character limit
], ids=["newlines", "json-like", "unicode", "longest"])
def test_any_valid_description_reaches_the_runner_intact(make_swarm, description):
    swarm = make_swarm(executor="echo")   # the echo executor returns what it was given
    swarm.spawn("forge")
    task = swarm.wait(swarm.post(description).task_id, timeout=10)
    assert (task.status, task.result, task.description) == ("completed", description, description)
    assert swarm.status()["protocol_errors"] == 0


# -- when auctions close -------------------------------------------------------


@pytest.mark.timeout(30)
def test_auction_closes_early_once_every_runner_has_answered(make_swarm):
    swarm = make_swarm(auction_window=30)
    swarm.spawn_all()
    started = time.monotonic()
    task = swarm.wait(swarm.post("fix the bug in the api client").task_id, timeout=10)
    assert time.monotonic() - started < 5, "waited for the 30 s window"
    assert task.status in TERMINAL and task.assigned_agent is not None
    closed = [e for e in swarm.events() if e.kind == "auction_closed"]
    assert [e.data["closed_by"] for e in closed] == ["complete"] * len(closed)


@pytest.mark.timeout(30)
def test_auction_closes_at_the_window_when_a_runner_never_answers(make_swarm, scripted_runner):
    command = scripted_runner("silent", """
        if args.persona == "forge":
            become_real_runner()
        hello()
        for msg in messages():
            pass   # hears every announcement, never bids
    """)
    swarm = make_swarm(runner_command=command, auction_window=0.3)
    swarm.spawn_all(["forge", "echo"])
    posted = swarm.post("fix the bug in the api client")
    task = swarm.wait(posted.task_id, timeout=10)

    assert (task.status, task.assigned_agent) == ("completed", "forge-1")
    assert task.assigned_at - task.created_at >= 0.25  # it waited for echo-1 until the window
    assert [(r["agent_id"], bool(r["won"])) for r in swarm.bids(task.task_id)] == \
        [("forge-1", True)]
    closed = [e for e in swarm.events() if e.kind == "auction_closed"]
    assert [e.data["closed_by"] for e in closed] == ["window"]


# -- nothing lost --------------------------------------------------------------


def workload(n: int) -> list[str]:
    topics = [*SPECIALITIES.values(), "paint the fence", "analyse the data and summarise it",
              "water the plants"]
    return [f"{topics[i % len(topics)]} (job {i})" for i in range(n)]


@pytest.mark.timeout(60)
def test_three_hundred_tasks_all_finish_and_every_record_adds_up(make_swarm):
    swarm = make_swarm()
    swarm.spawn_all()
    descriptions = workload(300)
    done = swarm.run(descriptions, timeout=45)

    ids = [t.task_id for t in done]
    assert len(set(ids)) == 300
    assert [t.description for t in done] == descriptions
    assert {t.status for t in done} <= TERMINAL

    stored = {t.task_id: t for t in swarm.tasks()}
    assert sorted(stored) == sorted(ids)
    assert all(stored[i].status == t.status for i, t in zip(ids, done, strict=True))
    assert swarm.status()["tasks"] == dict(Counter(t.status for t in done))

    # Every attempt a task used was won by exactly one bid; the last one by its agent.
    won = defaultdict(list)
    bid_tasks = set()
    for row in swarm.iter_bids():          # 300 tasks' bids: more than one page
        bid_tasks.add(row["task_id"])
        if row["won"]:
            won[row["task_id"], row["attempt"]].append(row)
    assert bid_tasks == set(ids)
    for task in done:
        for attempt in range(1, task.attempts + 1):
            assert len(won[task.task_id, attempt]) == 1, (task, attempt)
        if task.status == "completed":
            last = won[task.task_id, task.attempts][0]
            assert (last["agent_id"], last["sats"]) == (task.assigned_agent, task.price_sats)
    assert sum(len(rows) for rows in won.values()) == sum(t.attempts for t in done)

    # The event log has each task's posting and exactly one ending.
    events = list(swarm.iter_events())
    assert [e.event_id for e in events] == list(range(1, len(events) + 1))
    posted = Counter(e.task_id for e in events if e.kind == "task_posted")
    ended = Counter(e.task_id for e in events
                    if e.kind in ("task_completed", "task_failed", "task_cancelled"))
    assert posted == ended == Counter(ids)


@pytest.mark.timeout(30)
def test_same_seed_same_workload_gives_the_same_winners_and_prices(tmp_path):
    descriptions = workload(20)

    def one_run(name: str) -> tuple[list[str], list[tuple]]:
        with Swarm(db=f"sqlite:///{tmp_path / name}.db", seed=7, task_seconds=0,
                   auction_window=5) as swarm:
            agents = [a.agent_id for a in swarm.spawn_all()]
            outcome = []
            for description in descriptions:
                task = swarm.wait(swarm.post(description).task_id, timeout=10)
                outcome.append((task.task_id, task.assigned_agent, task.price_sats,
                                task.attempts, task.status))
            return agents, outcome

    agents_a, first = one_run("a")
    agents_b, second = one_run("b")
    assert agents_a == agents_b == [f"{pid}-1" for pid in PERSONAS]
    assert first == second
    assert [t[0] for t in first] == list(range(1, 21))


# -- the two faces -------------------------------------------------------------


@pytest.mark.timeout(30)
def test_sync_swarm_works_inside_a_running_event_loop(db_url):
    # A Jupyter kernel already runs an event loop when a cell calls the sync API.
    async def notebook_cell():
        assert asyncio.get_running_loop().is_running()
        with Swarm(db=db_url, seed=1, task_seconds=0, auction_window=5) as swarm:
            swarm.spawn("forge")
            return swarm.wait(swarm.post("fix the bug in the api client").task_id, timeout=10)

    task = asyncio.run(notebook_cell())
    assert (task.status, task.assigned_agent) == ("completed", "forge-1")


@pytest.mark.timeout(30)
def test_async_swarm_runs_under_async_with(db_url):
    async def main():
        async with AsyncSwarm(db_url, seed=1, task_seconds=0, auction_window=5) as swarm:
            await swarm.spawn_all(["forge", "quill"])
            done = await swarm.run(["fix the bug in the api client", "write a blog article"],
                                   timeout=10)
            agents = await swarm.agents()
            return done, agents

    done, agents = anyio.run(main)
    assert [t.status for t in done] == ["completed", "completed"]
    assert [t.assigned_agent for t in done] == ["forge-1", "quill-1"]
    assert sorted(a.agent_id for a in agents) == ["forge-1", "quill-1"]


# -- events --------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_subscribers_get_every_event_in_order_until_they_unsubscribe(make_swarm):
    swarm = make_swarm(executor="echo")
    received: list[Event] = []
    threads = set()

    def on_event(event: Event) -> None:
        threads.add(threading.get_ident())
        received.append(event)

    unsubscribe = swarm.subscribe(on_event)
    swarm.spawn("forge")
    task = swarm.wait(swarm.post("fix the bug in the api client").task_id, timeout=10)

    kinds = [e.kind for e in received]
    for earlier, later in [("agent_joined", "bid"), ("bid", "auction_closed"),
                           ("auction_closed", "task_assigned"),
                           ("task_assigned", "task_completed")]:
        assert kinds.index(earlier) < kinds.index(later), kinds
    ids = [e.event_id for e in received]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert next(e for e in received if e.kind == "task_completed").task_id == task.task_id
    # What subscribers heard is what the store recorded.
    stored = {e.event_id: e for e in swarm.events()}
    assert all(stored[e.event_id] == e for e in received)
    assert threading.get_ident() not in threads  # callbacks run on the engine's thread

    unsubscribe()
    count = len(received)
    swarm.wait(swarm.post("fix another bug").task_id, timeout=10)
    assert len(received) == count
    assert len(swarm.events()) > max(ids)


@pytest.mark.timeout(30)
def test_a_subscriber_that_raises_does_not_stop_the_swarm_or_other_subscribers(make_swarm):
    swarm = make_swarm(executor="echo")
    heard: list[str] = []

    def broken(event: Event) -> None:
        raise ValueError("a bug in a notebook callback")

    swarm.subscribe(broken)
    swarm.subscribe(lambda event: heard.append(event.kind))
    swarm.spawn("forge")
    task = swarm.wait(swarm.post("fix the bug in the api client").task_id, timeout=10)
    assert task.status == "completed"
    assert "task_completed" in heard


# -- waiting for a runner ---------------------------------------------------------


@pytest.mark.timeout(30)
def test_a_task_posted_with_no_runners_waits_queued_and_runs_when_one_joins(make_swarm):
    swarm = make_swarm(executor="echo")
    task = swarm.post("fix the bug in the api client")
    time.sleep(0.2)
    assert swarm.task(task.task_id).status == "queued"
    assert swarm.bids(task.task_id) == []

    swarm.spawn("quill")   # off-spec, but the only runner there is
    done = swarm.wait(task.task_id, timeout=10)
    assert (done.status, done.assigned_agent, done.attempts) == ("completed", "quill-1", 1)


@pytest.mark.timeout(30)
def test_a_runner_works_through_a_backlog_one_task_at_a_time(make_swarm):
    swarm = make_swarm(task_seconds=0.01)   # simulated: some attempts fail and are retried
    swarm.spawn("forge")
    done = swarm.run([f"fix bug {i}" for i in range(15)], timeout=20)
    assert {t.assigned_agent for t in done} == {"forge-1"}
    assert {t.status for t in done} <= {"completed", "failed"}

    # Each start is followed by that task's end before the next task starts.
    ends = ("task_completed", "task_requeued", "task_failed")
    lifecycle = [(e.kind, e.task_id) for e in swarm.events()
                 if e.kind == "task_started" or e.kind in ends]
    starts, finishes = lifecycle[::2], lifecycle[1::2]
    assert {kind for kind, _ in starts} == {"task_started"}
    assert {kind for kind, _ in finishes} <= set(ends)
    assert [t for _, t in starts] == [t for _, t in finishes]
    assert len(starts) == sum(t.attempts for t in done)


@pytest.mark.timeout(30)
def test_cancelling_a_queued_task_ends_it_and_it_is_never_auctioned(make_swarm):
    swarm = make_swarm(executor="echo")
    task = swarm.post("fix the bug in the api client")
    cancelled = swarm.cancel(task.task_id)
    assert cancelled.status == "cancelled"
    assert swarm.wait(task.task_id, timeout=1).status == "cancelled"

    swarm.spawn("forge")
    later = swarm.wait(swarm.post("fix another bug").task_id, timeout=10)
    assert later.status == "completed"
    assert swarm.bids(task.task_id) == []
    assert {t.task_id: t.status for t in swarm.tasks()} == \
        {task.task_id: "cancelled", later.task_id: "completed"}


@pytest.mark.timeout(30)
def test_a_swarm_used_without_with_starts_on_first_use_and_close_stops_it(db_url):
    swarm = Swarm(db=db_url, seed=1, task_seconds=0, auction_window=1.0, executor="echo")
    try:
        agent = swarm.spawn("forge")
        assert swarm.wait(swarm.post("fix it").task_id, timeout=10).status == "completed"
    finally:
        swarm.close()
    swarm.close()   # twice is fine
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and psutil_alive(agent.pid):
        time.sleep(0.05)
    assert not psutil_alive(agent.pid)


def psutil_alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
