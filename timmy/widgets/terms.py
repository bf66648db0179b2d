"""Each bid's terms under its auction's rule, ranked as the rule ranks them: what "why this
bid won" shows (pure: no widgets, no I/O).

A bid's terms are its price and whether it is on-spec; under a rule that reads reputation
(``reputation``, ``score``) also its bidder's reliability as recorded in the
``auction_closed`` event (or, for an auction recorded before that, the reliability now,
marked so), and the quantity the rule ranks by: price/reliability, or the score.
"""

from __future__ import annotations

from timmy.errors import TimmyError
from timmy.market.auction import LOWEST, RULES
from timmy.market.mechanisms import SCORE_PARAMS, split_rule

#: the column the rule ranks by (besides price and spec), per mechanism name
RANKED_BY = {"reputation": "price/reliability", "score": "score"}


def rule_name(rule: str) -> str:
    try:
        return split_rule(rule)[0]
    except TimmyError:
        return rule


def uses_reliability(rule: str) -> bool:
    return rule not in RULES and rule_name(rule) in RANKED_BY


def terms(bids: list[dict], rule: str, reliability: dict | None) -> list[dict]:
    """``bids`` (each with agent_id, sats, on_spec), best first under ``rule``, each with a
    ``rank`` (1 = what the rule prefers) and, when the rule reads it, ``reliability`` and
    ``key`` (price/reliability, or the score). A rule this module does not know is ranked
    by price (``rank`` is then the price order, and ``key`` is None)."""
    name = rule_name(rule)
    rel = {b["agent_id"]: min(1.0, max(0.0, float((reliability or {}).get(b["agent_id"], 1.0))))
           for b in bids}
    top = max((b["sats"] for b in bids), default=1) or 1
    params = {}
    if name == "score":
        try:
            params = {**SCORE_PARAMS, **split_rule(rule)[1]}
        except TimmyError:
            params = dict(SCORE_PARAMS)

    def key(b) -> float | None:
        r = rel[b["agent_id"]]
        if name == "reputation":
            return b["sats"] / r if r > 0 else float("inf")
        if name == "score" and rule not in RULES:
            q = float(params["q_on"] if b["on_spec"] else params["q_off"]) * r
            return float(params["w_quality"]) * q - float(params["w_price"]) * b["sats"] / top
        return None

    def order(b):
        k = key(b)
        if name == "reputation":
            return (k, b["sats"], b["agent_id"])
        if name == "score" and rule not in RULES:
            return (-k, b["sats"], b["agent_id"])
        if rule in RULES and rule != LOWEST:      # specialist_first, second_price
            return (not b["on_spec"], b["sats"], b["agent_id"])
        return (b["sats"], b["agent_id"])

    out = []
    for i, b in enumerate(sorted(bids, key=order), start=1):
        row = {**b, "rank": i}
        if uses_reliability(rule):
            row["reliability"] = rel[b["agent_id"]]
            row["key"] = key(b)
        out.append(row)
    return out


def fmt_key(rule: str, value: float | None) -> str:
    if value is None:
        return "-"
    if value == float("inf"):
        return "∞"
    return f"{value:.3f}" if rule_name(rule) == "score" else f"{value:.1f}"
