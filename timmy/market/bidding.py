"""How a persona prices a task, pure (no I/O, no clock, no shared random stream):
`compute_bid`, the keyed RNG it draws from (seed, agent_id, task_id, attempt), the learned
`BidStats`, and `bid_range`, where those rules can land.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Protocol

from timmy.errors import ConfigError
from timmy.market.personas import Persona
from timmy.market.strategies import strategy_bid, strategy_range

MIN_BID = 1
MAX_BID = 200
MIN_OUTCOMES = 3
PROVEN_AFTER = 3
OFF_SPEC_FACTOR = 1.8

BANDIT_ARMS = 7   # len(timmy.market.strategies.MARKUPS)

_MASK = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15


def splitmix64(z: int) -> int:
    """One step of SplitMix64: a fast, well-mixed 64-bit hash (vectorises in numpy too)."""
    z = (z + _GOLDEN) & _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return z ^ (z >> 31)


@lru_cache(maxsize=4096)
def text_key(text: str) -> int:
    """A stable 64-bit key for a string (the same in every process and Python run)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


STREAM_BID = text_key("bid")
STREAM_EXEC = text_key("exec")


class KeyedRandom:
    """A counter-based random source keyed by integers: the n-th draw is ``mix(key, n)``.

    Implements the two methods `compute_bid` and the executors use
    (``random`` and ``randint``), like `random.Random`.
    """

    __slots__ = ("_key", "_n")

    def __init__(self, key: int) -> None:
        self._key = key & _MASK
        self._n = 0

    def bits(self) -> int:
        self._n += 1
        return splitmix64(self._key ^ splitmix64(self._n))

    def random(self) -> float:
        """A float in [0, 1)."""
        return (self.bits() >> 11) * (1.0 / (1 << 53))

    def randint(self, a: int, b: int) -> int:
        """An integer in [a, b], both included."""
        return a + int(self.random() * (b - a + 1))


def draw_key(seed: int, agent_id: str, task_id: int, attempt: int, stream: int = STREAM_BID) -> int:
    """The key of the draws for one (seed, agent, task, attempt): no state is shared."""
    z = splitmix64((seed & _MASK) ^ stream)
    z = splitmix64(z ^ text_key(agent_id))
    z = splitmix64(z ^ (task_id & _MASK))
    return splitmix64(z ^ (attempt & _MASK))


def bid_rng(
    seed: int, agent_id: str, task_id: int, attempt: int, stream: int = STREAM_BID
) -> KeyedRandom:
    """The random source for one bid (or, with ``stream=STREAM_EXEC``, one execution)."""
    return KeyedRandom(draw_key(seed, agent_id, task_id, attempt, stream))


class Rng(Protocol):
    def randint(self, a: int, b: int) -> int: ...


@dataclass(slots=True)
class BidStats:
    """A persona's learned counters: O(1) to update and to read, never a history scan."""

    auctions: int = 0
    wins: int = 0
    won_ok: int = 0
    won_failed: int = 0
    keyword_successes: dict[str, int] = field(default_factory=dict)
    # A "bandit" persona's EXP3 log-weights, one per arm of `strategies.MARKUPS` (empty:
    # none learned, or another strategy). Updated by `timmy.market.strategies.learn`.
    bandit: list[float] = field(default_factory=list)

    def record_auction(self, won: bool) -> None:
        """Count one closed auction this persona bid in."""
        self.auctions += 1
        self.wins += won

    def record_result(self, ok: bool, keywords: list[str] | tuple[str, ...] = ()) -> None:
        """Count the outcome of a task this persona won."""
        if ok:
            self.won_ok += 1
            for k in keywords:
                self.keyword_successes[k] = self.keyword_successes.get(k, 0) + 1
        else:
            self.won_failed += 1

    @property
    def win_rate(self) -> float:
        return self.wins / self.auctions if self.auctions else 0.0

    @property
    def success_rate(self) -> float:
        done = self.won_ok + self.won_failed
        return self.won_ok / done if done else 1.0

    def multiplier(self, keywords: list[str] | tuple[str, ...] = ()) -> float:
        """How much to scale a bid, given what this persona has learned."""
        if self.auctions < MIN_OUTCOMES:
            return 1.0
        m = 1.0
        rate = self.win_rate
        if rate > 0.8:
            m *= 1.15
        elif rate < 0.2:
            m *= 0.85
        done = self.won_ok + self.won_failed
        if done >= MIN_OUTCOMES and self.won_ok / done < 0.5:
            m *= 1.2
        if any(self.keyword_successes.get(k, 0) >= PROVEN_AFTER for k in keywords):
            m *= 0.9
        return m

    @classmethod
    def from_dict(cls, data: object, where: str = "stats") -> BidStats:
        """Counters from their `to_dict` form (missing ones are 0), or `ConfigError` naming
        ``where`` they came from: a count below 0, more wins than auctions, a non-number."""
        try:
            counts = {k: int(data.get(k, 0))  # type: ignore[attr-defined]
                      for k in ("auctions", "wins", "won_ok", "won_failed")}
            keywords = {str(k): int(v)
                        for k, v in data.get("keyword_successes", {}).items()}  # type: ignore
            if min([*counts.values(), *keywords.values(), 0]) < 0 \
                    or counts["wins"] > counts["auctions"]:
                raise ValueError("counts must be >= 0 and wins <= auctions")
            bandit = data.get("bandit") or []  # type: ignore[attr-defined]
            if isinstance(bandit, str | bytes | dict):
                raise TypeError("bandit must be a list of numbers")
            bandit = [float(w) for w in bandit]
            if bandit and (len(bandit) != BANDIT_ARMS
                           or not all(math.isfinite(w) for w in bandit)):
                raise ValueError(f"bandit must be {BANDIT_ARMS} finite numbers")
        except (ValueError, TypeError, AttributeError) as exc:
            raise ConfigError(f"{where} is not a set of learned counters: {exc}",
                              hint='e.g. {"auctions": 5, "wins": 1, "won_ok": 1, '
                                   '"won_failed": 0}') from None
        return cls(**counts, keyword_successes=keywords, bandit=bandit)

    def to_dict(self) -> dict:
        return {
            "auctions": self.auctions,
            "wins": self.wins,
            "won_ok": self.won_ok,
            "won_failed": self.won_failed,
            "keyword_successes": dict(self.keyword_successes),
            **({"bandit": list(self.bandit)} if self.bandit else {}),
        }


@dataclass(frozen=True, slots=True)
class Quote:
    """A computed bid: the price, whether the task is on-spec, and the keywords that matched."""

    sats: int
    on_spec: bool
    keywords: tuple[str, ...]


def quote(persona: Persona, description: str, rng: Rng, stats: BidStats | None = None) -> Quote:
    """Price ``description`` for ``persona``: `compute_bid` with the on-spec flag and keywords."""
    return quote_matched(persona, tuple(persona.matched_keywords(description)), rng, stats)


def quote_matched(
    persona: Persona, keywords: tuple[str, ...], rng: Rng, stats: BidStats | None = None
) -> Quote:
    """`quote` for a description whose matched keywords are already known (the simulator
    matches each description once, not once per bid). A persona whose ``strategy`` is not
    "adaptive" is priced by `timmy.market.strategies.quote_strategy`."""
    if persona.strategy != "adaptive":
        on_spec = bool(keywords)
        return Quote(strategy_bid(persona, on_spec, rng, stats), on_spec,  # type: ignore
                     keywords)
    jitter = rng.randint(0, persona.bid_jitter)
    if keywords:
        raw = max(MIN_BID, persona.bid_base - jitter)
    else:
        raw = min(MAX_BID, math.floor(OFF_SPEC_FACTOR * persona.bid_base) + jitter)
    if stats is not None:
        m = stats.multiplier(keywords)
        if m != 1.0:
            raw = round(raw * m)
    return Quote(min(MAX_BID, max(MIN_BID, raw)), bool(keywords), keywords)


def compute_bid(
    persona: Persona, description: str, rng: Rng, stats: BidStats | None = None
) -> int:
    """The sats ``persona`` bids for ``description``, drawing its jitter from ``rng``.

    A bid is a function of the persona, the description, the keyed draws and the
    learned counters, so a live swarm and the simulator replaying the same work pick
    the same bids. The rules (from the system timmy grows out of, with its substring
    bug fixed):

    * on-spec (a preferred keyword occurs as a whole word): ``max(1, base - U[0, jitter])``
    * off-spec: ``min(200, floor(1.8 * base) + U[0, jitter])``
    * after at least `MIN_OUTCOMES` auctions, `BidStats.multiplier` scales the bid:
      win rate > 80 % -> x1.15, < 20 % -> x0.85, success rate on won tasks < 50 %
      -> x1.2, a matched keyword it has completed `PROVEN_AFTER` tasks on -> x0.9.
      The result is rounded and kept within [`MIN_BID`, `MAX_BID`].
    """
    return quote(persona, description, rng, stats).sats


def _multipliers() -> tuple[float, ...]:
    """Every value `BidStats.multiplier` can take, computed by it: counters that hit each
    combination of its branches (win rate high, low or neither; success rate low or not;
    a proven keyword or not)."""
    out = set()
    for wins in (10, 0, 5):
        for ok, failed in ((3, 0), (0, 3)):
            for proven in (0, PROVEN_AFTER):
                stats = BidStats(auctions=10, wins=wins, won_ok=ok, won_failed=failed,
                                 keyword_successes={"k": proven})
                out.add(stats.multiplier(("k",)))
    return tuple(sorted(out))


_MULTIPLIERS = _multipliers()


@lru_cache(maxsize=1024)
def bid_range(persona: Persona, on_spec: bool | None = None) -> tuple[int, int]:
    """The lowest and highest sats `quote` can bid for ``persona``: on an on-spec task
    (``on_spec=True``), an off-spec one (False), or either (None).

    From the rule: the jitter's ends, scaled by the smallest and the largest multiplier
    the learned counters can give, rounded and kept within [`MIN_BID`, `MAX_BID`] as
    `quote_matched` does (rounding is monotonic, so the ends stay the ends). A bid outside
    it was not made by this persona's rule: the coordinator refuses it. A persona with
    another ``strategy`` has that strategy's range (`timmy.market.strategies.strategy_range`).
    """
    if persona.strategy != "adaptive":
        if on_spec is None:
            (a, b), (c, d) = strategy_range(persona, True), strategy_range(persona, False)
            return min(a, c), max(b, d)
        return strategy_range(persona, on_spec)
    if on_spec is None:
        (a, b), (c, d) = bid_range(persona, True), bid_range(persona, False)
        return min(a, c), max(b, d)
    if on_spec:
        raw = (max(MIN_BID, persona.bid_base - persona.bid_jitter), max(MIN_BID, persona.bid_base))
    else:
        off = math.floor(OFF_SPEC_FACTOR * persona.bid_base)
        raw = (min(MAX_BID, off), min(MAX_BID, off + persona.bid_jitter))
    lo = min(min(MAX_BID, max(MIN_BID, round(raw[0] * m))) for m in _MULTIPLIERS)
    hi = max(min(MAX_BID, max(MIN_BID, round(raw[1] * m))) for m in _MULTIPLIERS)
    return lo, hi


__all__ = [
    "MAX_BID",
    "MIN_BID",
    "BidStats",
    "KeyedRandom",
    "Quote",
    "bid_range",
    "bid_rng",
    "compute_bid",
    "quote",
    "quote_matched",
]
