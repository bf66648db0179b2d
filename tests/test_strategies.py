"""Bidding strategies per persona (issue 14, point 2): adaptive (the default, unchanged),
truthful, shade, bandit; their bids, their ranges, what the bandit learns, persona files,
and the same bids live and simulated, also across a runner's restart."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs

import timmy
from timmy.errors import ConfigError, PersonaError
from timmy.market import bidding, strategies
from timmy.market.bidding import BidStats, bid_range, bid_rng, quote, quote_matched
from timmy.market.personas import PERSONAS, Persona, parse_personas, persona_from_dict
from timmy.market.strategies import MARKUPS, markup, probabilities
from timmy.sim.simulator import simulate
from timmy.sim.workloads import demo_descriptions

FORGE = PERSONAS["forge"]
ON, OFF = "fix the bug in the parser", "write a blog post about the launch"


def with_strategy(persona: Persona, strategy: str) -> Persona:
    return dataclasses.replace(persona, strategy=strategy)


# -- each strategy's bids on fixed inputs -------------------------------------------------


def bids_of(strategy: str, stats: BidStats | None = None) -> list[int]:
    p = with_strategy(FORGE, strategy)
    return [quote(p, d, bid_rng(7, "forge-1", t, 1), stats).sats
            for t in (1, 2, 3) for d in (ON, OFF)]


def test_the_default_strategy_is_adaptive_and_bids_as_before():
    assert FORGE.strategy == "adaptive"
    assert all(p.strategy == "adaptive" for p in PERSONAS.values())
    # the adaptive rule itself, as tests/test_golden.py pins it
    assert bids_of("adaptive") == [quote(FORGE, d, bid_rng(7, "forge-1", t, 1)).sats
                                   for t in (1, 2, 3) for d in (ON, OFF)]


def test_truthful_bids_the_cost_bid_base_on_spec_and_1_8_times_off_spec():
    assert bids_of("truthful") == [38, 68] * 3
    assert strategies.cost(FORGE, True) == 38 and strategies.cost(FORGE, False) == 68


def test_shade_bids_a_fixed_fraction_above_cost():
    assert bids_of("shade") == [46, 82] * 3             # default 0.2: round(38 * 1.2) ...
    assert bids_of("shade:0.5") == [57, 102] * 3
    assert bids_of("shade:0") == bids_of("truthful")


def test_bandit_draws_an_arm_of_its_grid_from_the_keyed_draws():
    assert bids_of("bandit") == [42, 75, 76, 136, 46, 82]   # arms 1, 6, 2 (one draw a task)
    assert bids_of("bandit") == bids_of("bandit")       # keyed: the same every time
    # learned weights that favour one arm make it the usual bid
    stats = BidStats(bandit=[0.0, 0.0, 0.0, 50.0, 0.0, 0.0, 0.0])
    assert bids_of("bandit:0.01", stats) == [49, 88] * 3


def test_bids_stay_within_min_and_max_bid():
    big = persona_from_dict({"id": "big", "role": "r", "bid_base": 199, "bid_jitter": 0,
                             "preferred_keywords": ["fix"], "strategy": "shade:1"})
    assert quote(big, ON, bid_rng(1, "big-1", 1, 1)).sats == 200
    assert quote(big, OFF, bid_rng(1, "big-1", 1, 1)).sats == 200


def test_the_strategies_module_agrees_with_bidding_on_the_limits():
    assert (strategies.MIN_BID, strategies.MAX_BID, strategies.OFF_SPEC_FACTOR) == (
        bidding.MIN_BID, bidding.MAX_BID, bidding.OFF_SPEC_FACTOR)
    assert len(MARKUPS) == bidding.BANDIT_ARMS


# -- persona files --------------------------------------------------------------------------


TOML = """
[[persona]]
id = "haggler"
role = "Coder"
bid_base = 40
bid_jitter = 5
preferred_keywords = ["code"]
strategy = "{}"
"""


@pytest.mark.parametrize(("text", "kept"), [
    ("truthful", "truthful"), ("shade", "shade"), ("Shade:0.30", "shade:0.3"),
    ("bandit", "bandit"), ("bandit:0.25", "bandit:0.25"), ("adaptive", "adaptive"),
])
def test_a_persona_file_names_its_strategy(text, kept):
    toml = parse_personas(TOML.format(text), ".toml", "p.toml")["haggler"]
    js = parse_personas(json.dumps([{"id": "haggler", "role": "Coder", "bid_base": 40,
                                     "bid_jitter": 5, "preferred_keywords": ["code"],
                                     "strategy": text}]), ".json", "p.json")["haggler"]
    assert toml.strategy == js.strategy == kept


def test_a_persona_file_without_a_strategy_is_adaptive():
    toml = TOML.replace('strategy = "{}"\n', "")
    assert parse_personas(toml, ".toml", "p.toml")["haggler"].strategy == "adaptive"


@pytest.mark.parametrize(("text", "says"), [
    ('"greedy"', "unknown strategy 'greedy' (known: adaptive, truthful, shade, bandit)"),
    ('"shade:1.5"', "the parameter must be in [0, 1], got 1.5"),
    ('"shade:-0.1"', "the parameter must be in [0, 1]"),
    ('"shade:lots"', "'lots' is not a number"),
    ('"bandit:0"', "the parameter must be in (0, 1], got 0"),
    ('"truthful:0.1"', "strategy 'truthful' takes no parameter"),
    ('"shade:nan"', "the parameter must be in"),
    ("3", "strategy must be a string, got int"),
    ('["bandit"]', "strategy must be a string, got list"),
])
def test_a_bad_strategy_is_a_persona_error_naming_the_field_and_the_known_ones(text, says):
    with pytest.raises(PersonaError) as err:
        parse_personas(TOML.replace('"{}"', text), ".toml", "p.toml")
    assert err.value.message.startswith("p.toml persona #1: field 'strategy': ")
    assert says in err.value.message
    assert "adaptive" in err.value.hint and "shade:0.2" in err.value.hint


def test_a_persona_made_in_python_with_a_bad_strategy_is_refused():
    with pytest.raises(PersonaError, match="unknown strategy 'nope'"):
        with_strategy(FORGE, "nope")


# -- the learned state travels: BidStats -----------------------------------------------------


def test_old_learned_counters_still_load_and_are_written_as_before():
    old = {"auctions": 5, "wins": 1, "won_ok": 1, "won_failed": 0,
           "keyword_successes": {"fix": 1}}
    stats = BidStats.from_dict(old)
    assert stats.bandit == [] and stats.to_dict() == old
    assert BidStats.from_dict({"auctions": 2}).to_dict()["auctions"] == 2


def test_a_bandits_weights_travel_in_the_counters():
    stats = BidStats(auctions=3, wins=2, bandit=[0.5, -0.25, 0.0, 1e-17, 0.0, -3.0, 0.0])
    data = json.loads(json.dumps(stats.to_dict()))
    assert BidStats.from_dict(data) == stats


@pytest.mark.parametrize("bandit", [[0.0] * 3, [math.inf] + [0.0] * 6, "weights",
                                    {"a": 1}, ["x"] * 7])
def test_bad_bandit_weights_are_a_config_error(bandit):
    with pytest.raises(ConfigError, match="stats is not a set of learned counters") as err:
        BidStats.from_dict({"auctions": 1, "bandit": bandit})
    assert err.value.hint


# -- bid_range covers every strategy ----------------------------------------------------------


strategy_texts = hs.one_of(
    hs.sampled_from(["adaptive", "truthful", "shade", "bandit"]),
    hs.floats(0, 1).map(lambda f: f"shade:{f}"),
    hs.floats(0.001, 1).map(lambda g: f"bandit:{g}"),
)
weights = hs.one_of(hs.just([]), hs.lists(hs.floats(-50, 50), min_size=7, max_size=7))


@settings(max_examples=400, deadline=None)
@given(base=hs.integers(2, 199), jitter=hs.integers(0, 200), strategy=strategy_texts,
       on_spec=hs.booleans(), seed=hs.integers(-(2**63), 2**63 - 1),
       task=hs.integers(1, 2**62), attempt=hs.integers(1, 1000), bandit=weights,
       auctions=hs.integers(0, 20), wins=hs.integers(0, 20), ok=hs.integers(0, 5),
       failed=hs.integers(0, 5), proven=hs.integers(0, 5))
def test_every_strategys_bids_land_inside_its_range(base, jitter, strategy, on_spec, seed,
                                                    task, attempt, bandit, auctions, wins,
                                                    ok, failed, proven):
    persona = Persona(id="p", name="P", role="r", description="", capabilities=(),
                      rate_sats=base, bid_base=base, bid_jitter=jitter,
                      preferred_keywords=("code",), strategy=strategy)
    stats = BidStats(auctions=max(auctions, wins), wins=wins, won_ok=ok, won_failed=failed,
                     keyword_successes={"code": proven}, bandit=bandit)
    q = quote_matched(persona, ("code",) if on_spec else (), bid_rng(seed, "p-1", task, attempt),
                      stats)
    lo, hi = bid_range(persona, on_spec)
    assert lo <= q.sats <= hi
    assert bid_range(persona)[0] <= q.sats <= bid_range(persona)[1]


# -- the bandit learns ------------------------------------------------------------------------


def test_the_bandit_moves_its_markup_toward_what_wins():
    """Against a rival who always bids 50 sats, forge (cost 38) wins with markups up to 0.3
    (49 sats) and earns most at 0.3: that is where the bandit ends up."""
    forge = with_strategy(FORGE, "bandit")
    stats = BidStats()
    start = markup(stats)
    for t in range(1, 1501):
        q = quote_matched(forge, ("fix",), bid_rng(3, "forge-1", t, 1), stats)
        strategies.record_auction(forge, stats, q.sats < 50, q.sats, True, q.sats)
    probs = probabilities(stats.bandit, 0.1)
    assert max(range(len(MARKUPS)), key=probs.__getitem__) == MARKUPS.index(0.3)
    assert probs[MARKUPS.index(0.3)] > 0.5
    assert abs(markup(stats) - 0.3) < abs(start - 0.3)
    # deterministic: the same draws learn the same weights
    again = BidStats()
    for t in range(1, 1501):
        q = quote_matched(forge, ("fix",), bid_rng(3, "forge-1", t, 1), again)
        strategies.record_auction(forge, again, q.sats < 50, q.sats, True, q.sats)
    assert again.bandit == stats.bandit


def test_only_a_bandit_learns_beyond_the_counters_and_only_from_wins():
    for text in ("adaptive", "truthful", "shade"):
        stats = BidStats()
        strategies.record_auction(with_strategy(FORGE, text), stats, True, 42, True, 42)
        assert (stats.auctions, stats.wins, stats.bandit) == (1, 1, [])
    stats, bandit = BidStats(), with_strategy(FORGE, "bandit")
    strategies.record_auction(bandit, stats, False, 42, True, 40)
    assert (stats.auctions, stats.bandit) == (1, [])
    strategies.record_auction(bandit, stats, True, 42, True, 42)
    assert stats.bandit and stats.bandit.index(0.0) == 1   # the 0.1 arm (42 sats) credited
    before = list(stats.bandit)
    strategies.record_auction(bandit, stats, True, 43, True, 43)   # no arm bids 43: none
    assert stats.bandit == before


# -- the compiled engine --------------------------------------------------------------------


def catalog(strategy: str) -> dict[str, Persona]:
    return {pid: with_strategy(p, strategy) for pid, p in PERSONAS.items()}


def test_the_compiled_engine_refuses_other_strategies_and_auto_takes_python():
    work = demo_descriptions(40, seed=2)
    mixed = dict(PERSONAS, forge=with_strategy(FORGE, "bandit"))
    with pytest.raises(ConfigError, match="adaptive strategy only, not bandit") as err:
        simulate(work, personas=mixed, engine="compiled")
    assert 'engine="python"' in err.value.hint
    auto = simulate(work, personas=mixed, seed=2, engine="auto")
    python = simulate(work, personas=mixed, seed=2, engine="python")
    assert auto.bids.equals(python.bids) and auto.tasks.equals(python.tasks)


def test_the_compiled_kernel_itself_refuses_another_strategy():
    pytest.importorskip("numba")
    from timmy.sim.compiled import simulate_sequential

    with pytest.raises(ConfigError, match="adaptive strategy only"):
        simulate_sequential(["fix it"], catalog=catalog("truthful"), agent_ids=["forge-1"],
                            seed=0, rule="lowest", task_seconds=0, max_attempts=3,
                            sink=lambda *a: None)


# -- live and simulated alike --------------------------------------------------------------


MIXED = {**PERSONAS, "forge": with_strategy(FORGE, "bandit"),
         "quill": with_strategy(PERSONAS["quill"], "truthful"),
         "helm": with_strategy(PERSONAS["helm"], "shade:0.15"),
         "seer": with_strategy(PERSONAS["seer"], "bandit:0.3")}


def live_run(tmp_path, descriptions, personas, **kwargs):
    with timmy.Swarm(f"sqlite:///{tmp_path / 'live.db'}", personas=personas, **kwargs) as swarm:
        swarm.spawn_all()
        tasks = [swarm.wait(swarm.post(d).task_id, timeout=20) for d in descriptions]
        return tasks, swarm.bids()


def same(live, live_bids, run) -> None:
    sim = list(run.tasks.itertuples())
    assert [(t.task_id, t.status, t.assigned_agent, t.price_sats, t.attempts) for t in live] \
        == [(t.task_id, t.status, t.assigned_agent, t.price_sats, t.attempts) for t in sim]
    assert sorted((b["task_id"], b["attempt"], b["agent_id"], b["sats"], b["on_spec"], b["won"])
                  for b in live_bids) == sorted(
        zip(run.bids.task_id, run.bids.attempt, run.bids.agent_id, run.bids.sats,
            run.bids.on_spec, run.bids.won, strict=True))


@pytest.mark.parametrize("personas", ["truthful", "shade", "bandit", "mixed"])
@pytest.mark.parametrize("rule", ["specialist_first", "second_price"])
@pytest.mark.timeout(90)
def test_live_and_simulated_pick_the_same_winner_at_the_same_price(tmp_path, personas, rule):
    cat = MIXED if personas == "mixed" else catalog(personas)
    descriptions = demo_descriptions(60, seed=11)
    live, live_bids = live_run(tmp_path, descriptions, cat, seed=5, rule=rule,
                               task_seconds=0)
    run = simulate(descriptions, personas=cat, seed=5, rule=rule, task_seconds=0)
    same(live, live_bids, run)
    if personas in ("bandit", "mixed"):   # the bandits learned: not every bid is untrained
        texts = dict(zip(run.tasks.task_id, run.tasks.description, strict=True))
        bandits = [b for b in run.bids.itertuples()
                   if cat[b.agent_id.split("-")[0]].strategy.startswith("bandit")]
        untrained = [quote(cat[b.agent_id.split("-")[0]], texts[b.task_id],
                           bid_rng(5, b.agent_id, b.task_id, b.attempt)).sats for b in bandits]
        assert sum(u != b.sats for u, b in zip(untrained, bandits, strict=True)) > 0


@pytest.mark.timeout(90)
def test_a_restarted_runner_keeps_what_its_bandit_learned(tmp_path, eventually):
    """forge bids as a bandit; it is killed half-way and its replacement bids on from the
    weights its coordinator mirrored: every bid equals the simulator's, which never
    restarts it, and some of them differ from what an untrained bandit would bid."""
    cat = {"forge": with_strategy(FORGE, "bandit:0.3"), "quill": PERSONAS["quill"]}
    descriptions = [f"fix the bug number {i} in the code" for i in range(40)]
    with timmy.Swarm(f"sqlite:///{tmp_path / 'live.db'}", personas=cat, seed=9,
                     task_seconds=0) as swarm:
        swarm.spawn_all()
        live = [swarm.wait(swarm.post(d).task_id, timeout=20) for d in descriptions[:20]]
        victim = {a.agent_id: a for a in swarm.agents()}["forge-1"].pid
        swarm.kill("forge-1")

        def replaced():
            forge = {a.agent_id: a for a in swarm.agents()}["forge-1"]
            return forge.status == "idle" and forge.pid not in (None, victim)

        eventually(replaced, what="forge-1 replaced", timeout=15)
        live += [swarm.wait(swarm.post(d).task_id, timeout=20) for d in descriptions[20:]]
        live_bids = swarm.bids()
        assert {a.agent_id: a for a in swarm.agents()}["forge-1"].restarts == 1
    run = simulate(descriptions, personas=cat, seed=9, task_seconds=0)
    same(live, live_bids, run)
    after = [b for b in run.bids.itertuples() if b.agent_id == "forge-1" and b.task_id > 20]
    untrained = [quote(cat["forge"], descriptions[b.task_id - 1],
                       bid_rng(9, "forge-1", b.task_id, b.attempt)).sats for b in after]
    assert sum(u != b.sats for u, b in zip(untrained, after, strict=True)) > 0
