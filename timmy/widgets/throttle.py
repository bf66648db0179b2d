"""`Throttle`: many "something changed" pokes, at most one redraw per interval, run on a timer
thread, never on the engine's thread that delivered the event.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class Throttle:
    """Coalesce pokes into redraws at most every ``interval`` seconds (the last poke always
    gets a redraw, at most ``interval`` later). ``redraws`` counts the redraws done.

    Events can arrive a thousand a second; a browser cannot take a thousand widget
    updates a second. A poke only marks the view dirty and, if no redraw is pending, arms
    one timer for when the interval since the last redraw has passed.
    """

    def __init__(self, redraw: Callable[[], None], interval: float = 0.25) -> None:
        self._redraw = redraw
        self.interval = interval
        self.redraws = 0
        self._lock = threading.Lock()
        self._drawing = threading.Lock()   # one redraw at a time, even when one runs long
        self._timer: threading.Timer | None = None
        self._dirty = False
        self._last = float("-inf")
        self._closed = False

    def poke(self) -> None:
        """Something changed: redraw soon (from any thread; cheap)."""
        with self._lock:
            self._dirty = True
            if self._timer is not None or self._closed:
                return
            delay = max(0.0, self._last + self.interval - time.monotonic())
            self._timer = threading.Timer(delay, self._fire)
            self._timer.daemon = True
            self._timer.start()

    def flush(self) -> None:
        """Redraw now, whatever is pending (user actions want an answer at once)."""
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._dirty = True
        self._fire(from_timer=False)

    def close(self) -> None:
        """No more redraws; a pending one is dropped."""
        with self._lock:
            self._closed = True
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

    def _fire(self, from_timer: bool = True) -> None:
        with self._drawing:
            with self._lock:
                if from_timer:
                    self._timer = None
                if not self._dirty or self._closed:
                    return
                self._dirty = False
                self._last = time.monotonic()
                self.redraws += 1
            try:
                self._redraw()
            except Exception:   # a failed redraw must not kill the timer thread silently
                log.exception("redraw failed")
