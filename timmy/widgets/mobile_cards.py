"""The phone's stat cards and its one chart, as HTML (pure: from a `SwarmState`, no widgets).

Cards: runners live / busy, tasks queued, running, done, failed, and the sats paid (the
earnings of the agents known). The chart: the clearing price of each of the last auctions
(from the stored ``auction_closed`` events, so a reload draws the same bars), an inline
SVG with a labelled price axis; a cheaper phone than a chart library can draw it.
"""

from __future__ import annotations

from timmy.widgets.render import esc

LIVE = ("idle", "busy", "starting")


def cards(state) -> list[tuple[str, str]]:
    """(label, value) of each card."""
    agents = list(state.agents.values())
    c = state.counts
    return [
        ("runners live", f"{sum(a.status in LIVE for a in agents)}"),
        ("busy", f"{sum(a.status == 'busy' for a in agents)}"),
        ("queued", f"{c['queued'] + c['bidding']}"),
        ("running", f"{c['assigned'] + c['running']}"),
        ("done", f"{c['completed']}"),
        ("failed", f"{c['failed']}"),
        ("sats paid", f"{sum(a.earned_sats for a in agents)}"),
    ]


def cards_html(state) -> str:
    """The cards in a wrapping grid (three to a row on a 390 px phone)."""
    cells = "".join(
        "<div class='timmy-card' style='flex:1 1 30%;min-width:90px;box-sizing:border-box;"
        "border:1px solid #ddd;border-radius:6px;padding:4px 6px;text-align:center'>"
        f"<div style='font-size:18px;font-weight:bold'>{esc(value)}</div>"
        f"<div style='font-size:11px;color:#666'>{esc(label)}</div></div>"
        for label, value in cards(state))
    return f"<div style='display:flex;flex-wrap:wrap;gap:4px;width:100%'>{cells}</div>"


def prices(state, n: int = 20) -> list[int | None]:
    """The clearing price of each of the last ``n`` auctions, oldest first (None: no winner)."""
    return [r.price_sats for r in state.recent.newest(n)][::-1]


def price_chart(values: list[int | None], width: int = 340, height: int = 120) -> str:
    """Bars of clearing prices with a y axis (sats, 0 and the top) and an x axis label;
    an auction with no winner is a grey tick at 0."""
    left, bottom, top_pad = 34, 18, 8
    plot_w, plot_h = width - left - 4, height - bottom - top_pad
    top = max((v for v in values if v is not None), default=0) or 1
    bars = []
    step = plot_w / max(len(values), 1)
    for i, v in enumerate(values):
        x = left + i * step + 1
        h = 0 if v is None else plot_h * v / top
        color = "#bbb" if v is None else "#1565c0"
        bars.append(f'<rect x="{x:.1f}" y="{top_pad + plot_h - max(h, 1):.1f}" '
                    f'width="{max(step - 2, 1):.1f}" height="{max(h, 1):.1f}" fill="{color}">'
                    f"<title>{esc('no winner' if v is None else f'{v} sats')}</title></rect>")
    axis = (f'<line x1="{left}" y1="{top_pad}" x2="{left}" y2="{top_pad + plot_h}" '
            'stroke="#444"/>'
            f'<line x1="{left}" y1="{top_pad + plot_h}" x2="{width - 4}" '
            f'y2="{top_pad + plot_h}" stroke="#444"/>'
            f'<text x="{left - 3}" y="{top_pad + 8}" font-size="10" text-anchor="end">'
            f"{esc(top)}</text>"
            f'<text x="{left - 3}" y="{top_pad + plot_h}" font-size="10" text-anchor="end">0'
            "</text>"
            f'<text x="2" y="{top_pad + plot_h / 2:.0f}" font-size="10">sats</text>'
            f'<text x="{left + plot_w / 2:.0f}" y="{height - 4}" font-size="10" '
            'text-anchor="middle">last auctions, oldest → newest</text>')
    empty = ("" if values else
             f'<text x="{left + plot_w / 2:.0f}" y="{top_pad + plot_h / 2:.0f}" font-size="11" '
             'fill="#888" text-anchor="middle">no auctions yet: post a task</text>')
    return ("<div class='timmy-chart' style='width:100%'><b style='font-size:12px'>"
            "Clearing price per auction</b>"
            f'<svg viewBox="0 0 {width} {height}" width="100%" style="max-width:{width}px" '
            f'role="img" aria-label="clearing price per auction, sats">{axis}'
            + "".join(bars) + empty + "</svg></div>")
