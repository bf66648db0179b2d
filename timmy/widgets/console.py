"""`Console`: what the desktop and mobile consoles share (subscription, state, throttled
redraws, the post box and the "Speak events" toggle).
"""

from __future__ import annotations

import functools
import threading

from timmy.errors import TimmyError, require
from timmy.widgets.render import esc
from timmy.widgets.state import SwarmState
from timmy.widgets.throttle import Throttle

TOUCH = {"min_height": "44px"}
WINDOW = 1000   # newest tasks a console starts from (one page: the history is never loaded)


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


class SpeakMixin:
    """A "Speak events" toggle: a `timmy.voice` announcer whose WAVs play in the browser.

    The kernel synthesises each announcement with pyttsx3/espeak-ng into a WAV and hands
    it to an ``ipywidgets.Audio`` widget, so the speech comes out of the device that shows
    the page (a phone too), not out of the machine the kernel runs on. When voice cannot
    work here the toggle turns itself off and says why, with the fix.
    """

    announcer = None
    _unsubscribe_voice = None

    def speak_toggle(self, full_width: bool = False):
        w = self.w
        self.speak_button = w.ToggleButton(
            value=False, description="Speak events", icon="volume-up",
            tooltip="say auction winners and completions aloud (in this browser)",
            layout=w.Layout(width="100%" if full_width else None, **TOUCH))
        self.speak_button.observe(self._on_speak, names="value")
        self.speak_line = w.HTML()
        self.speak_line.add_class("timmy-speech")
        self.audio = w.Audio(value=b"", format="wav", autoplay=True, loop=False, controls=True,
                             layout=w.Layout(width="100%" if full_width else "260px",
                                             display="none"))
        self.audio.add_class("timmy-audio")
        return w.VBox([self.speak_button, self.speak_line, self.audio])

    def _on_speak(self, change) -> None:
        if change["new"]:
            self._start_speaking()
        else:
            self._stop_speaking()
            self.speak_line.value = ""

    def _start_speaking(self) -> None:
        import tempfile

        from timmy import voice

        try:
            voice.check()
        except TimmyError as exc:
            self.speak_button.value = False      # (clears the line: say why after it)
            self.speak_line.value = error_html(exc)
            return
        self._voice_dir = tempfile.TemporaryDirectory(prefix="timmy-speech-")
        self.announcer = voice.announcer(to=self._voice_dir.name, on_said=self._play,
                                         on_silenced=self._silenced)
        self._unsubscribe_voice = self.swarm.subscribe(self.announcer)
        self.speak_line.value = "<i>speaking events: winners and completions</i>"

    def _play(self, sentence: str, path) -> None:
        """After each announcement (on the announcer's thread): send its WAV to the page."""
        if path is None:
            return
        from pathlib import Path

        data = Path(path).read_bytes()
        Path(path).unlink(missing_ok=True)
        self.audio.layout.display = None
        self.audio.value = data
        self.speak_line.value = f"🔊 {esc(sentence)}"

    def _silenced(self, exc: TimmyError) -> None:
        """The announcer went quiet (on its thread): turn the toggle off and say why."""
        self.speak_button.value = False      # (clears the line: say why after it)
        self.speak_line.value = error_html(type(exc)(f"voice stopped: {exc.message}",
                                                     hint=exc.hint))

    def _stop_speaking(self) -> None:
        unsubscribe, self._unsubscribe_voice = self._unsubscribe_voice, None
        if unsubscribe is not None:
            unsubscribe()
        if self.announcer is not None:
            self.announcer.close()
            self.announcer = None


class Console(SpeakMixin):
    """Subscription, state and throttled redraws; subclasses build widgets and `render`.

    A console subscribes to a swarm (a local `timmy.Swarm` or an attached client: only
    the public methods are used), folds every event into a `SwarmState` on the engine's
    thread (quick, under a lock), and redraws its widgets through a `Throttle`, at most
    every ``interval`` seconds, from a timer thread. The database is read once, for the
    snapshot it starts from (the newest `WINDOW` tasks, however long the history); after
    that only events count. Closing the returned box unsubscribes.
    """

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
            tasks, agents = swarm.tasks(limit=WINDOW), swarm.agents()
            reputation = _reputation(swarm)
            from timmy.widgets.recent import load_history

            history = load_history(swarm)   # the newest stored events: feed, auctions, why
        except BaseException:
            self.detach()
            raise
        with self.lock:
            self.state.load(tasks, agents, reputation)
            self.state.load_history(history)
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
        self._stop_speaking()
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


def _reputation(swarm) -> dict | None:
    """The swarm's reputation per agent, or None from one that has none (an older service)."""
    try:
        return swarm.reputation()
    except (AttributeError, TimmyError):
        return None


def is_attached(swarm) -> bool:
    """True for a `timmy.Swarm.attach` client (its subscribe reports the connection)."""
    from timmy.service.client import AttachedSwarm

    return isinstance(swarm, AttachedSwarm)


def error_html(exc: Exception) -> str:
    """A timmy error (its message and hint) or an OSError, as escaped HTML."""
    hint = getattr(exc, "hint", "")
    hint = f"<br><i>hint: {esc(hint)}</i>" if hint else ""
    return f'<span style="color:#c62828">{esc(getattr(exc, "message", exc))}</span>{hint}'
