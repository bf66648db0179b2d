"""The desktop console: agents, recent auctions, tasks, controls, live charts and an inspector;
``timmy.widgets.desktop(swarm)`` in a notebook cell, on a local swarm or an attached client.
"""

from __future__ import annotations

import contextlib
import time

from timmy.errors import TimmyError
from timmy.market.models import TASK_STATES
from timmy.widgets import render
from timmy.widgets.cards import cards_html
from timmy.widgets.console import TOUCH, Console, console_box, error_html
from timmy.widgets.render import esc
from timmy.widgets.teach import EMPTY_FILTERED, EMPTY_TASKS

ALL = "all"
STATUS_EVERY = 1.0   # seconds between status() calls for the spend card


class DesktopConsole(Console):
    """Builds the desktop widgets; `render` fills them from the state."""

    status: dict | None = None        # the swarm's last status() (spend, budget left)
    _status_at = float("-inf")

    def __init__(self, swarm, interval: float = 0.25, task_rows: int = 100) -> None:
        from timmy.widgets.market import MarketHistory

        self.market = MarketHistory()   # the cards' and charts' history (timmy.widgets.market)
        super().__init__(swarm, interval=interval)
        w = self.w
        self._load_market()
        self.task_rows = task_rows
        self.header = w.HTML()
        self.agents_html = w.HTML()
        self.tasks_html = w.HTML()
        self.status_filter = w.Dropdown(options=[ALL, *TASK_STATES], value=ALL,
                                        description="status", layout=w.Layout(width="220px"))
        self.status_filter.observe(lambda _change: self.redraw_now(), names="value")
        self.persona_pick = w.Dropdown(options=self._personas(), description="persona",
                                       layout=w.Layout(width="220px"))
        self.spawn_button = w.Button(description="Spawn", icon="plus", layout=w.Layout(**TOUCH))
        self.spawn_button.on_click(self._on_spawn)
        self.agent_pick = w.Dropdown(options=[], description="agent",
                                     layout=w.Layout(width="220px"))
        self.stop_button = w.Button(description="Stop", icon="stop", button_style="warning",
                                    layout=w.Layout(**TOUCH))
        self.stop_button.on_click(self._on_stop)
        self.control_message = w.HTML()
        from timmy.widgets.inspector import Inspector

        self.inspector = Inspector(swarm, recent=self.state.recent)
        from timmy.widgets.recent import RecentPanel

        self.recent = RecentPanel(w, self._open_auction)   # replaces "open auctions"
        from timmy.widgets.approvals import ApprovalsPanel

        self.approvals = ApprovalsPanel(self)
        controls = w.VBox([self.post_box(),
                           w.HBox([self.persona_pick, self.spawn_button,
                                   self.agent_pick, self.stop_button]),
                           self.control_message, self.speak_toggle()])
        left = w.VBox([w.HTML("<h4>Agents</h4>"), self.agents_html,
                       w.HTML("<h4>Recent auctions</h4>"), self.recent.box],
                      layout=w.Layout(width="50%"))
        right = w.VBox([w.HTML("<h4>Controls</h4>"), controls,
                        w.HTML("<h4>Awaiting approval</h4>"), self.approvals.box],
                       layout=w.Layout(width="50%"))
        tasks = w.VBox([self.status_filter, self.tasks_html])
        self.tabs = tabs = w.Tab(children=[tasks, self.inspector.box])
        tabs.set_title(0, "Tasks")
        tabs.set_title(1, "Auction inspector")
        tabs.observe(lambda _change: self.redraw_now(), names="selected_index")
        for widget, name in ((self.header, "header"), (self.agents_html, "agents"),
                             (self.tasks_html, "tasks")):
            widget.add_class(f"timmy-{name}")   # stable hooks for CSS and browser tests
        from timmy.widgets.charts import MarketCharts
        from timmy.widgets.teach import HOW

        self.cards_html = w.HTML()
        self.cards_html.add_class("timmy-stat-cards")
        self.charts = MarketCharts(w)
        self.how = w.HTML(HOW)
        self.how.add_class("timmy-teach")
        self.box = console_box()([self.header, self.how, self.cards_html, self.charts.box,
                                  w.HBox([left, right]), tabs])
        self.box.console = self
        self.ready = True
        self.redraw_now()

    def _personas(self) -> list[str]:
        from timmy.market.personas import PERSONAS

        return sorted(PERSONAS)

    def render(self):
        now = time.time()
        s = self.state
        status = self.status_filter.value
        agents = list(s.agents.values())
        live = sorted(a.agent_id for a in agents if a.status in ("idle", "busy", "starting"))
        if list(self.agent_pick.options) != live:
            self.agent_pick.options = live
        out = [
            (self.header, self.connection_banner() + render.status_line(s.counts, agents)
             + f'<div style="font-size:11px;color:#888">{s.events_seen} events seen</div>'),
            (self.agents_html, render.agents_table(agents)),
            (self.cards_html, cards_html(s, self.market, self.status, now)),
        ]
        if self.tabs.selected_index == 0:   # the task table only while its tab shows
            out.append((self.tasks_html, render.tasks_table(
                s.rows(None if status == ALL else status, self.task_rows),
                empty=EMPTY_TASKS if status == ALL else EMPTY_FILTERED)))
        return out

    def on_event(self, event) -> None:
        with self.lock:
            self.market.apply(event)
        super().on_event(event)

    def _load_market(self) -> None:
        """The charts start from the stored events (one page, the newest) and status();
        queue depth from the store's count of tasks waiting (`MarketHistory.load`)."""
        from timmy.widgets.market import HISTORY, waiting_now

        try:
            events = self.swarm.events(limit=HISTORY)
        except (TimmyError, OSError):
            events = []   # the charts then start from the live events
        self._refresh_status(force=True)
        with self.lock:
            statuses = {tid: row.status for tid, row in self.state.tasks.items()}
            self.market.load(events, statuses, waiting_now(self.status))

    def _refresh_status(self, force: bool = False) -> None:
        """``swarm.status()`` (spend, budget left) at most every `STATUS_EVERY` seconds."""
        if not force and time.monotonic() - self._status_at < STATUS_EVERY:
            return
        self._status_at = time.monotonic()
        with contextlib.suppress(TimmyError, OSError):   # keep the last: the banner says why
            self.status = self.swarm.status()

    def _redraw(self) -> None:
        if self.ready:
            self._refresh_status()
        super()._redraw()
        if self.ready:
            with self.lock:
                self.charts.update(self.market, time.time())
            self.approvals.refresh()
            with self.lock:
                recent = self.state.recent.newest()
                rows = self.state.rows(limit=50)
            self.recent.update(recent)
            self.inspector.follow(rows)

    def _open_auction(self, task_id: int) -> None:
        """A click in the recent auctions: that task in the inspector's tab."""
        self.tabs.selected_index = 1
        self.inspector.open(task_id)

    def _on_spawn(self, _button=None) -> None:
        self._act(lambda: self.swarm.spawn(self.persona_pick.value), "spawned")

    def _on_stop(self, _button=None) -> None:
        if not self.agent_pick.value:
            self.control_message.value = "pick a running agent first"
            return
        self._act(lambda: self.swarm.stop(self.agent_pick.value), "stopped")

    def _act(self, call, verb: str) -> None:
        try:
            agent = call()
        except (TimmyError, OSError) as exc:   # OSError: a service out of reach
            self.control_message.value = error_html(exc)
            return
        self.control_message.value = f"{verb} {esc(agent.agent_id)}"
        self.redraw_now()


def desktop(swarm, interval: float = 0.25):
    """The desktop console for ``swarm``: a VBox; its close() unsubscribes.

    ``box.console`` is the `DesktopConsole` behind it (its state, its redraw count).
    """
    return DesktopConsole(swarm, interval=interval).box
