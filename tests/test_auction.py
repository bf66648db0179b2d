"""Sealed-bid auctions: the three clearing rules, ties, early close, withdrawals."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from timmy.errors import ConfigError, TimmyError
from timmy.market.auction import (
    LOWEST,
    RULES,
    SECOND_PRICE,
    SPECIALIST_FIRST,
    Auction,
    Bid,
    Clearing,
    check_rule,
    clear,
)


def run(bids: list[Bid], rule: str = SPECIALIST_FIRST, task_id: int = 1) -> Clearing:
    auction = Auction(task_id=task_id, eligible={b.agent_id for b in bids}, rule=rule)
    for bid in bids:
        assert auction.submit(bid)
    assert auction.complete
    return auction.close()


MIXED = [
    Bid("quill-1", 20, on_spec=False),  # cheapest, but off-spec
    Bid("forge-1", 35, on_spec=True),
    Bid("forge-2", 30, on_spec=True),  # cheapest on-spec
    Bid("seer-1", 25, on_spec=False),
]


def test_rules_are_the_three_documented_ones():
    assert set(RULES) == {"specialist_first", "lowest", "second_price"}
    assert Auction(task_id=1, eligible=set()).rule == SPECIALIST_FIRST


# -- specialist_first -----------------------------------------------------------------------


def test_specialist_first_picks_lowest_on_spec_bid_over_cheaper_off_spec():
    result = run(MIXED, SPECIALIST_FIRST)
    assert (result.winner, result.price_sats) == ("forge-2", 30)
    assert result.winning_bid == Bid("forge-2", 30, on_spec=True)


def test_specialist_first_without_on_spec_bids_picks_lowest_bid():
    bids = [Bid("quill-1", 40), Bid("seer-1", 25), Bid("echo-1", 60)]
    result = run(bids, SPECIALIST_FIRST)
    assert (result.winner, result.price_sats) == ("seer-1", 25)


def test_specialist_first_single_off_spec_bid_wins():
    result = run([Bid("reel-1", 180)], SPECIALIST_FIRST)
    assert (result.winner, result.price_sats) == ("reel-1", 180)


# -- lowest ----------------------------------------------------------------------------------


def test_lowest_picks_cheapest_bid_even_off_spec():
    result = run(MIXED, LOWEST)
    assert (result.winner, result.price_sats) == ("quill-1", 20)
    assert result.winning_bid is not None and not result.winning_bid.on_spec


def test_lowest_picks_on_spec_bid_when_it_is_cheapest():
    bids = [Bid("forge-1", 10, on_spec=True), Bid("quill-1", 20)]
    assert run(bids, LOWEST).winner == "forge-1"


# -- second_price ----------------------------------------------------------------------------


def test_second_price_winner_is_specialist_first_winner_paid_second_lowest_on_spec_price():
    result = run(MIXED, SECOND_PRICE)
    assert result.winner == run(MIXED, SPECIALIST_FIRST).winner == "forge-2"
    assert result.price_sats == 35  # the other on-spec bid, not the cheaper off-spec ones


def test_second_price_with_a_single_bid_pays_its_own_price():
    result = run([Bid("forge-1", 33, on_spec=True)], SECOND_PRICE)
    assert (result.winner, result.price_sats) == ("forge-1", 33)


def test_second_price_single_off_spec_bid_pays_its_own_price():
    result = run([Bid("reel-1", 150)], SECOND_PRICE)
    assert (result.winner, result.price_sats) == ("reel-1", 150)


def test_second_price_with_no_other_on_spec_bid_pays_lowest_other_bid():
    bids = [Bid("forge-1", 30, on_spec=True), Bid("quill-1", 50), Bid("seer-1", 70)]
    result = run(bids, SECOND_PRICE)
    assert (result.winner, result.price_sats) == ("forge-1", 50)


def test_second_price_without_on_spec_bids_pays_second_lowest_bid():
    bids = [Bid("quill-1", 50), Bid("seer-1", 40), Bid("echo-1", 70)]
    result = run(bids, SECOND_PRICE)
    assert (result.winner, result.price_sats) == ("seer-1", 50)


def test_second_price_with_tied_on_spec_bids_pays_the_tied_price():
    bids = [Bid("forge-2", 30, on_spec=True), Bid("forge-1", 30, on_spec=True)]
    result = run(bids, SECOND_PRICE)
    assert (result.winner, result.price_sats) == ("forge-1", 30)


@given(
    st.lists(
        st.tuples(st.integers(1, 200), st.booleans()),
        min_size=1,
        max_size=8,
    )
)
def test_second_price_never_pays_less_than_the_winners_pool_price(raw):
    bids = [Bid(f"agent-{i}", sats, on_spec) for i, (sats, on_spec) in enumerate(raw)]
    sp = run(bids, SECOND_PRICE)
    sf = run(bids, SPECIALIST_FIRST)
    assert sp.winner == sf.winner
    pool = [b for b in bids if b.on_spec] or bids
    if len(pool) > 1:
        # Within the pool that could win, the price is the second-lowest, never below the winner's.
        assert sp.price_sats == sorted(b.sats for b in pool)[1]
        assert sp.price_sats >= sf.price_sats


# -- ties and order -------------------------------------------------------------------------


@pytest.mark.parametrize("rule", RULES)
def test_tie_goes_to_lower_agent_id(rule):
    bids = [Bid("mace-1", 30, on_spec=True), Bid("forge-1", 30, on_spec=True)]
    assert run(bids, rule).winner == "forge-1"
    assert run(list(reversed(bids)), rule).winner == "forge-1"


def test_tie_among_off_spec_bids_goes_to_lower_agent_id():
    bids = [Bid("seer-1", 60), Bid("echo-1", 60), Bid("quill-1", 60)]
    assert run(bids, SPECIALIST_FIRST).winner == "echo-1"


@given(
    st.lists(
        st.tuples(st.integers(1, 5), st.booleans()),
        min_size=1,
        max_size=8,
    ),
    st.sampled_from(RULES),
    st.randoms(use_true_random=False),
)
def test_clearing_does_not_depend_on_submission_order(raw, rule, rnd):
    bids = [Bid(f"agent-{i}", sats, on_spec) for i, (sats, on_spec) in enumerate(raw)]
    shuffled = list(bids)
    rnd.shuffle(shuffled)
    a, b = run(bids, rule), run(shuffled, rule)
    assert (a.winner, a.price_sats) == (b.winner, b.price_sats)
    assert a.bids == b.bids


@given(
    st.lists(
        st.tuples(st.integers(1, 200), st.booleans()),
        min_size=1,
        max_size=8,
    ),
    st.sampled_from(RULES),
)
def test_winner_is_the_lowest_ordered_bid_of_its_pool(raw, rule):
    bids = [Bid(f"agent-{i}", sats, on_spec) for i, (sats, on_spec) in enumerate(raw)]
    result = run(bids, rule)
    on_spec = [b for b in bids if b.on_spec]
    pool = bids if rule == LOWEST else (on_spec or bids)
    best = min(pool, key=lambda b: (b.sats, b.agent_id))
    assert result.winner == best.agent_id
    assert result.winning_bid == best
    assert set(result.bids) == set(bids)


def test_clearing_lists_bids_in_price_then_agent_order():
    result = run(MIXED)
    assert [b.agent_id for b in result.bids] == ["quill-1", "seer-1", "forge-2", "forge-1"]


# -- reasons ---------------------------------------------------------------------------------


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("bids", [MIXED, [Bid("seer-1", 40)]], ids=["with_on_spec", "off_spec"])
def test_clearing_reason_mentions_the_rule(rule, bids):
    result = run(bids, rule)
    assert result.rule == rule
    assert rule in result.reason


def test_clearing_reason_says_whether_an_on_spec_bid_won():
    assert "on-spec" in run(MIXED, SPECIALIST_FIRST).reason
    assert "no on-spec" in run([Bid("seer-1", 40)], SPECIALIST_FIRST).reason


def test_second_price_reason_states_the_price():
    assert "35" in run(MIXED, SECOND_PRICE).reason


# -- no bids ---------------------------------------------------------------------------------


@pytest.mark.parametrize("rule", RULES)
def test_auction_without_bids_has_no_winner(rule):
    auction = Auction(task_id=3, eligible={"forge-1"}, rule=rule)
    result = auction.close()
    assert result.winner is None
    assert result.price_sats is None
    assert result.winning_bid is None
    assert result.bids == ()
    assert result.task_id == 3
    assert result.reason


def test_auction_where_everyone_declined_has_no_winner():
    auction = Auction(task_id=3, eligible={"forge-1", "quill-1"})
    auction.decline("forge-1")
    auction.decline("quill-1")
    assert auction.complete
    assert auction.close().winner is None


# -- early close -----------------------------------------------------------------------------


def test_auction_is_complete_once_every_eligible_runner_bid_or_declined():
    auction = Auction(task_id=7, eligible={"forge-1", "quill-1", "seer-1"})
    assert not auction.complete
    auction.submit(Bid("forge-1", 30, on_spec=True))
    assert not auction.complete
    auction.decline("quill-1")
    assert not auction.complete
    assert auction.answered == 2
    auction.submit(Bid("seer-1", 60))
    assert auction.complete
    assert auction.answered == 3


def test_auction_with_nobody_eligible_is_complete_at_once():
    auction = Auction(task_id=7, eligible=set())
    assert auction.complete
    assert auction.close().winner is None


def test_auction_can_close_before_everyone_answered():
    auction = Auction(task_id=7, eligible={"forge-1", "quill-1"})
    auction.submit(Bid("quill-1", 40))
    assert not auction.complete
    assert auction.close().winner == "quill-1"


def test_repeated_decline_is_not_counted_twice():
    auction = Auction(task_id=7, eligible={"forge-1", "quill-1"})
    auction.decline("forge-1")
    auction.decline("forge-1")
    assert auction.answered == 1
    assert not auction.complete


def test_eligible_set_is_copied_not_shared():
    eligible = {"forge-1", "quill-1"}
    auction = Auction(task_id=7, eligible=eligible)
    auction.withdraw("forge-1")
    assert eligible == {"forge-1", "quill-1"}


def test_frozenset_of_eligible_runners_is_accepted():
    auction = Auction(task_id=7, eligible=frozenset({"forge-1"}))
    auction.withdraw("forge-1")
    assert auction.complete


# -- ignored bids ----------------------------------------------------------------------------


def test_bid_from_ineligible_agent_is_ignored():
    auction = Auction(task_id=7, eligible={"forge-1"})
    assert auction.submit(Bid("intruder-1", 1, on_spec=True)) is False
    assert "intruder-1" not in auction.bids
    assert not auction.complete
    auction.submit(Bid("forge-1", 30, on_spec=True))
    assert auction.close().winner == "forge-1"


def test_decline_from_ineligible_agent_is_ignored():
    auction = Auction(task_id=7, eligible={"forge-1"})
    assert auction.decline("intruder-1") is False
    assert auction.answered == 0


def test_duplicate_bid_is_ignored_and_the_first_bid_stands():
    auction = Auction(task_id=7, eligible={"forge-1", "quill-1"})
    assert auction.submit(Bid("forge-1", 30, on_spec=True)) is True
    assert auction.submit(Bid("forge-1", 5, on_spec=True)) is False
    assert auction.answered == 1
    assert not auction.complete
    assert auction.close().price_sats == 30


def test_bid_after_decline_is_ignored():
    auction = Auction(task_id=7, eligible={"forge-1", "quill-1"})
    assert auction.decline("forge-1") is True
    assert auction.submit(Bid("forge-1", 5, on_spec=True)) is False
    auction.submit(Bid("quill-1", 40))
    assert auction.close().winner == "quill-1"


def test_decline_after_bid_is_ignored_and_the_bid_stands():
    auction = Auction(task_id=7, eligible={"forge-1"})
    auction.submit(Bid("forge-1", 30, on_spec=True))
    assert auction.decline("forge-1") is False
    assert auction.close().winner == "forge-1"


def test_bid_after_close_is_ignored():
    auction = Auction(task_id=7, eligible={"forge-1", "quill-1"})
    auction.submit(Bid("quill-1", 40))
    first = auction.close()
    assert auction.submit(Bid("forge-1", 1, on_spec=True)) is False
    assert auction.decline("forge-1") is False
    assert auction.close() is first
    assert first.winner == "quill-1"


# -- withdraw and unavailable ------------------------------------------------------------------


def test_withdrawn_bidder_loses_its_bid():
    auction = Auction(task_id=7, eligible={"forge-1", "quill-1"})
    auction.submit(Bid("forge-1", 30, on_spec=True))
    auction.submit(Bid("quill-1", 40))
    auction.withdraw("forge-1")
    result = auction.close()
    assert result.winner == "quill-1"
    assert [b.agent_id for b in result.bids] == ["quill-1"]


def test_withdraw_shrinks_the_eligible_set_so_the_auction_can_complete():
    auction = Auction(task_id=7, eligible={"forge-1", "quill-1"})
    auction.submit(Bid("quill-1", 40))
    assert not auction.complete
    auction.withdraw("forge-1")
    assert auction.complete


def test_withdrawn_bidder_cannot_bid_again():
    auction = Auction(task_id=7, eligible={"forge-1", "quill-1"})
    auction.withdraw("forge-1")
    assert auction.submit(Bid("forge-1", 1, on_spec=True)) is False


def test_withdraw_forgets_a_decline():
    auction = Auction(task_id=7, eligible={"forge-1", "quill-1"})
    auction.decline("forge-1")
    auction.withdraw("forge-1")
    assert auction.answered == 0
    assert not auction.complete


def test_withdraw_of_unknown_agent_is_harmless():
    auction = Auction(task_id=7, eligible={"forge-1"})
    auction.withdraw("ghost-1")
    assert auction.eligible == {"forge-1"}


def test_close_ignores_bids_from_unavailable_agents():
    auction = Auction(task_id=7, eligible={"forge-1", "forge-2", "quill-1"})
    auction.submit(Bid("forge-1", 25, on_spec=True))
    auction.submit(Bid("forge-2", 30, on_spec=True))
    auction.submit(Bid("quill-1", 40))
    result = auction.close(unavailable={"forge-1"})
    assert (result.winner, result.price_sats) == ("forge-2", 30)
    assert "forge-1" not in {b.agent_id for b in result.bids}


def test_close_with_every_bidder_unavailable_has_no_winner():
    auction = Auction(task_id=7, eligible={"forge-1"})
    auction.submit(Bid("forge-1", 25, on_spec=True))
    assert auction.close(unavailable=["forge-1"]).winner is None


def test_second_price_ignores_unavailable_bidders_price():
    auction = Auction(task_id=7, eligible={"forge-1", "forge-2", "forge-3"}, rule=SECOND_PRICE)
    auction.submit(Bid("forge-1", 25, on_spec=True))
    auction.submit(Bid("forge-2", 30, on_spec=True))
    auction.submit(Bid("forge-3", 50, on_spec=True))
    result = auction.close(unavailable=("forge-2",))
    assert (result.winner, result.price_sats) == ("forge-1", 50)


def test_close_is_idempotent():
    auction = Auction(task_id=7, eligible={"forge-1", "quill-1"})
    auction.submit(Bid("forge-1", 25, on_spec=True))
    auction.submit(Bid("quill-1", 40))
    first = auction.close()
    assert auction.close(unavailable={"forge-1"}) is first
    assert auction.closed is first


# -- bad rule --------------------------------------------------------------------------------


@pytest.mark.parametrize("rule", ["cheapest", "", "Lowest", "second-price"])
def test_unknown_rule_raises_config_error_with_hint(rule):
    with pytest.raises(ConfigError) as info:
        Auction(task_id=1, eligible={"forge-1"}, rule=rule)
    assert repr(rule) in info.value.message
    for known in RULES:
        assert known in info.value.hint
    assert isinstance(info.value, TimmyError)


def test_check_rule_returns_a_known_rule():
    for rule in RULES:
        assert check_rule(rule) == rule


def test_clear_with_unknown_rule_and_bids_raises_config_error():
    with pytest.raises(ConfigError):
        clear(1, [Bid("forge-1", 30, on_spec=True)], rule="cheapest")


def test_second_price_never_pays_the_winner_less_than_its_bid():
    bids = [Bid("forge-1", 30, on_spec=True), Bid("quill-1", 20, on_spec=False)]
    result = clear(1, bids, rule="second_price")
    assert result.winner == "forge-1"
    assert result.price_sats == 30
