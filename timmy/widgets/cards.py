"""Stat cards: the market at a glance (runners, tasks by state, completions per second,
post-to-done latency, spend and budget left); pure HTML from a `SwarmState`, a
`timmy.widgets.market.MarketHistory` and the swarm's ``status()``.
"""

from __future__ import annotations

from timmy.market.models import TASK_STATES
from timmy.widgets.render import esc
from timmy.widgets.teach import TIPS

CARD = ('<div class="timmy-card timmy-card-{key}" title="{tip}" style="display:inline-block;'
        'min-width:120px;margin:0 8px 8px 0;padding:6px 10px;border:1px solid #ddd;'
        'border-radius:6px;background:#fafafa;vertical-align:top">'
        '<div style="font-size:11px;color:#666">{label}</div>'
        '<div class="timmy-card-value" style="font-size:20px;font-weight:600">{value}</div>'
        '<div style="font-size:11px;color:#888">{sub}</div></div>')


def card(key: str, label: str, value, sub: str = "") -> str:
    return CARD.format(key=esc(key), tip=esc(TIPS.get(key, "")), label=esc(label),
                       value=esc(value), sub=sub)


def seconds(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.1f} s"


def cards_html(state, market, status: dict | None, now: float) -> str:
    """Every card, in one HTML string (a ``<div class="timmy-cards">``)."""
    agents = list(state.agents.values())
    live = sum(a.status in ("idle", "busy") for a in agents)
    busy = sum(a.status == "busy" for a in agents)
    counts = state.counts
    by_state = " · ".join(f"{esc(k)} {counts[k]}" for k in TASK_STATES if counts.get(k))
    active = sum(counts.get(k, 0) for k in ("queued", "bidding", "assigned", "running",
                                            "awaiting_approval"))
    p50, p95 = market.latency()
    out = [
        card("runners", "runners live", live, f"{busy} busy"),
        card("tasks", "tasks in flight", active, by_state or "no tasks yet"),
        card("awaiting", "awaiting approval", counts.get("awaiting_approval", 0),
             "held over a budget"),
        card("rate", "completions / s", f"{market.rate(now):.2f}", "last 60 s"),
        card("latency", "post → done p50", seconds(p50), f"p95 {esc(seconds(p95))}"),
    ]
    status = status or {}
    if status.get("budget") is not None:   # the swarm's ledger of paid and held sats
        out.append(card("spend", "spent (sats)", status.get("spent_sats", 0),
                        f"budget left {esc(status.get('budget_left'))}"))
    else:   # no budget: what the stored window of events paid
        out.append(card("spend", "paid (sats)", market.paid_sats, "no budget set"))
    return '<div class="timmy-cards">' + "".join(out) + "</div>"
