"""The desktop's charts, with bqplot (renders in Voilà and JupyterLab alike): throughput over
time, queue depth, clearing prices by persona (on-spec vs off-spec), earnings and win share by
persona; every chart has labelled axes with units and a legend. The legends are HTML lines
under the figures, outside the plots (bqplot draws its own inside the plot area, over the
lines and bars). `MarketCharts.update` redraws them from a `timmy.widgets.market.MarketHistory`,
sending only what changed.
"""

from __future__ import annotations

from timmy.errors import require
from timmy.widgets.render import esc
from timmy.widgets.teach import EMPTY_CHARTS

HEIGHT = "230px"
WIDTH = "400px"
MIN_DEPTH_TOP = 5   # the queue-depth axis reaches at least this many tasks
LEGEND = ('<span class="timmy-legend-item" style="margin-right:14px;white-space:nowrap">'
          '<span style="color:{colour};font-weight:bold">{symbol}</span> {label}</span>')


def legend_html(items) -> str:
    """A chart's legend, (label, colour, symbol) each, as one line of HTML."""
    return ('<div style="font-size:12px;text-align:center">'
            + "".join(LEGEND.format(label=esc(label), colour=esc(colour), symbol=esc(symbol))
                      for label, colour, symbol in items) + "</div>")


def whole_ticks(top: int, n: int = 5) -> list[int]:
    """About ``n`` ticks of whole numbers from 0 past ``top``, a step of 1, 2 or 5 x 10^k."""
    import math

    raw = max(top, 1) / n
    mag = 10 ** math.floor(math.log10(raw)) if raw >= 1 else 1
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    return list(range(0, math.ceil(max(top, 1) / step) * step + 1, step))


def bqplot():
    return require("bqplot", "notebooks")


class MarketCharts:
    """Four bqplot figures and a line of the numbers behind them, in one ``box``."""

    def __init__(self, w) -> None:
        bq = bqplot()
        self.w = w
        self.chart_boxes: list = []   # each figure with its legend
        time_x = bq.DateScale()
        self.throughput = bq.Lines(x=[], y=[], scales={"x": time_x, "y": bq.LinearScale(min=0)},
                                   labels=["completed / s"],
                                   colors=["#1565c0"], marker="circle", marker_size=16)
        self.depth = bq.Lines(x=[], y=[], scales={"x": time_x,
                                                  "y": bq.LinearScale(min=0)},
                              labels=["queued or bidding"],
                              colors=["#ef6c00"])
        self.fig_flow = self._figure(
            "Throughput and queue depth", [self.throughput, self.depth],
            [("completed / s", "#1565c0", "━●"), ("queued or bidding", "#ef6c00", "━")],
            [bq.Axis(scale=time_x, label="time"),
             bq.Axis(scale=self.throughput.scales["y"], side="left",
                     label="completions per second", tick_format=".2f"),
             self._depth_axis(bq)])
        persona_x, price_y = bq.OrdinalScale(), bq.LinearScale(min=0)
        scales = {"x": persona_x, "y": price_y}
        self.on_spec = bq.Scatter(x=[], y=[], scales=scales, marker="circle",
                                  colors=["#2e7d32"], labels=["on-spec"],
                                  default_size=40)
        self.off_spec = bq.Scatter(x=[], y=[], scales=scales, marker="cross",
                                   colors=["#c62828"], labels=["off-spec"],
                                   default_size=40)
        self.fig_prices = self._figure(
            "Clearing prices by persona", [self.on_spec, self.off_spec],
            [("on-spec", "#2e7d32", "●"), ("off-spec", "#c62828", "✚")],
            [bq.Axis(scale=persona_x, label="winning persona"),
             bq.Axis(scale=price_y, side="left", label="price (sats)",
                     tick_format="d")])
        bars_x = bq.OrdinalScale()
        self.earned = bq.Bars(x=[], y=[], scales={"x": bars_x, "y": bq.LinearScale(min=0)},
                              colors=["#6a1b9a"], labels=["sats earned"])
        self.share = bq.Lines(x=[], y=[], scales={"x": bars_x,
                                                  "y": bq.LinearScale(min=0, max=100)},
                              colors=["#f9a825"], labels=["win share %"],
                              marker="circle")
        self.fig_personas = self._figure(
            "Earnings and win share by persona", [self.earned, self.share],
            [("sats earned", "#6a1b9a", "■"), ("win share %", "#f9a825", "━●")],
            [bq.Axis(scale=bars_x, label="persona"),
             bq.Axis(scale=self.earned.scales["y"], side="left",
                     label="earned (sats)", tick_format="d"),
             bq.Axis(scale=self.share.scales["y"], side="right",
                     label="win share (%)", tick_format="d")])
        self.data_line = w.HTML()
        self.data_line.add_class("timmy-chart-data")
        self.empty = w.HTML()
        self.empty.add_class("timmy-charts-empty")
        grid = w.HBox(self.chart_boxes,
                      layout=w.Layout(flex_flow="row wrap", width="100%"))
        self.box = w.VBox([self.empty, grid, self.data_line])
        self.box.add_class("timmy-market-charts")
        self._last: tuple | None = None

    def _depth_axis(self, bq):
        self.depth_axis = bq.Axis(scale=self.depth.scales["y"], side="right",
                                  label="tasks waiting", tick_format="d")
        return self.depth_axis

    def _figure(self, title: str, marks, legend, axes):
        """A figure; it and its legend under it join `chart_boxes` (at most the page's width)."""
        w = self.w
        fig = bqplot().Figure(marks=marks, axes=axes, title=title,
                              fig_margin={"top": 40, "bottom": 45, "left": 60, "right": 60},
                              layout=w.Layout(width="100%", height=HEIGHT))
        fig.add_class("timmy-chart")
        key = w.HTML(legend_html(legend), layout=w.Layout(width="100%"))
        key.add_class("timmy-legend")
        box = w.VBox([fig, key], layout=w.Layout(width=WIDTH, max_width="100%",
                                                 margin="0 0 8px 0"))
        box.add_class("timmy-chart-box")
        self.chart_boxes.append(box)
        return fig

    def update(self, market, now: float) -> bool:
        """Redraw from ``market`` (at time ``now``); False when nothing changed."""
        import numpy as np

        xs, rate = market.throughput(now)
        _, depth = market.queue_depth(now)
        on = [p for p in market.prices if p.on_spec]
        off = [p for p in market.prices if not p.on_spec]
        personas = market.by_persona()
        key = (tuple(xs), tuple(rate), tuple(depth), tuple(market.prices), tuple(personas))
        if key == self._last:
            return False
        self._last = key
        times = np.array([x * 1000 for x in xs], dtype="datetime64[ms]")
        names = [p for p, *_ in personas]
        with self.throughput.hold_sync(), self.depth.hold_sync():
            self.throughput.x, self.throughput.y = times, np.array(rate, dtype=float)
            self.depth.x, self.depth.y = times, np.array(depth, dtype=float)
        ticks = whole_ticks(max(max(depth, default=0), MIN_DEPTH_TOP))
        with self.depth_axis.hold_sync():   # from 0 (a flat line sits halfway up otherwise)
            self.depth.scales["y"].max = float(ticks[-1])
            self.depth_axis.tick_values = np.array(ticks, dtype=float)
        for mark, points in ((self.on_spec, on), (self.off_spec, off)):
            with mark.hold_sync():
                mark.x = [p.persona for p in points]
                mark.y = np.array([p.sats for p in points], dtype=float)
        with self.earned.hold_sync(), self.share.hold_sync():
            self.earned.x, self.earned.y = names, np.array([e for _, _, e, _ in personas],
                                                           dtype=float)
            self.share.x, self.share.y = names, np.array([s * 100 for *_, s in personas],
                                                         dtype=float)
        done = sum(market.completions.values())
        self.empty.value = ("" if done or market.prices else
                            f'<div style="color:#888">{esc(EMPTY_CHARTS)}</div>')
        self.data_line.value = (f'<details style="font-size:11px;color:#666"><summary>'
                                f"numbers behind the charts</summary>{esc(market.summary())}"
                                "</details>")
        return True
