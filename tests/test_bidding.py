"""How a persona prices a task: the bid formulas, the keyed RNG, adaptive `BidStats`."""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from timmy.errors import PersonaError
from timmy.market.bidding import (
    MAX_BID,
    MIN_BID,
    BidStats,
    KeyedRandom,
    bid_rng,
    compute_bid,
    quote,
)
from timmy.market.personas import PERSONAS, Persona, persona_from_dict

REPO = Path(__file__).resolve().parents[1]
OFF_SPEC = "the weather is nice today"  # no built-in keyword occurs in it


class FixedRng:
    """An rng whose ``randint`` returns one chosen draw and records the bounds it was asked."""

    def __init__(self, draw: int) -> None:
        self.draw = draw
        self.calls: list[tuple[int, int]] = []

    def randint(self, a: int, b: int) -> int:
        self.calls.append((a, b))
        assert a <= self.draw <= b, f"draw {self.draw} outside the asked range [{a}, {b}]"
        return self.draw


def custom_persona(bid_base: int, bid_jitter: int) -> Persona:
    return Persona(
        id="zed",
        name="Zed",
        role="Tester",
        description="",
        capabilities=(),
        rate_sats=bid_base,
        bid_base=bid_base,
        bid_jitter=bid_jitter,
        preferred_keywords=("zork", "frob nicate"),
    )


def on_spec_text(persona: Persona, keyword: str | None = None) -> str:
    return f"please {keyword or persona.preferred_keywords[0]} this today"


builtins = st.sampled_from(list(PERSONAS.values()))
customs = st.builds(custom_persona, st.integers(2, 200), st.integers(0, 200))
any_persona = builtins | customs
seeds = st.integers(-(2**70), 2**70)
agent_ids = st.text(min_size=1, max_size=24)
task_ids = st.integers(1, 2**62)
attempts = st.integers(1, 1000)
keys = st.tuples(seeds, agent_ids, task_ids, attempts)


@st.composite
def on_spec_descriptions(draw, persona: Persona) -> str:
    return on_spec_text(persona, draw(st.sampled_from(persona.preferred_keywords)))


@st.composite
def bid_stats(draw, persona: Persona | None = None) -> BidStats:
    """Any counters at all, including inconsistent ones (more wins than auctions)."""
    n = st.integers(0, 10**9)
    keywords = list(persona.preferred_keywords) if persona else ["zork", "bug"]
    return BidStats(
        auctions=draw(n),
        wins=draw(n),
        won_ok=draw(n),
        won_failed=draw(n),
        keyword_successes=draw(st.dictionaries(st.sampled_from(keywords), n, max_size=4)),
    )


@st.composite
def consistent_stats(draw) -> BidStats:
    """Counters a real run can produce: wins <= auctions, outcomes <= wins."""
    auctions = draw(st.integers(0, 500))
    wins = draw(st.integers(0, auctions))
    won_ok = draw(st.integers(0, wins))
    won_failed = draw(st.integers(0, wins - won_ok))
    return auctions, wins, won_ok, won_failed


def off_spec_floor(persona: Persona) -> int:
    return min(MAX_BID, math.floor(1.8 * persona.bid_base))


# -- the formulas ----------------------------------------------------------------------------


@given(st.data())
def test_on_spec_bid_is_base_minus_the_jitter_draw(data):
    persona = data.draw(any_persona)
    description = data.draw(on_spec_descriptions(persona))
    draw = data.draw(st.integers(0, persona.bid_jitter))
    rng = FixedRng(draw)
    assert compute_bid(persona, description, rng) == max(1, persona.bid_base - draw)
    assert rng.calls == [(0, persona.bid_jitter)]


@given(st.data())
def test_off_spec_bid_is_1_8_times_base_plus_the_jitter_draw(data):
    persona = data.draw(any_persona)
    draw = data.draw(st.integers(0, persona.bid_jitter))
    rng = FixedRng(draw)
    expected = min(200, math.floor(1.8 * persona.bid_base) + draw)
    assert compute_bid(persona, OFF_SPEC, rng) == expected
    assert rng.calls == [(0, persona.bid_jitter)]


@given(st.data(), keys)
def test_on_spec_bid_lies_in_base_minus_jitter_to_base(data, key):
    persona = data.draw(any_persona)
    description = data.draw(on_spec_descriptions(persona))
    sats = compute_bid(persona, description, bid_rng(*key))
    assert max(1, persona.bid_base - persona.bid_jitter) <= sats <= persona.bid_base


@given(any_persona, keys)
def test_off_spec_bid_lies_in_floor_1_8_base_plus_jitter(persona, key):
    sats = compute_bid(persona, OFF_SPEC, bid_rng(*key))
    low = off_spec_floor(persona)
    assert low <= sats <= min(MAX_BID, low + persona.bid_jitter)


def test_on_spec_bid_never_drops_below_one():
    persona = custom_persona(bid_base=2, bid_jitter=200)
    assert compute_bid(persona, "zork", FixedRng(200)) == 1


def test_off_spec_bid_is_capped_at_200():
    persona = custom_persona(bid_base=150, bid_jitter=200)
    assert compute_bid(persona, OFF_SPEC, FixedRng(200)) == 200


@pytest.mark.parametrize("persona", list(PERSONAS.values()), ids=list(PERSONAS))
def test_forge_and_friends_quote_their_keywords_and_flag(persona):
    description = on_spec_text(persona)
    q = quote(persona, description, FixedRng(0))
    assert q.on_spec is True
    assert list(q.keywords) == persona.matched_keywords(description)
    assert q.sats == compute_bid(persona, description, FixedRng(0))
    off = quote(persona, OFF_SPEC, FixedRng(0))
    assert off.on_spec is False
    assert off.keywords == ()


# -- on-spec is always cheaper than off-spec ---------------------------------------------------


def all_bids(persona: Persona, description: str, stats: BidStats | None = None) -> list[int]:
    """Every bid ``persona`` can make for ``description``: one per possible jitter draw."""
    return [
        compute_bid(persona, description, FixedRng(j), stats) for j in range(persona.bid_jitter + 1)
    ]


@given(st.data())
def test_every_on_spec_bid_is_below_every_off_spec_bid_for_builtins(data):
    persona = data.draw(builtins)
    description = data.draw(on_spec_descriptions(persona))
    assert max(all_bids(persona, description)) < min(all_bids(persona, OFF_SPEC))


@given(st.data())
def test_every_on_spec_bid_is_below_every_off_spec_bid_with_learned_stats(data):
    persona = data.draw(builtins)
    description = data.draw(on_spec_descriptions(persona))
    stats = data.draw(bid_stats(persona))
    on = all_bids(persona, description, stats)
    off = all_bids(persona, OFF_SPEC, stats)
    assert max(on) < min(off), f"stats={stats}"


def test_every_on_spec_bid_is_below_every_off_spec_bid_for_any_valid_persona():
    # Exhaustive over every bid_base that persona validation accepts; jitter 0 is the worst
    # case (the highest on-spec bid), and the lowest off-spec bid does not depend on jitter.
    for bid_base in range(-5, 400):
        record = {"id": "zed", "role": "Tester", "bid_base": bid_base, "bid_jitter": 0,
                  "preferred_keywords": ["zork"]}  # fmt: skip
        try:
            persona = persona_from_dict(record)
        except PersonaError:
            continue
        on, off = max(all_bids(persona, "zork")), min(all_bids(persona, OFF_SPEC))
        assert on < off, (
            f"BUG timmy.market.personas: bid_base={bid_base} is accepted, but its highest on-spec "
            "bid "
            f"{on} is not below its lowest off-spec bid {off} (off-spec is capped at "
            "MAX_BID=200); the bid_base limit should be [2, 199]"
        )


# -- range, for any counters ----------------------------------------------------------------


@given(st.data(), keys)
def test_bid_is_within_1_and_200_for_any_stats_counters(data, key):
    persona = data.draw(any_persona)
    description = data.draw(st.sampled_from([OFF_SPEC, on_spec_text(persona)]))
    stats = data.draw(bid_stats(persona))
    sats = compute_bid(persona, description, bid_rng(*key), stats)
    assert MIN_BID <= sats <= MAX_BID
    assert (MIN_BID, MAX_BID) == (1, 200)


@given(st.data())
def test_bid_with_realistic_stats_moves_at_most_by_the_combined_multipliers(data):
    persona = data.draw(builtins)
    description = data.draw(st.sampled_from([OFF_SPEC, on_spec_text(persona)]))
    auctions, wins, won_ok, won_failed = data.draw(consistent_stats())
    stats = BidStats(auctions, wins, won_ok, won_failed)
    j = data.draw(st.integers(0, persona.bid_jitter))
    plain = compute_bid(persona, description, FixedRng(j))
    learned = compute_bid(persona, description, FixedRng(j), stats)
    assert round(plain * 0.85) <= learned <= min(200, round(plain * 1.15 * 1.2))


# -- the keyed random source --------------------------------------------------------------------


@given(keys)
def test_bid_rng_is_deterministic_for_the_same_key(key):
    a, b = bid_rng(*key), bid_rng(*key)
    assert [a.bits() for _ in range(10)] == [b.bits() for _ in range(10)]
    a, b = bid_rng(*key), bid_rng(*key)
    assert [a.randint(0, 20) for _ in range(10)] == [b.randint(0, 20) for _ in range(10)]


@given(st.data(), keys)
def test_same_key_gives_the_same_bid(data, key):
    persona = data.draw(builtins)
    description = data.draw(st.sampled_from([OFF_SPEC, on_spec_text(persona)]))
    assert compute_bid(persona, description, bid_rng(*key)) == compute_bid(
        persona, description, bid_rng(*key)
    )


@given(keys, st.integers(0, 3), st.data())
def test_bid_rng_differs_when_any_part_of_the_key_changes(key, which, data):
    changed = list(key)
    strategy = [seeds, agent_ids, task_ids, attempts][which]
    changed[which] = data.draw(strategy.filter(lambda v: v != key[which]))
    if which == 0:  # seeds are taken modulo 2**64
        changed[0] += 0 if (changed[0] - key[0]) % 2**64 else 1
    # A 64-bit draw collides by chance with probability 2**-64.
    assert bid_rng(*key).bits() != bid_rng(*changed).bits(), f"{key} vs {changed}"


def test_draws_of_one_key_look_independent():
    rng = bid_rng(1, "forge-1", 1, 1)
    draws = [rng.bits() for _ in range(1000)]
    assert len(set(draws)) == 1000


def test_jitter_draws_are_uniform_across_tasks():
    jitter = PERSONAS["forge"].bid_jitter  # 18 possible values
    n = 18 * 200
    counts = Counter(bid_rng(7, "forge-1", t, 1).randint(0, jitter) for t in range(1, n + 1))
    assert set(counts) == set(range(jitter + 1))
    # Expected 200 each; +-40 % is far outside chance for a sound generator.
    assert all(120 <= c <= 280 for c in counts.values()), counts


@pytest.mark.parametrize("part", ["seed", "agent_id", "task_id", "attempt"])
def test_changing_one_key_part_changes_the_bids_like_an_independent_draw(part):
    forge = PERSONAS["forge"]
    same = 0
    n = 2000
    for i in range(1, n + 1):
        key = {"seed": 5, "agent_id": "forge-1", "task_id": i, "attempt": 1}
        other = dict(key)
        other[part] = {"seed": 6, "agent_id": "forge-2", "task_id": i + n, "attempt": 2}[part]
        a = compute_bid(forge, "fix the bug", bid_rng(**key))
        b = compute_bid(forge, "fix the bug", bid_rng(**other))
        same += a == b
    # Independent draws agree with probability 1/18 (~5.6 %).
    assert 0.02 < same / n < 0.10, same / n


@given(st.integers(0, 2**64 - 1), st.integers(-1000, 1000), st.integers(0, 1000))
def test_keyed_random_stays_within_its_ranges(key, a, width):
    rng = KeyedRandom(key)
    for _ in range(5):
        assert 0.0 <= rng.random() < 1.0
        assert a <= rng.randint(a, a + width) <= a + width


def test_keyed_random_reaches_both_ends_of_randint():
    rng = KeyedRandom(12345)
    assert {rng.randint(0, 3) for _ in range(200)} == {0, 1, 2, 3}


SUBPROCESS_SCRIPT = """
import json, sys
from timmy.market.bidding import bid_rng, compute_bid
from timmy.market.personas import PERSONAS
out = []
for seed, agent, task, attempt in json.loads(sys.argv[1]):
    rng = bid_rng(seed, agent, task, attempt)
    bits = [rng.bits() for _ in range(3)]
    on = compute_bid(PERSONAS["forge"], "fix the bug", bid_rng(seed, agent, task, attempt))
    off = compute_bid(PERSONAS["reel"], "paint a fence", bid_rng(seed, agent, task, attempt))
    out.append([bits, on, off])
print(json.dumps(out))
"""

SUBPROCESS_KEYS = [
    [1, "forge-1", 1, 1],
    [1, "forge-1", 1, 2],
    [42, "reel-3", 987654321, 1],
    [0, "a very long agent id with ünïcode ✓", 2**62, 1000],
    [-7, "x", 3, 4],
]


def in_process_answer(keys_list):
    out = []
    for seed, agent, task, attempt in keys_list:
        rng = bid_rng(seed, agent, task, attempt)
        bits = [rng.bits() for _ in range(3)]
        on = compute_bid(PERSONAS["forge"], "fix the bug", bid_rng(seed, agent, task, attempt))
        off = compute_bid(PERSONAS["reel"], "paint a fence", bid_rng(seed, agent, task, attempt))
        out.append([bits, on, off])
    return out


@pytest.mark.parametrize("hashseed", ["0", "1", "4242"])
def test_same_key_gives_the_same_bid_in_a_fresh_process_whatever_the_hash_seed(hashseed):
    env = dict(os.environ, PYTHONHASHSEED=hashseed)
    proc = subprocess.run(
        [sys.executable, "-c", SUBPROCESS_SCRIPT, json.dumps(SUBPROCESS_KEYS)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert json.loads(proc.stdout) == in_process_answer(SUBPROCESS_KEYS)


# -- compute_bid accepts random.Random ---------------------------------------------------------


@given(st.integers(), st.data())
def test_compute_bid_accepts_random_random(seed, data):
    persona = data.draw(builtins)
    on = compute_bid(persona, on_spec_text(persona), random.Random(seed))
    assert on == max(1, persona.bid_base - random.Random(seed).randint(0, persona.bid_jitter))
    off = compute_bid(persona, OFF_SPEC, random.Random(seed))
    expected = min(
        200, math.floor(1.8 * persona.bid_base) + random.Random(seed).randint(0, persona.bid_jitter)
    )
    assert off == expected


def test_compute_bid_with_random_random_is_deterministic_for_a_seed():
    forge = PERSONAS["forge"]
    first = [compute_bid(forge, "fix the bug", random.Random(9)) for _ in range(5)]
    assert len(set(first)) == 1


# -- BidStats: the learning rules ---------------------------------------------------------------

FORGE = PERSONAS["forge"]  # bid_base 38: on-spec 38 and off-spec 68 with a zero draw
ON = "fix the bug in the api"


def forge_bids(stats: BidStats | None) -> tuple[int, int]:
    return compute_bid(FORGE, ON, FixedRng(0), stats), compute_bid(
        FORGE, OFF_SPEC, FixedRng(0), stats
    )


def test_zero_draw_baseline_is_38_on_spec_and_68_off_spec():
    assert forge_bids(None) == (38, 68)


@pytest.mark.parametrize("auctions", [0, 1, 2])
def test_stats_change_nothing_before_three_auctions(auctions):
    stats = BidStats(
        auctions=auctions,
        wins=auctions,
        won_ok=0,
        won_failed=auctions,
        keyword_successes={"bug": 10, "api": 10},
    )
    assert stats.multiplier(["bug"]) == 1.0
    assert forge_bids(stats) == forge_bids(None)


def test_fresh_stats_change_nothing():
    assert forge_bids(BidStats()) == (38, 68)


def test_win_rate_above_80_percent_raises_bids_by_15_percent():
    stats = BidStats(auctions=3, wins=3)
    assert stats.multiplier() == pytest.approx(1.15)
    assert forge_bids(stats) == (round(38 * 1.15), round(68 * 1.15))  # (44, 78)


@pytest.mark.parametrize(("auctions", "wins"), [(5, 4), (10, 8)])
def test_win_rate_of_exactly_80_percent_changes_nothing(auctions, wins):
    assert forge_bids(BidStats(auctions=auctions, wins=wins)) == (38, 68)


def test_win_rate_just_above_80_percent_raises_bids():
    assert forge_bids(BidStats(auctions=100, wins=81)) == (44, 78)


def test_win_rate_below_20_percent_lowers_bids_by_15_percent():
    stats = BidStats(auctions=10, wins=1)
    assert stats.multiplier() == pytest.approx(0.85)
    assert forge_bids(stats) == (round(38 * 0.85), round(68 * 0.85))  # (32, 58)


def test_never_winning_lowers_bids():
    assert forge_bids(BidStats(auctions=3, wins=0)) == (32, 58)


@pytest.mark.parametrize(("auctions", "wins"), [(5, 1), (10, 2)])
def test_win_rate_of_exactly_20_percent_changes_nothing(auctions, wins):
    assert forge_bids(BidStats(auctions=auctions, wins=wins)) == (38, 68)


def test_low_success_on_won_tasks_raises_bids_by_20_percent():
    stats = BidStats(auctions=10, wins=5, won_ok=1, won_failed=2)
    assert stats.multiplier() == pytest.approx(1.2)
    assert forge_bids(stats) == (round(38 * 1.2), round(68 * 1.2))  # (46, 82)


def test_success_rate_of_exactly_half_changes_nothing():
    assert forge_bids(BidStats(auctions=10, wins=5, won_ok=2, won_failed=2)) == (38, 68)


def test_fewer_than_three_won_outcomes_do_not_judge_success():
    assert forge_bids(BidStats(auctions=10, wins=5, won_ok=0, won_failed=2)) == (38, 68)


def test_proven_keyword_lowers_on_spec_bid_by_10_percent():
    stats = BidStats(auctions=10, wins=5, won_ok=3, keyword_successes={"bug": 3})
    assert stats.multiplier(["bug"]) == pytest.approx(0.9)
    assert compute_bid(FORGE, ON, FixedRng(0), stats) == round(38 * 0.9)  # 34


def test_keyword_with_fewer_than_three_successes_is_not_proven():
    stats = BidStats(auctions=10, wins=5, won_ok=2, keyword_successes={"bug": 2})
    assert compute_bid(FORGE, ON, FixedRng(0), stats) == 38


def test_proven_keyword_not_in_the_description_changes_nothing():
    stats = BidStats(auctions=10, wins=5, won_ok=3, keyword_successes={"merge": 3})
    assert forge_bids(stats) == (38, 68)


def test_proven_keyword_does_not_lower_off_spec_bids():
    stats = BidStats(auctions=10, wins=5, won_ok=3, keyword_successes={"bug": 3})
    assert compute_bid(FORGE, OFF_SPEC, FixedRng(0), stats) == 68


def test_proven_phrase_keyword_lowers_the_bid():
    stats = BidStats(auctions=10, wins=5, won_ok=3, keyword_successes={"pull request": 3})
    assert compute_bid(FORGE, "open a pull request", FixedRng(0), stats) == 34


def test_learning_rules_compound():
    stats = BidStats(auctions=10, wins=9, won_ok=1, won_failed=8, keyword_successes={"bug": 5})
    assert stats.multiplier(["bug"]) == pytest.approx(1.15 * 1.2 * 0.9)
    assert compute_bid(FORGE, ON, FixedRng(0), stats) == round(38 * 1.15 * 1.2 * 0.9)  # 47


def test_recorded_outcomes_drive_the_multiplier():
    stats = BidStats()
    for _ in range(2):
        stats.record_auction(won=True)
    assert stats.multiplier() == 1.0  # two auctions: too early to judge
    stats.record_auction(won=True)
    assert (stats.auctions, stats.wins) == (3, 3)
    assert stats.win_rate == 1.0
    assert stats.multiplier() == pytest.approx(1.15)
    for _ in range(3):
        stats.record_result(ok=True, keywords=("bug", "fix"))
    assert stats.keyword_successes == {"bug": 3, "fix": 3}
    assert stats.multiplier(["bug"]) == pytest.approx(1.15 * 0.9)
    for _ in range(4):
        stats.record_result(ok=False, keywords=("api",))
    assert (stats.won_ok, stats.won_failed) == (3, 4)
    assert "api" not in stats.keyword_successes  # failures prove nothing
    assert stats.success_rate == pytest.approx(3 / 7)
    assert stats.multiplier(["bug"]) == pytest.approx(1.15 * 1.2 * 0.9)


def test_losing_auctions_lowers_the_win_rate_and_the_bid():
    stats = BidStats()
    for _ in range(10):
        stats.record_auction(won=False)
    assert stats.win_rate == 0.0
    assert forge_bids(stats) == (32, 58)


def test_rates_are_defined_before_any_outcome():
    stats = BidStats()
    assert stats.win_rate == 0.0
    assert stats.success_rate == 1.0


def test_to_dict_is_a_copy_of_the_counters():
    stats = BidStats(auctions=4, wins=2, won_ok=1, won_failed=1, keyword_successes={"bug": 1})
    snapshot = stats.to_dict()
    assert snapshot == {
        "auctions": 4,
        "wins": 2,
        "won_ok": 1,
        "won_failed": 1,
        "keyword_successes": {"bug": 1},
    }
    stats.record_result(ok=True, keywords=["bug"])
    assert snapshot["keyword_successes"] == {"bug": 1}
