"""`Console`: what the desktop and mobile consoles share.

A console subscribes to a swarm (a local `timmy.Swarm` or an attached client: only
the public methods are used), folds every event into a `SwarmState` on the
engine's thread (quick, under a lock), and redraws its widgets through a
`Throttle`, at most every ``interval`` seconds, from a timer thread. The database
is read once, for the snapshot it starts from; after that only events count.
Closing the returned box unsubscribes.
"""

from __future__ import annotations

import functools
import threading

from ..errors import TimmyError, require
from .render import esc
from .state import SwarmState
from .throttle import Throttle

TOUCH = {"min_height": "44px"}


def ipywidgets():
    return require("ipywidgets", "notebooks")


@functools.cache
def console_box():
    """The container class every console returns: a VBox whose close() also unsubscribes."""
    w = ipywidgets()

    class ConsoleBox(w.VBox):
        console: Console | None = None

        def close(self) -> None:
            if self.console is not None:
                self.console.detach()
            super().close()

    return ConsoleBox


class Console:
    """Subscription, state and throttled redraws; subclasses build widgets and `render`."""

    def __init__(self, swarm, interval: float = 0.25, feed_size: int = 50) -> None:
        self.w = ipywidgets()
        self.swarm = swarm
        self.state = SwarmState(feed_size=feed_size)
        self.lock = threading.Lock()
        self.throttle = Throttle(self._redraw, interval)
        self.ready = False                # set by a subclass once its widgets exist
        self._pending: list | None = []   # events that arrive before the snapshot is in
        self.connected: bool | None = None   # None: a local swarm, always there
        if is_attached(swarm):
            self._unsubscribe = swarm.subscribe(self.on_event, on_connection=self.on_connection)
        else:
            self._unsubscribe = swarm.subscribe(self.on_event)
        try:
            tasks, agents = swarm.tasks(), swarm.agents()
        except BaseException:
            self.detach()
            raise
        with self.lock:
            self.state.load(tasks, agents)
            for event in self._pending:
                self.state.apply(event)
            self._pending = None

    # -- events -------------------------------------------------------------
    def on_event(self, event) -> None:
        """The subscriber: fold the event in and ask for a redraw (runs on the engine's thread)."""
        with self.lock:
            if self._pending is not None:
                self._pending.append(event)
                return
            self.state.apply(event)
        self.throttle.poke()

    def on_connection(self, up: bool) -> None:
        """An attached swarm's event stream was lost (False) or is back (True)."""
        self.connected = up
        self.throttle.poke()

    def connection_banner(self) -> str:
        """A red line while an attached swarm's service is out of reach, else nothing."""
        if self.connected is not False:
            return ""
        return ('<div class="timmy-offline" style="background:#c62828;color:#fff;'
                'padding:4px 8px;border-radius:3px">service out of reach: reconnecting…'
                "</div>")

    @property
    def redraws(self) -> int:
        return self.throttle.redraws

    def detach(self) -> None:
        """Unsubscribe and stop redrawing (the box's close() calls this). Safe to call twice."""
        self.throttle.close()
        unsubscribe, self._unsubscribe = self._unsubscribe, lambda: None
        unsubscribe()

    # -- drawing ------------------------------------------------------------
    def render(self) -> list[tuple[object, str]]:
        """(widget, new value) pairs, computed from the state (called under the lock)."""
        raise NotImplementedError

    def _redraw(self) -> None:
        if not self.ready:
            return
        with self.lock:
            updates = self.render()
        for widget, value in updates:
            if widget.value != value:   # an unchanged widget sends nothing to the browser
                widget.value = value

    def redraw_now(self) -> None:
        """Draw at once (after a user action, and in tests)."""
        self.throttle.flush()

    # -- shared controls ----------------------------------------------------
    def post_box(self, full_width: bool = False):
        """A Text and a Post button; a line under them says what happened."""
        w = self.w
        width = "100%" if full_width else None
        self.post_text = w.Text(placeholder="describe a task…", continuous_update=False,
                                layout=w.Layout(width=width or "420px", **TOUCH))
        self.post_button = w.Button(description="Post task", button_style="primary",
                                    icon="paper-plane", layout=w.Layout(width=width, **TOUCH))
        self.post_message = w.HTML()
        self.post_message.add_class("timmy-post-message")
        self.post_button.on_click(self._on_post)
        row = w.VBox if full_width else w.HBox
        return w.VBox([row([self.post_text, self.post_button]), self.post_message])

    def _on_post(self, _button=None) -> None:
        description = self.post_text.value.strip()
        if not description:
            self.post_message.value = "write a description first"
            return
        try:
            task = self.swarm.post(description)
        except (TimmyError, OSError) as exc:   # OSError: a service out of reach
            self.post_message.value = error_html(exc)
            return
        self.post_text.value = ""
        self.post_message.value = (f"posted task #{task.task_id}: "
                                   f"{esc(description[:80])}")
        self.redraw_now()


def is_attached(swarm) -> bool:
    """True for a `timmy.Swarm.attach` client (its subscribe reports the connection)."""
    from ..client import AttachedSwarm

    return isinstance(swarm, AttachedSwarm)


def error_html(exc: Exception) -> str:
    """A timmy error (its message and hint) or an OSError, as escaped HTML."""
    hint = getattr(exc, "hint", "")
    hint = f"<br><i>hint: {esc(hint)}</i>" if hint else ""
    return f'<span style="color:#c62828">{esc(getattr(exc, "message", exc))}</span>{hint}'
