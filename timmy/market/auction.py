"""Sealed-bid auctions, pure (no clock, no I/O): `Bid`, `Auction`, `Clearing` and the clearing
rules of `clear`. The coordinator decides *when* an auction closes; the auction decides *who*.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from timmy.market import mechanisms

SPECIALIST_FIRST = "specialist_first"
LOWEST = "lowest"
SECOND_PRICE = "second_price"
#: Today's three rules (every rule name a swarm accepts now: `mechanisms.mechanism_names`).
RULES = (SPECIALIST_FIRST, LOWEST, SECOND_PRICE)


def check_rule(rule: str) -> str:
    """Return ``rule`` if it names a registered clearing mechanism (see
    `timmy.market.mechanisms`), else raise `ConfigError`."""
    if rule in RULES:
        return rule
    return mechanisms.check_rule(rule)


@dataclass(frozen=True, slots=True)
class Bid:
    """One sealed bid: who, how many sats, and whether the task is on its speciality."""

    agent_id: str
    sats: int
    on_spec: bool = False

    def order(self) -> tuple[int, str]:
        return (self.sats, self.agent_id)


@dataclass(frozen=True, slots=True)
class Clearing:
    """The outcome of an auction. ``winner`` is None when nobody (available) bid."""

    task_id: int
    rule: str
    winner: str | None
    price_sats: int | None
    bids: tuple[Bid, ...]
    reason: str
    #: Set when the rule's mechanism raised or lied (then ``winner`` is None): what it did.
    error: str | None = None
    #: Under ``redundant`` (k > 1): every winner, best first (``winner`` is the first);
    #: each runs a copy of the task (`timmy.market.redundancy`). Empty under other rules.
    copies: tuple[str, ...] = ()

    @property
    def winning_bid(self) -> Bid | None:
        return next((b for b in self.bids if b.agent_id == self.winner), None)


def clear(task_id: int, bids: Iterable[Bid], rule: str = SPECIALIST_FIRST, *,
          description: str = "", reputation: Mapping[str, float] | None = None) -> Clearing:
    """Apply ``rule`` to ``bids``: the winner, the price and a one-line reason.

    Any other registered mechanism (`timmy.market.mechanisms`) is asked with the task's
    ``description`` and the bidders' ``reputation``; one that raises or lies gives no
    winner and its ``error``.

    The rules:

    ``specialist_first`` (default)
        The lowest on-spec bid wins; with no on-spec bid, the lowest bid.
    ``lowest``
        The lowest bid wins, on-spec or not (the old system's rule).
    ``second_price``
        specialist_first's winner, paid the second-lowest price among the bids
        that could have won (the on-spec bids when there are any); when no other
        bid is in that pool, the lowest other bid; with a single bid, its own price.
        The winner is never paid less than it bid (a cheaper off-spec bid that lost
        to a specialist does not lower the price).

    Ties go to the lower ``agent_id`` so a seeded run is reproducible.
    """
    check_rule(rule)
    bids = tuple(sorted(bids, key=Bid.order))
    if not bids:
        return Clearing(task_id, rule, None, None, (), "no bids")
    if rule not in RULES:
        winner, price, why, error = mechanisms.decide(rule, bids, task_id, description,
                                                      reputation)
        if error is None and rule.startswith(mechanisms.REDUNDANT):
            return Clearing(task_id, rule, winner, price, bids, why, error,
                            mechanisms.redundant_copies(rule, bids))
        return Clearing(task_id, rule, winner, price, bids, why, error)
    if rule == LOWEST:
        best = bids[0]
        kind = "on-spec" if best.on_spec else "off-spec"
        return Clearing(
            task_id, rule, best.agent_id, best.sats, bids, f"lowest bid ({kind}) under lowest"
        )
    on_spec = [b for b in bids if b.on_spec]
    pool = on_spec or list(bids)
    best = pool[0]
    what = "lowest on-spec bid" if on_spec else "lowest bid (no on-spec bid)"
    if rule == SPECIALIST_FIRST:
        return Clearing(
            task_id, rule, best.agent_id, best.sats, bids, f"{what} under specialist_first"
        )
    others = [b for b in pool if b is not best] or [b for b in bids if b is not best]
    price = max(best.sats, others[0].sats) if others else best.sats
    return Clearing(
        task_id, rule, best.agent_id, price, bids, f"{what} under second_price; 2nd price {price}"
    )


@dataclass(slots=True)
class Auction:
    """An open auction for one task among the runners that were ``eligible`` when it opened.

    >>> a = Auction(task_id=7, eligible={"forge-1", "quill-1"})
    >>> a.submit(Bid("forge-1", sats=30, on_spec=True))
    True
    >>> a.complete
    False
    >>> a.decline("quill-1"); a.complete
    True
    >>> a.close().winner
    'forge-1'
    """

    task_id: int
    eligible: set[str] | frozenset[str]
    rule: str = SPECIALIST_FIRST
    bids: dict[str, Bid] = field(default_factory=dict)
    declined: set[str] = field(default_factory=set)
    closed: Clearing | None = None
    description: str = ""   # the task's, for a mechanism's context

    def __post_init__(self) -> None:
        check_rule(self.rule)
        self.eligible = set(self.eligible)

    @property
    def answered(self) -> int:
        return len(self.bids) + len(self.declined)

    @property
    def complete(self) -> bool:
        """True when every eligible runner has bid or declined: the auction can close early."""
        return self.answered >= len(self.eligible)

    def submit(self, bid: Bid) -> bool:
        """Record a sealed bid. Returns False (and ignores it) if the bidder was not eligible,
        already answered, or the auction is closed."""
        agent = bid.agent_id
        if (
            self.closed is not None
            or agent not in self.eligible
            or agent in self.bids
            or agent in self.declined
        ):
            return False
        self.bids[agent] = bid
        return True

    def decline(self, agent_id: str) -> bool:
        """Record that ``agent_id`` will not bid."""
        if self.closed is not None or agent_id not in self.eligible or agent_id in self.bids:
            return False
        self.declined.add(agent_id)
        return True

    def withdraw(self, agent_id: str) -> None:
        """Forget a bidder whose runner is gone (it died or was stopped)."""
        self.eligible.discard(agent_id)
        self.bids.pop(agent_id, None)
        self.declined.discard(agent_id)

    def close(self, unavailable: Iterable[str] = (),
              reputation: Mapping[str, float] | None = None) -> Clearing:
        """Close the auction and clear it; bids from ``unavailable`` agents do not count.
        ``reputation``: agent_id -> reliability, for mechanisms that use it."""
        if self.closed is None:
            skip = set(unavailable)
            self.closed = clear(
                self.task_id, (b for a, b in self.bids.items() if a not in skip), self.rule,
                description=self.description, reputation=reputation,
            )
        return self.closed
