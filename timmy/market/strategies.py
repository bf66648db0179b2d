"""Bidding strategies per persona, pure (no I/O, no clock, no shared random stream).

A persona's ``strategy`` (a persona-file field, default ``"adaptive"``) names how it prices
a task. Written as ``NAME`` or ``NAME:PARAMETER``:

* ``adaptive``: today's rule, `timmy.market.bidding.quote_matched` (jitter, learned
  multipliers). The default; its bids are unchanged, bit for bit.
* ``truthful``: bid the persona's `cost`, no draw, nothing learned.
* ``shade:F``: bid a fixed fraction ``F`` above cost (``round(cost * (1 + F))``; ``F`` in
  [0, 1], default 0.2).
* ``bandit:G``: learn the markup from wins: EXP3 over the grid `MARKUPS` (bid
  ``round(cost * (1 + m))``), ``G`` its exploration rate in (0, 1] (default 0.1). The arm is
  drawn from the bid's keyed draws (seed, agent, task, attempt), and the weights are learned
  counters (`timmy.market.bidding.BidStats.bandit`), so a restarted runner, the coordinator's
  mirror and the simulator carry them alike.

A persona's **cost** of a task: ``bid_base`` when the task is on its speciality, and
``floor(1.8 * bid_base)`` (`OFF_SPEC_FACTOR`) when not, the centre of what the adaptive
rule bids without jitter; every bid is kept within [`MIN_BID`, `MAX_BID`].

The bandit learns from the auctions it wins (`learn`): the reward of a win is the profit
over cost of the clearing price, as a share of the biggest markup, in [0, 1]; a lost auction
rewards 0 and changes nothing. The arm credited is read back from the bid's price (the
lowest arm of the grid that prices that task at those sats), so whoever knows the bid, the
persona and the clearing price (the runner, the coordinator, the simulator) updates the
same weights in the same order.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any, Protocol

from timmy.errors import PersonaError

# Kept equal to `timmy.market.bidding`'s (a test checks): this module sits below bidding,
# which hands it every persona that does not bid "adaptive".
MIN_BID, MAX_BID, OFF_SPEC_FACTOR = 1, 200, 1.8


class Draws(Protocol):
    def random(self) -> float: ...


ADAPTIVE, TRUTHFUL, SHADE, BANDIT = "adaptive", "truthful", "shade", "bandit"
#: The strategy names, and the default parameter of those that take one.
STRATEGIES: dict[str, float | None] = {ADAPTIVE: None, TRUTHFUL: None, SHADE: 0.2,
                                       BANDIT: 0.1}
#: The bandit's arms: markups over cost.
MARKUPS: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0)

_HINT = ('use one of: adaptive (the default), truthful, shade:F (F in [0, 1], e.g. '
         '"shade:0.2"), bandit:G (G in (0, 1], e.g. "bandit" or "bandit:0.1")')
_PARAM_LIMITS = {SHADE: (0.0, 1.0, True), BANDIT: (0.0, 1.0, False)}   # lo, hi, lo included


def canonical(text: object) -> str:
    """A strategy's text as a `Persona` keeps it: ``NAME``, or ``NAME:PARAMETER`` when a
    parameter is given (``" Shade:0.20"`` -> ``"shade:0.2"``); `PersonaError` if bad."""
    name, param = parse_strategy(text)
    return name if ":" not in text else f"{name}:{param!r}"  # type: ignore[operator]


def parse_strategy(text: object) -> tuple[str, float | None]:
    """``(name, parameter)`` of a strategy's text (``"shade:0.2"`` -> ``("shade", 0.2)``;
    a missing parameter is the default), or `PersonaError` naming the known strategies."""
    if not isinstance(text, str):
        raise PersonaError(f"strategy must be a string, got {type(text).__name__}", hint=_HINT)
    return _parse(text)


@lru_cache(maxsize=256)
def _parse(text: str) -> tuple[str, float | None]:
    name, sep, param = text.strip().partition(":")
    name = name.strip().lower()
    if name not in STRATEGIES:
        raise PersonaError(f"unknown strategy {text!r} (known: {', '.join(STRATEGIES)})",
                           hint=_HINT)
    default = STRATEGIES[name]
    if not sep:
        return name, default
    if default is None:
        raise PersonaError(f"strategy {name!r} takes no parameter, got {text!r}", hint=_HINT)
    try:
        value = float(param)
    except ValueError:
        raise PersonaError(f"strategy {text!r}: {param.strip()!r} is not a number",
                           hint=_HINT) from None
    lo, hi, lo_in = _PARAM_LIMITS[name]
    if not (lo <= value <= hi if lo_in else lo < value <= hi) or math.isnan(value):
        raise PersonaError(f"strategy {text!r}: the parameter must be in "
                           f"{'[' if lo_in else '('}{lo:g}, {hi:g}], got {value:g}", hint=_HINT)
    return name, value


def cost(persona: Any, on_spec: bool) -> int:
    """What a task costs ``persona``: ``bid_base`` on-spec, ``floor(1.8 * bid_base)``
    off-spec (not clamped: `price` keeps bids within [`MIN_BID`, `MAX_BID`])."""
    return persona.bid_base if on_spec else math.floor(OFF_SPEC_FACTOR * persona.bid_base)


def price(cost_sats: int, markup: float) -> int:
    """The bid for a markup over a cost, rounded, within [`MIN_BID`, `MAX_BID`]."""
    return min(MAX_BID, max(MIN_BID, round(cost_sats * (1.0 + markup))))


# -- the bandit (EXP3) --------------------------------------------------------------------


def probabilities(log_weights: list[float] | tuple[float, ...], gamma: float) -> list[float]:
    """EXP3's chance of each arm: ``(1 - gamma) * w_k / sum(w) + gamma / K``."""
    k = len(log_weights)
    top = max(log_weights)
    w = [math.exp(x - top) for x in log_weights]
    total = sum(w)
    return [(1.0 - gamma) * x / total + gamma / k for x in w]


def _weights(stats: Any) -> list[float]:
    if stats is None or not stats.bandit:
        return [0.0] * len(MARKUPS)
    return stats.bandit


def choose_arm(stats: Any, gamma: float, rng: Draws) -> int:
    """The arm drawn with one of the bid's keyed draws (``rng.random()``)."""
    u = rng.random()
    acc = 0.0
    probs = probabilities(_weights(stats), gamma)
    for k, p in enumerate(probs):
        acc += p
        if u < acc:
            return k
    return len(probs) - 1


def arm_of(cost_sats: int, sats: int) -> int | None:
    """The arm a bid of ``sats`` on a task of that cost is credited to: the lowest one
    pricing it so (None: no arm does)."""
    for k, m in enumerate(MARKUPS):
        if price(cost_sats, m) == sats:
            return k
    return None


def reward(cost_sats: int, price_sats: int) -> float:
    """A win's reward: the profit over cost as a share of the biggest markup, in [0, 1]."""
    if cost_sats <= 0:
        return 0.0
    return min(1.0, max(0.0, (price_sats - cost_sats) / (cost_sats * MARKUPS[-1])))


# -- quoting, learning, ranges -------------------------------------------------------------


def strategy_bid(persona: Any, on_spec: bool, rng: Draws, stats: Any = None) -> int:
    """The sats ``persona`` bids under its (non-adaptive) strategy on a task on its
    speciality or not; ``stats``: its learned `timmy.market.bidding.BidStats`.
    (`timmy.market.bidding.quote_matched` hands every non-adaptive persona here.)"""
    name, param = parse_strategy(persona.strategy)
    c = cost(persona, on_spec)
    if name == SHADE:
        return price(c, param)  # type: ignore[arg-type]
    if name == BANDIT:
        return price(c, MARKUPS[choose_arm(stats, param, rng)])  # type: ignore[arg-type]
    if name == TRUTHFUL:
        return price(c, 0.0)
    raise ValueError("the adaptive rule is timmy.market.bidding.quote_matched")


def learn(persona: Any, stats: Any, won: bool, sats: int, on_spec: bool,
          price_sats: int | None) -> None:
    """What ``persona`` learns from an auction it bid ``sats`` in, beyond the counters
    (`BidStats.record_auction`): a bandit's weights after a win; nothing otherwise."""
    if not won or price_sats is None or persona.strategy == ADAPTIVE:
        return
    name, gamma = parse_strategy(persona.strategy)
    if name != BANDIT:
        return
    c = cost(persona, on_spec)
    k = arm_of(c, sats)
    if k is None:
        return
    weights = list(_weights(stats))
    p = probabilities(weights, gamma)[k]  # type: ignore[arg-type]
    weights[k] += gamma * (reward(c, price_sats) / p) / len(MARKUPS)  # type: ignore[operator]
    top = max(weights)
    stats.bandit = [w - top for w in weights]   # kept near 0: no overflow however long it runs


def record_auction(persona: Any, stats: Any, won: bool, sats: int, on_spec: bool,
                   price_sats: int | None) -> None:
    """Count one closed auction (`BidStats.record_auction`) and `learn` from it."""
    stats.record_auction(won)
    if won and persona.strategy != ADAPTIVE:
        learn(persona, stats, won, sats, on_spec, price_sats)


def markup(stats: Any, gamma: float = STRATEGIES[BANDIT]) -> float:  # type: ignore
    """The bandit's expected markup under its current weights."""
    return sum(p * m for p, m in zip(probabilities(_weights(stats), gamma), MARKUPS,
                                     strict=True))


@lru_cache(maxsize=1024)
def strategy_range(persona: Any, on_spec: bool) -> tuple[int, int]:
    """The lowest and highest sats a non-adaptive strategy can bid (adaptive:
    `timmy.market.bidding.bid_range`)."""
    name, param = parse_strategy(persona.strategy)
    c = cost(persona, on_spec)
    if name == SHADE:
        return price(c, param), price(c, param)  # type: ignore[arg-type]
    if name == BANDIT:
        return price(c, MARKUPS[0]), price(c, MARKUPS[-1])
    return price(c, 0.0), price(c, 0.0)


__all__ = [
    "MARKUPS",
    "STRATEGIES",
    "arm_of",
    "canonical",
    "choose_arm",
    "cost",
    "learn",
    "markup",
    "parse_strategy",
    "price",
    "probabilities",
    "record_auction",
    "reward",
    "strategy_bid",
    "strategy_range",
]
