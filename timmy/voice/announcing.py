"""The announcer: a swarm subscriber that speaks (or saves) auction winners, completions and
failures, rate-limited and merged into summaries, on a thread of its own; without a voice it
logs one warning and stays silent, so it never crashes or slows a swarm.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from timmy.errors import ConfigError, VoiceUnavailable
from timmy.market.models import Event
from timmy.voice.news import NEWS_KINDS, news_of, sentence
from timmy.voice.speech import audio_output, one_line, save, speak, start_engine

log = logging.getLogger("timmy.voice")

_warned: set[str] = set()


def _warn_once(exc: VoiceUnavailable) -> None:
    line = f"voice is off: {one_line(exc)}"
    if exc.hint:
        line += f" (hint: {' '.join(exc.hint.split())})"
    if line not in _warned:
        _warned.add(line)
        log.warning("%s", line)


class Announcer:
    """A swarm subscriber that speaks auction winners, completions and failures.

    ``swarm.subscribe(Announcer())``. Calls cost a lock and a counter on the caller's
    thread; speech happens on the announcer's own thread, at most once every
    ``min_interval`` seconds, merging what arrived meanwhile into one summary. With
    ``to=DIR`` each announcement is saved as ``DIR/announcement-0001.wav`` ... instead of
    played (a machine without speakers, a recording of a run).

    Counters: ``heard`` (events worth announcing), ``announced`` (of those, covered by
    something said), ``spoken`` (utterances), ``dropped`` (not said: voice unavailable,
    an utterance that failed, or closed before it could speak). ``said`` keeps the last 100
    sentences, ``silenced`` why the announcer went quiet (None while it can speak).

    A voice that cannot start (no pyttsx3, no espeak-ng, no audio device) silences the
    announcer at once. One utterance that fails (a full disk, a speech engine that
    hiccups) only drops what it covered: the announcer goes quiet after ``max_failures``
    failures in a row. ``on_silenced(error)`` is called once when it does, with a
    `VoiceUnavailable` (its message and hint): a dashboard says so instead of showing
    "speaking events" over silence.

    Its callback runs on the engine's thread and only counts the event under a lock: no
    I/O, no speech, no queue that can grow, so speech never slows an auction and never
    falls behind. Without a voice it logs one line once (on the ``timmy.voice`` logger)
    and stays silent, counting what it could not say in ``dropped``.
    """

    def __init__(self, to: str | Path | None = None, *, min_interval: float = 2.0,
                 on_said: Callable[[str, Path | None], None] | None = None,
                 on_silenced: Callable[[VoiceUnavailable], None] | None = None,
                 max_failures: int = 3) -> None:
        if min_interval < 0:
            raise ConfigError(f"min_interval must be >= 0, not {min_interval}",
                              hint="pass the fewest seconds between two announcements")
        if max_failures < 1:
            raise ConfigError(f"max_failures must be >= 1, not {max_failures}",
                              hint="pass how many failed utterances in a row silence it")
        self.to = Path(to) if to is not None else None
        if self.to is not None:
            self.to.mkdir(parents=True, exist_ok=True)
        self.min_interval = min_interval
        self.on_said = on_said      # called with (sentence, WAV path or None) after each one
        self.on_silenced = on_silenced
        self.max_failures = max_failures
        self.failures = 0           # utterances that failed in a row
        self.heard = self.announced = self.spoken = self.dropped = 0
        self.said: deque[str] = deque(maxlen=100)
        self.silenced: str | None = None
        self._pending: Counter = Counter()
        self._last: Event | None = None
        self._closing = False
        # A plain Lock (its `with` is C code: the engine's thread takes it per news event);
        # the condition on it wakes the announcer's thread.
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._thread = threading.Thread(target=self._run, name="timmy-announcer", daemon=True)
        _live_announcers.add(self)
        _register_exit_flush()
        self._thread.start()

    # -- the caller's side (the swarm engine's thread) ------------------------------
    def __call__(self, event: Event) -> None:
        if event.kind not in NEWS_KINDS:   # most events (bids...): the cheapest way out
            return
        news = news_of(event)
        if news is None:
            return
        with self._lock:
            self.heard += 1
            if self.silenced is not None or self._closing:
                self.dropped += 1
                return
            if not self._pending:   # only an idle announcer needs waking: one wake per batch
                self._wake.notify()
            self._pending[news] += 1
            self._last = event

    def close(self, wait: float = 0.0) -> Announcer:
        """Stop listening; what is pending is said at once (no rate limit), in the background.

        ``wait``: seconds to wait for that last announcement. Returns the announcer.
        """
        with self._lock:
            self._closing = True
            self._wake.notify()
        if wait > 0:
            self._thread.join(wait)
        return self

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {"heard": self.heard, "announced": self.announced, "spoken": self.spoken,
                    "dropped": self.dropped, "pending": sum(self._pending.values()),
                    "silenced": self.silenced}

    def __repr__(self) -> str:
        where = f"to={str(self.to)!r}" if self.to is not None else "to the audio device"
        s = self.stats()
        state = f"silenced: {s['silenced']}" if s["silenced"] else "speaking"
        return (f"<Announcer {where}, {state}; heard {s['heard']}, spoken {s['spoken']}, "
                f"dropped {s['dropped']}>")

    # -- the announcer's thread ----------------------------------------------------
    def _run(self) -> None:
        try:
            self._speak_until_closed()
        finally:
            _live_announcers.discard(self)

    def _speak_until_closed(self) -> None:
        try:
            self._ready()
        except VoiceUnavailable as exc:
            self._silence(exc)
            return
        next_at = 0.0
        while True:
            with self._lock:
                while not self._pending and not self._closing:
                    self._wake.wait()
                while not self._closing and (delay := next_at - time.monotonic()) > 0:
                    self._wake.wait(delay)  # the rate limit; close() cuts it short
                if not self._pending:
                    return  # closing, nothing left to say
                counts, last = self._pending, self._last
                self._pending = Counter()
            n = sum(counts.values())
            text = sentence(counts, last)
            next_at = time.monotonic() + self.min_interval
            try:
                self._say(text)
            except Exception as exc:  # an engine error must not kill the announcer silently
                with self._lock:
                    self.dropped += n
                    self.failures += 1
                    failures = self.failures
                if not isinstance(exc, VoiceUnavailable):
                    exc = VoiceUnavailable(f"speech failed: {one_line(exc)}",
                                           hint="run `timmy doctor`")
                if failures >= self.max_failures:
                    self._silence(exc)
                    return
                log.warning("an announcement was not said (%d of %d failures in a row "
                            "before the voice goes quiet): %s", failures, self.max_failures,
                            one_line(exc))
                continue
            with self._lock:
                self.failures = 0
                self.spoken += 1
                self.announced += n
                self.said.append(text)

    def _ready(self) -> None:
        """Fail early (before the first event) when speech cannot work here."""
        start_engine()
        if self.to is None:
            audio_output()

    def _say(self, text: str) -> None:
        path = None
        if self.to is None:
            speak(text)
        else:
            path = save(text, self.to / f"announcement-{self.spoken + 1:04d}.wav")
        if self.on_said is not None:
            try:
                self.on_said(text, path)
            except Exception:
                log.exception("on_said callback failed")

    def _silence(self, exc: VoiceUnavailable) -> None:
        with self._lock:
            self.silenced = one_line(exc)
            self.dropped += sum(self._pending.values())
            self._pending = Counter()
        _warn_once(exc)
        if self.on_silenced is not None:
            try:
                self.on_silenced(exc)
            except Exception:
                log.exception("on_silenced callback failed")


def announcer(to: str | Path | None = None, *, min_interval: float = 2.0,
              on_said: Callable[[str, Path | None], None] | None = None,
              on_silenced: Callable[[VoiceUnavailable], None] | None = None,
              max_failures: int = 3) -> Announcer:
    """An `Announcer` to pass to ``swarm.subscribe``: speaks (or, with ``to=DIR``, saves)
    auction winners and completions, rate-limited and merged, off the swarm's thread.
    ``on_said(sentence, wav_path_or_None)`` is called after each announcement (a
    dashboard plays the WAV in the browser); ``on_silenced(error)`` once if the voice
    goes quiet (``max_failures`` failed utterances in a row, or no voice at all)."""
    return Announcer(to, min_interval=min_interval, on_said=on_said,
                     on_silenced=on_silenced, max_failures=max_failures)


# At exit, announcers still running say what is pending (bounded): a script's last summary.
_live_announcers: set[Announcer] = set()
_exit_flush_registered = False
_exit_flush_lock = threading.Lock()
EXIT_FLUSH_SECONDS = 10.0


def _register_exit_flush() -> None:
    global _exit_flush_registered
    with _exit_flush_lock:
        if not _exit_flush_registered:
            atexit.register(_flush_at_exit)
            _exit_flush_registered = True


def _flush_at_exit() -> None:
    deadline = time.monotonic() + EXIT_FLUSH_SECONDS
    closing = list(_live_announcers)
    for a in closing:
        a.close()
    for a in closing:
        a._thread.join(max(0.0, deadline - time.monotonic()))
