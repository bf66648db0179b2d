"""The mobile console: a status header, a live feed, a post box and the latest results, in one
column at 100% width with buttons at least 44 px tall (a thumb's touch target).
"""

from __future__ import annotations

from timmy.errors import TimmyError
from timmy.widgets import mobile_cards, render
from timmy.widgets.console import Console, console_box
from timmy.widgets.render import esc


class MobileConsole(Console):
    """The phone-sized console.

    Result text is fetched only for the few newest completed tasks, once each, with
    ``swarm.wait(task_id)`` (which answers at once for a finished task).
    """

    def __init__(self, swarm, interval: float = 0.25, feed_lines: int = 15,
                 results: int = 5) -> None:
        super().__init__(swarm, interval=interval, feed_size=max(feed_lines, 50))
        w = self.w
        self.feed_lines, self.result_count = feed_lines, results
        self._results: dict[int, str | None] = {}
        full = w.Layout(width="100%")
        self.header = w.HTML(layout=full)
        self.feed = w.HTML(layout=w.Layout(width="100%", max_height="40vh", overflow="auto"))
        self.results = w.HTML(layout=full)
        self.cards = w.HTML(layout=full)   # stat cards and a chart (`mobile_cards`)
        self.chart = w.HTML(layout=full)
        for widget, name in ((self.header, "header"), (self.feed, "feed"),
                             (self.results, "results"), (self.cards, "cards"),
                             (self.chart, "price-chart")):
            widget.add_class(f"timmy-{name}")   # stable hooks for CSS and browser tests
        from timmy.widgets.approvals import ApprovalsPanel

        self.approvals = ApprovalsPanel(self, full_width=True)   # big Approve / Reject
        self.box = console_box()(
            [self.header, self.cards, w.HTML("<b>Awaiting approval</b>"), self.approvals.box,
             self.post_box(full_width=True), self.speak_toggle(full_width=True),
             w.HTML("<b>Latest results</b>"), self.results,
             w.HTML("<b>Live</b>"), self.feed, self.chart],
            layout=w.Layout(width="100%", max_width="100vw", overflow="hidden auto"))
        self.box.console = self
        self.ready = True
        self.redraw_now()

    def render(self):
        s = self.state
        newest = list(s.completed_ids)[-self.result_count:][::-1]
        items = []
        for tid in newest:
            row = s.tasks.get(tid)
            if row is None:
                continue
            result = self._results.get(tid)
            items.append(
                f"<div style='border-bottom:1px solid #eee;padding:4px 0;overflow-wrap:anywhere'>"
                f"<b>#{esc(tid)}</b> {esc(render.clip(row.description, 60))}<br>"
                f"<small>{esc(row.agent)} · {esc(row.price_sats)} sats</small>"
                + (f"<br><small>{esc(render.clip(result, 160))}</small>" if result else "")
                + "</div>")
        return [
            (self.header, self.connection_banner()
             + render.status_line(s.counts, list(s.agents.values()))),
            (self.feed, render.feed_html(s.feed, self.feed_lines)),
            (self.results, "".join(items) or "<i>no results yet</i>"),
            (self.cards, mobile_cards.cards_html(s)),
            (self.chart, mobile_cards.price_chart(mobile_cards.prices(s))),
        ]

    def _redraw(self) -> None:
        if self.ready:
            self._fetch_results()
        super()._redraw()
        if self.ready:
            self.approvals.refresh()

    def _fetch_results(self) -> None:
        """Result text for the newest completed tasks not fetched yet (outside the lock)."""
        with self.lock:
            wanted = [t for t in list(self.state.completed_ids)[-self.result_count:]
                      if t not in self._results]
        for tid in wanted:
            try:
                self._results[tid] = self.swarm.wait(tid, timeout=1.0).result
            except (TimmyError, OSError):   # gone, or an attached service unreachable
                self._results[tid] = None


def mobile(swarm, interval: float = 0.25):
    """The compact console for ``swarm`` (a VBox that fits a phone); its close() unsubscribes."""
    return MobileConsole(swarm, interval=interval).box
