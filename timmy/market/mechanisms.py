"""Clearing mechanisms as plugins, pure (no clock, no I/O): the registry behind
`timmy.register_mechanism`, the built-in mechanisms beyond `timmy.market.auction`'s three,
rule strings with parameters, and the checks that keep a mechanism that raises or lies from
assigning anything.

A mechanism is a pure callable ``mechanism(bids, ctx) -> Award(winner, price, why)``:

``bids``
    the `Bid`\\ s of the bidders that could win (alive, with room in their queues), sorted by
    (sats, agent_id); never empty (with no bid the auction ends "no bids" without asking).
``ctx``
    a `Context`: the task (``task_id``, ``description``), the rule's ``params`` and each
    bidder's ``reputation`` (agent_id -> reliability in [0, 1]).

It returns an `Award` (a named tuple, so ``return winner, price, why`` works too; a
`timmy.Clearing` is read as (winner, price_sats, reason)): ``winner`` one of the bidders'
agent_id, ``price`` the sats paid (an int >= 0), ``why`` the one line the inspector shows.
The auction turns it into a `timmy.Clearing` (``rule`` the rule string, ``reason`` the why).
It must be deterministic: the same bids and context give the same award, so a live swarm and
the simulator agree (ties are the mechanism's to break; the built-ins give them to the lower
agent_id).

A rule names a mechanism, optionally with parameters: ``"score:w_price=0.7,w_quality=0.3"``
(``name:key=value,...``; numbers are read as floats, anything else stays a string). The rule
string is what `Swarm(rule=...)`, `simulate(rule=...)`, `replay`, sweeps and the CLI take,
and what the ``bids`` table records.

A mechanism that raises, returns something that is not an award, names a winner that did not
bid (or none), or a price that is not an int >= 0 assigns nothing: `Clearing.error` says
what went wrong and `after_mechanism_failure` decides the task's fate (auctioned again with
the attempt spent, so a mechanism that always fails cannot spin the swarm; failed after
``max_attempts`` like any other failure).

Reputation: a live swarm's `Auctions.reputation` and the simulator's ``Simulator.reputation``
are a `timmy.market.reputation.Reputation`, updated from each agent's outcomes (an agent with
none is 0.5); a mechanism asked without one (``clear(...)`` with no ``reputation``) sees 1.0
for every bidder.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, NamedTuple

from timmy.errors import ConfigError
from timmy.market.lifecycle import Action, Decision, gave_up, spent_action

#: Today's rules, cleared by `timmy.market.auction.clear` itself (bit for bit as before).
LEGACY = ("specialist_first", "lowest", "second_price")
#: The event a failed mechanism writes.
MECHANISM_FAILED = "mechanism_failed"


class Award(NamedTuple):
    """What a mechanism decided: the winner's agent_id, the price in sats, and why."""

    winner: str | None
    price: int | None
    why: str


@dataclass(frozen=True, slots=True)
class Context:
    """What a mechanism may know besides the bids."""

    task_id: int
    description: str = ""
    rule: str = ""
    params: Mapping[str, Any] = field(default_factory=dict)
    reputation: Mapping[str, float] = field(default_factory=dict)

    def reliability(self, agent_id: str) -> float:
        """The bidder's reliability in [0, 1] (1.0 when nothing is known of it)."""
        return min(1.0, max(0.0, float(self.reputation.get(agent_id, 1.0))))


Mechanism = Callable[[Sequence[Any], Context], Any]


# -- the built-in mechanisms -------------------------------------------------
def first_price(bids, ctx: Context) -> Award:
    """The lowest bid wins and is paid its bid, on-spec or not: ``lowest`` by another name."""
    best = bids[0]
    kind = "on-spec" if best.on_spec else "off-spec"
    return Award(best.agent_id, best.sats, f"lowest bid ({kind}) under {ctx.rule}")


def reputation(bids, ctx: Context) -> Award:
    """The lowest bid divided by its bidder's reliability wins, paid its bid. A bidder of
    reliability 0 wins only when every bidder's is 0 (then the lowest bid)."""
    def key(b):
        r = ctx.reliability(b.agent_id)
        return (b.sats / r if r > 0 else float("inf"), b.sats, b.agent_id)

    best = min(bids, key=key)
    r = ctx.reliability(best.agent_id)
    return Award(best.agent_id, best.sats,
                 f"lowest price/reliability ({best.sats}/{r:.2f}) under {ctx.rule}")


#: The parameters of ``score`` and their defaults.
SCORE_PARAMS = {"w_price": 0.5, "w_quality": 0.5, "q_on": 0.95, "q_off": 0.6}


def expected_quality(bid, ctx: Context) -> float:
    """``score``'s expected quality of a bid: the success rate of its kind of work (``q_on``
    on its speciality, ``q_off`` off it: by default the simulated executor's 0.95 and 0.6)
    times the bidder's reliability."""
    p = {**SCORE_PARAMS, **ctx.params}
    return float(p["q_on"] if bid.on_spec else p["q_off"]) * ctx.reliability(bid.agent_id)


def score(bids, ctx: Context) -> Award:
    """Weighted price against expected quality: each bid scores
    ``w_quality * quality - w_price * sats / highest_sats`` (quality: `expected_quality`;
    prices scaled by the highest bid, so both terms are in [0, 1]); the highest score wins,
    paid its bid; ties go to the lower bid, then the lower agent_id."""
    p = {**SCORE_PARAMS, **ctx.params}
    w_price, w_quality = float(p["w_price"]), float(p["w_quality"])
    top = max(b.sats for b in bids) or 1

    def value(b) -> float:
        return w_quality * expected_quality(b, ctx) - w_price * b.sats / top

    best = min(bids, key=lambda b: (-value(b), b.sats, b.agent_id))
    return Award(best.agent_id, best.sats,
                 f"best score {value(best):.3f} (quality {expected_quality(best, ctx):.2f}, "
                 f"{best.sats} sats) under {ctx.rule}")


#: The rule whose k best bids all win and run the task (see `redundant`).
REDUNDANT = "redundant"


def redundant_k(params: Mapping[str, Any]) -> int:
    """``redundant``'s k (default 2), checked: a whole number >= 1; raises `ConfigError`."""
    k = params.get("k", 2)
    if isinstance(k, bool) or not isinstance(k, numbers.Real) or k != int(k) or k < 1:
        raise ConfigError(f"rule 'redundant' needs k, a whole number >= 1, not {k!r}",
                          hint='e.g. "redundant:k=3" (k copies of the task run; a k above '
                               "the number of bidders runs one copy per bidder)")
    return int(k)


def copies(bids: Sequence[Any], k: int) -> tuple[Any, ...]:
    """The k best of ``bids`` in specialist_first's order: on-spec first, then price, then
    agent_id (all of them when fewer than k bid)."""
    return tuple(sorted(bids, key=lambda b: (not b.on_spec, b.sats, b.agent_id))[:k])


def redundant_copies(rule: str, bids: Sequence[Any]) -> tuple[str, ...]:
    """Under ``redundant`` with k > 1 (and more than one bid): the agent_ids of every
    winner, best first; else () (one winner, the single-winner path)."""
    name, params = split_rule(rule)
    if name != REDUNDANT:
        return ()
    won = copies(bids, redundant_k(params))
    return tuple(b.agent_id for b in won) if len(won) > 1 else ()


def redundant(bids, ctx: Context) -> Award:
    """The k best bids (`copies`: specialist_first's order) all win and run the task; the
    award names the best of them (the task's ``assigned_agent`` until a copy is paid) at the
    price every copy is offered: the highest of the k winning bids (a uniform price, so the
    copy that is paid gets the same whichever it is, and never less than it bid). Who is
    paid is decided when every copy has reported (`timmy.market.redundancy`)."""
    won = copies(bids, redundant_k(ctx.params))
    price = max(b.sats for b in won)
    return Award(won[0].agent_id, price,
                 f"{len(won)} best bids ({', '.join(b.agent_id for b in won)}) each run a "
                 f"copy at {price} sats under {ctx.rule}")


#: Built-in mechanisms beside `LEGACY`, and the parameters each takes (None: any).
BUILTIN: dict[str, Mechanism] = {"first_price": first_price, "reputation": reputation,
                                 "score": score, REDUNDANT: redundant}
_BUILTIN_PARAMS: dict[str, tuple[str, ...]] = {
    "specialist_first": (), "lowest": (), "second_price": (), "first_price": (),
    "reputation": (), "score": tuple(SCORE_PARAMS), REDUNDANT: ("k",)}
_registered: dict[str, Mechanism] = {}


# -- the registry ------------------------------------------------------------
def register_mechanism(name: str, mechanism: Mechanism) -> None:
    """Make ``mechanism`` (a pure callable ``(bids, ctx) -> Award(winner, price, why)``)
    clear auctions under the rule ``name``. Registering a name again replaces the earlier
    mechanism (a notebook cell run twice); a built-in name cannot be taken."""
    if not isinstance(name, str) or not name or not name.replace("_", "").replace(
            "-", "").replace(".", "").isalnum():
        raise ConfigError(f"bad mechanism name {name!r}",
                          hint="use letters, digits, '_', '-' or '.', e.g. 'my_auction'")
    if name in _BUILTIN_PARAMS:
        raise ConfigError(f"{name!r} is a built-in mechanism and cannot be replaced",
                          hint="register yours under another name")
    if not callable(mechanism):
        raise ConfigError(f"mechanism {name!r} is not callable",
                          hint="register a function (bids, ctx) -> Award(winner, price, why)")
    _registered[name] = mechanism


def unregister_mechanism(name: str) -> None:
    """Forget a registered mechanism (tests; built-ins stay)."""
    _registered.pop(name, None)


def mechanism_names() -> tuple[str, ...]:
    """Every rule name a swarm accepts now: the built-ins, then the registered ones."""
    return tuple(_BUILTIN_PARAMS) + tuple(sorted(_registered))


def split_rule(rule: str) -> tuple[str, dict[str, Any]]:
    """``"score:w_price=0.7"`` -> ``("score", {"w_price": 0.7})``; raises `ConfigError`."""
    if not isinstance(rule, str):
        raise ConfigError(f"a clearing rule is a name, not {rule!r}",
                          hint=f"use one of: {', '.join(mechanism_names())}")
    name, _, rest = rule.partition(":")
    params: dict[str, Any] = {}
    for part in filter(None, (s.strip() for s in rest.split(","))):
        key, eq, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if not eq or not key:
            raise ConfigError(f"rule {rule!r} has a bad parameter {part!r}",
                              hint='write parameters as "name:key=value,key=value"')
        try:
            params[key] = float(value)
        except ValueError:
            params[key] = value
    return name.strip(), params


def check_rule(rule: str) -> str:
    """Return ``rule`` if it names a registered mechanism (with parameters it takes), else
    raise `ConfigError` naming the registered ones."""
    name, params = split_rule(rule)
    if name not in _BUILTIN_PARAMS and name not in _registered:
        raise ConfigError(f"unknown clearing rule {name!r}",
                          hint=f"use one of: {', '.join(mechanism_names())} (or register "
                          "yours with timmy.register_mechanism)")
    known = _BUILTIN_PARAMS.get(name)
    if known is not None:
        bad = sorted(set(params) - set(known))
        if bad:
            takes = f"takes {', '.join(known)}" if known else "takes no parameters"
            raise ConfigError(f"rule {name!r} has no parameter {bad[0]!r}",
                              hint=f"{name} {takes}")
        for key, value in params.items():
            if not isinstance(value, float):
                raise ConfigError(f"rule {name!r} parameter {key}={value!r} is not a number",
                                  hint=f'e.g. "{name}:{key}=0.5"')
    if name == REDUNDANT:
        redundant_k(params)
    return rule


def mechanism(name: str) -> Mechanism:
    """The callable registered under ``name`` (a rule's name, without parameters)."""
    found = BUILTIN.get(name) or _registered.get(name)
    if found is None:
        check_rule(name)
        raise ConfigError(f"{name!r} is cleared by timmy.market.auction.clear",
                          hint="call timmy.market.auction.clear(task_id, bids, rule)")
    return found


# -- running one ---------------------------------------------------------------
def _is_price(price: object) -> bool:
    return isinstance(price, numbers.Integral) and not isinstance(price, bool) and price >= 0


def decide(rule: str, bids: Sequence[Any], task_id: int, description: str = "",
           reputation: Mapping[str, float] | None = None
           ) -> tuple[str | None, int | None, str, str | None]:
    """Run ``rule``'s mechanism on ``bids`` (non-empty, sorted): (winner, price, why, error).
    With an ``error`` (the mechanism raised or lied) the winner and price are None."""
    name, params = split_rule(rule)
    fn = mechanism(name)
    rep = {} if reputation is None else reputation   # a `Reputation` answers for everyone
    ctx = Context(task_id, description, rule, MappingProxyType(params),
                  MappingProxyType({b.agent_id: rep.get(b.agent_id, 1.0) for b in bids}))
    try:
        out = fn(tuple(bids), ctx)
    except Exception as e:  # a plugin's bug must not stop the swarm
        error = f"raised {type(e).__name__}: {e}"
    else:
        error = None
        if hasattr(out, "price_sats") and hasattr(out, "reason") and hasattr(out, "winner"):
            out = (out.winner, out.price_sats, out.reason)   # a timmy.Clearing
        if not isinstance(out, tuple) or len(out) != 3:
            error = f"returned {out!r:.80}, not an Award(winner, price, why)"
        else:
            winner, price, why = out
            if winner is None:
                error = f"awarded none of the {len(bids)} bids"
            elif winner not in {b.agent_id for b in bids}:
                error = f"chose {winner!r:.60}, which did not bid"
            elif not _is_price(price):
                error = f"priced the task at {price!r:.40}, not a whole number of sats >= 0"
            else:
                return winner, int(price), str(why)[:200], None
    return None, None, f"{name} failed: {error}"[:300], error[:300]


def failure_reason(rule: str, error: str) -> str:
    """The reason of a task whose auction's mechanism failed."""
    return f"mechanism {split_rule(rule)[0]!r} failed: {error}"[:300]


def after_mechanism_failure(attempt: int, max_attempts: int, rule: str, error: str) -> Decision:
    """The mechanism of attempt ``attempt``'s auction failed (raised, or chose no bidder):
    the task is auctioned again with the attempt spent (a mechanism that always fails would
    otherwise re-auction it for ever), and fails once it reaches ``max_attempts``."""
    reason = failure_reason(rule, error)
    if spent_action(attempt, max_attempts) == Action.FAIL:
        return Decision(Action.FAIL, attempt, gave_up(reason, attempt))
    return Decision(Action.REQUEUE, attempt, reason)
