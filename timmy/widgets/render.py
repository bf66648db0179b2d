"""HTML for the consoles: tables, the live feed, the header; pure functions, strings out, and
everything that came from a user or an agent goes through `esc`.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence

from timmy.market.models import ACTIVE_STATES, AGENT_WORKING_STATES, TASK_STATES
from timmy.widgets.teach import TIPS

STATUS_COLOURS = {"completed": "#2e7d32", "failed": "#c62828", "cancelled": "#757575",
                  "running": "#1565c0", "assigned": "#6a1b9a", "bidding": "#ef6c00",
                  "queued": "#455a64", "awaiting_approval": "#f9a825",
                  "idle": "#2e7d32", "busy": "#1565c0",
                  "restarting": "#ef6c00", "disconnected": "#ef6c00", "stopped": "#757575"}
TABLE = ('<table style="border-collapse:collapse;width:100%;font-size:13px">'
         '<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>')


def esc(value) -> str:
    """Any value as HTML text: ``None`` as an em dash, markup as visible characters."""
    return "—" if value is None else html.escape(str(value), quote=True)


def clip(text: str | None, n: int = 80) -> str | None:
    if text is None or len(text) <= n:
        return text
    return text[: n - 1] + "…"


def badge(status: str) -> str:
    colour = STATUS_COLOURS.get(status, "#455a64")
    return (f'<span style="color:#fff;background:{colour};border-radius:3px;'
            f'padding:0 4px">{esc(status)}</span>')


def table(head: Sequence[str], rows: Iterable[Sequence[str]], empty: str = "nothing yet") -> str:
    """A table of already-escaped cells (use `esc` on every value you pass in); each header
    known to `timmy.widgets.teach.TIPS` carries its tooltip."""
    th = "".join(f'<th title="{esc(TIPS.get(h, ""))}" style="text-align:left;'
                 f'border-bottom:1px solid #ccc;padding:2px 6px">{esc(h)}</th>' for h in head)
    body = "".join("<tr>" + "".join(f'<td style="padding:2px 6px">{c}</td>' for c in row)
                   + "</tr>" for row in rows)
    if not body:
        body = f'<tr><td colspan="{len(head)}" style="color:#888">{esc(empty)}</td></tr>'
    return TABLE.format(head=th, body=body)


def agents_table(agents) -> str:
    rows = [(esc(a.agent_id), esc(a.persona), badge(a.status), esc(len(a.held)),
             esc(a.tasks_won), esc(a.earned_sats), esc(a.restarts), reliability(a))
            for a in sorted(agents, key=lambda a: a.agent_id)]
    return table(("agent", "persona", "status", "holds", "won", "earned (sats)", "restarts",
                  "reliability"), rows, empty="no agents: spawn one")


def reliability(agent) -> str:
    """An agent's reliability to two places, "–" before anything is known of it."""
    r = getattr(agent, "reliability", None)
    return "–" if r is None else esc(f"{r:.2f}")


def tasks_table(rows, empty: str = "no tasks") -> str:
    body = [(esc(r.task_id), esc(clip(r.description)), badge(r.status), esc(r.agent),
             esc(r.price_sats), esc(r.attempts), esc(clip(r.reason or r.why, 60)))
            for r in rows]
    return table(("task", "description", "status", "winner", "price", "attempt", "why / reason"),
                 body, empty=empty)


def describe_event(event) -> str:
    """One escaped line for the feed."""
    d = event.data or {}
    who = f" {esc(event.agent_id)}" if event.agent_id else ""
    task = f" #{esc(event.task_id)}" if event.task_id is not None else ""
    extra = {
        "task_posted": lambda: f": {esc(clip(d.get('description'), 60))}",
        "bid": lambda: f" {esc(d.get('sats'))} sats{' on-spec' if d.get('on_spec') else ''}",
        "auction_closed": lambda: f" → {esc(event.agent_id)} at {esc(d.get('price_sats'))}: "
                                  f"{esc(d.get('why'))}",
        "task_completed": lambda: f" for {esc(d.get('price_sats'))} sats",
        "task_failed": lambda: f": {esc(clip(d.get('reason'), 60))}",
        "task_requeued": lambda: f": {esc(clip(d.get('reason'), 60))}",
    }.get(event.kind, lambda: "")()
    if event.kind == "auction_closed":
        who = ""
    return f"<b>{esc(event.kind)}</b>{task}{who}{extra}"


def feed_html(events, limit: int = 20) -> str:
    lines = [describe_event(e) for e in list(events)[-limit:]][::-1]
    if not lines:
        return '<div style="color:#888">waiting for events…</div>'
    return ('<div style="font-family:monospace;font-size:12px;line-height:1.5">'
            + "<br>".join(lines) + "</div>")


def status_line(counts, agents) -> str:
    """The header: tasks by state and agents by state."""
    tasks = " · ".join(f"{esc(k)} {counts[k]}" for k in TASK_STATES if counts.get(k))
    live = sum(a.status in ("idle", "busy") for a in agents)
    busy = sum(a.status == "busy" for a in agents)
    line = (f'<div style="font-size:14px"><b>{live} runners</b> ({busy} busy) · '
            f"{tasks or 'no tasks yet'}</div>")
    waiting = sum(counts.get(k, 0) for k in ACTIVE_STATES)
    if waiting and agents and not any(a.status in AGENT_WORKING_STATES for a in agents):
        line += (f'<div class="timmy-stalled" style="color:#b71c1c;font-size:14px">No runner '
                 f"can take the {waiting} waiting tasks: every agent was stopped or failed. "
                 "Spawn one and they run.</div>")
    return line
