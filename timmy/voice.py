"""Speech: `speak` (through the audio device), `save` (a WAV file) and an `announcer` that
reads out a swarm's news; when speech cannot work, `VoiceUnavailable` names the fix and an
announcer stays silent, so nothing here crashes a swarm (how it is built: docs/guide.md).
"""

from __future__ import annotations

import atexit
import logging
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import wave
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from queue import SimpleQueue
from typing import Any

from timmy.errors import ConfigError, VoiceUnavailable
from timmy.market.models import Event

__all__ = ["Announcer", "VoiceUnavailable", "announcer", "audio_output", "check", "save",
           "speak"]

log = logging.getLogger("timmy.voice")

INSTALL_HINT = 'pip install "timmy[voice]"'
ESPEAK_HINT = ("install espeak-ng, the speech engine pyttsx3 drives on Linux: "
               "apt-get install espeak-ng")
NO_DEVICE_HINT = ("play speech where there is a sound card or a PulseAudio/PipeWire server, "
                  "or write it to a file instead: timmy.voice.save(text, 'speech.wav') "
                  "(or timmy.voice.announcer(to='announcements/'))")
# Players tried in turn for `speak` on Linux; each takes a WAV file as its last argument.
PLAYERS = (("aplay", "-q"), ("paplay",), ("pw-play",))
SYNTH_TIMEOUT = 60.0     # seconds a synthesis (plus playback) may take before we give up on it
MAX_TEXT = 10_000        # characters; espeak-ng is happy with more, a listener is not


# -- the voice thread: the only thread that touches pyttsx3 ------------------------------


class _VoiceThread:
    """One daemon thread running jobs in order; it owns the pyttsx3 engine.

    pyttsx3 (the ``voice`` extra) drives espeak-ng on Linux (NSSpeech / SAPI5 elsewhere).
    Its engine is not thread-safe and espeak-ng initialises once per process, so this one
    thread does every synthesis and playback; `speak` and `save` hand it a job and wait.
    On Linux pyttsx3 only ever *synthesises* (``save_to_file``): `speak` plays the WAV
    itself with ``aplay`` (or ``paplay``/``pw-play``) and checks the exit status, because
    pyttsx3's own ``say`` ignores the player's result and "succeeds" in silence on a
    machine without a sound card. pyttsx3's quirks handled here: it prints "Audio saved
    to ..." after each save (silenced), asserts on empty text (refused first), and
    swallows a write error inside a C callback (we write to a file we have just created).
    """

    def __init__(self) -> None:
        self.jobs: SimpleQueue[tuple[Callable[..., Any], tuple, Future]] = SimpleQueue()
        self.engine: Any = None
        self.thread = threading.Thread(target=self._run, name="timmy-voice", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            fn, args, future = self.jobs.get()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(self, *args))
            except BaseException as exc:  # handed to the caller, never lost
                future.set_exception(exc)

    def call(self, fn: Callable[..., Any], *args: Any, timeout: float = SYNTH_TIMEOUT) -> Any:
        future: Future = Future()
        self.jobs.put((fn, args, future))
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise VoiceUnavailable(
                f"speech did not finish within {timeout:g} s",
                hint="the speech engine looks stuck; restart the Python process "
                "(`timmy doctor` checks that a WAV can be synthesised)") from None


_voice: _VoiceThread | None = None
_voice_lock = threading.Lock()


def _voice_thread() -> _VoiceThread:
    global _voice
    with _voice_lock:
        if _voice is None:
            _voice = _VoiceThread()
        return _voice


def _engine(voice: _VoiceThread) -> Any:
    """The pyttsx3 engine (started on first use, on the voice thread), or VoiceUnavailable."""
    if voice.engine is None:
        voice.engine = _start_engine()
    return voice.engine


def _linux() -> bool:
    return sys.platform.startswith("linux")


def _start_engine() -> Any:
    try:
        import pyttsx3
    except ImportError as exc:
        raise VoiceUnavailable(f"pyttsx3 is not installed ({exc})", hint=INSTALL_HINT) from exc
    driver = "espeak" if _linux() else None
    root = logging.getLogger()
    handlers = list(root.handlers)
    try:
        engine = pyttsx3.init(driver)
    except Exception as exc:  # the espeak driver raises RuntimeError/OSError without the library
        if driver == "espeak":
            raise VoiceUnavailable(f"pyttsx3 cannot load espeak-ng: {_one_line(exc)}",
                                   hint=ESPEAK_HINT) from exc
        raise VoiceUnavailable(f"pyttsx3 cannot start a speech engine: {_one_line(exc)}",
                               hint="check the system's speech service; "
                               "`timmy doctor` shows what is missing") from exc
    finally:
        # The espeak driver logs with the module-level logging.debug(), which runs
        # logging.basicConfig() when the root logger has no handler: undo that, it is not
        # ours to configure.
        if not handlers:
            for handler in root.handlers[:]:
                root.removeHandler(handler)
    # pyttsx3 2.99's espeak driver print()s "Audio saved to <file>" after every save, on
    # stdout, from inside espeak's callback; a module-level `print` silences just that
    # module, where redirecting sys.stdout would swallow every thread's output meanwhile.
    espeak_driver = sys.modules.get("pyttsx3.drivers.espeak")
    if espeak_driver is not None:
        espeak_driver.print = lambda *args, **kwargs: None
    return engine


def _synthesise(voice: _VoiceThread, text: str, path: str) -> None:
    engine = _engine(voice)
    engine.save_to_file(text, path)
    engine.runAndWait()


def _speak_job(voice: _VoiceThread, text: str) -> None:
    engine = _engine(voice)
    if not _linux():   # NSSpeech / SAPI5 play and report errors themselves
        engine.say(text)
        engine.runAndWait()
        return
    players = _players()
    with tempfile.TemporaryDirectory(prefix="timmy-voice-") as tmp:
        wav = Path(tmp) / "speech.wav"
        _synthesise(voice, text, str(wav))
        _play(players, wav)


def _play(players: list[tuple[str, ...]], wav: Path) -> str:
    """Play ``wav`` with the first player that can; its name, or VoiceUnavailable."""
    errors = []
    for player in players:
        name = Path(player[0]).name
        try:
            proc = subprocess.run([*player, str(wav)], capture_output=True, text=True,
                                  timeout=_wav_seconds(wav) + 15)
        except (OSError, subprocess.TimeoutExpired) as exc:
            errors.append(f"{name}: {_one_line(exc)}")
            continue
        if proc.returncode == 0:
            return name
        said = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
        errors.append(said if said.startswith(f"{name}:") else f"{name}: {said}")
    raise VoiceUnavailable(f"no audio device: {'; '.join(errors)}", hint=NO_DEVICE_HINT)


def _players() -> list[tuple[str, ...]]:
    found = [(shutil.which(p[0]), *p[1:]) for p in PLAYERS]
    players = [p for p in found if p[0]]
    if not players:
        names = ", ".join(p[0] for p in PLAYERS)
        raise VoiceUnavailable(f"no audio player to play speech with (none of {names} "
                               "is on PATH)",
                               hint="apt-get install alsa-utils (aplay), where there is a "
                               "sound card; or " + NO_DEVICE_HINT.split(", or ", 1)[1])
    return players


# -- the public functions ---------------------------------------------------------------


def speak(text: str) -> None:
    """Say ``text`` through the audio device; returns when it has been spoken.

    Raises `VoiceUnavailable` (with a hint) when pyttsx3 or espeak-ng is missing or no
    audio device plays it.
    """
    text = _utterance(text)
    # Playback takes as long as the speech: allow for slow speech (~5 characters a second).
    _voice_thread().call(_speak_job, text, timeout=SYNTH_TIMEOUT + len(text) / 5)


def save(text: str, path: str | Path) -> Path:
    """Synthesise ``text`` into a WAV file at ``path`` (22,050 Hz, 16-bit, mono); returns it.

    The file appears only once it holds speech. Raises `VoiceUnavailable` when pyttsx3 or
    espeak-ng is missing, `OSError` when ``path`` cannot be written.
    """
    text = _utterance(text)
    path = Path(path)
    # A file we create (so a bad directory fails here, with the OS's own message) next to
    # the target (so the final rename is atomic): pyttsx3 would swallow a write error.
    part = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.part")
    part.open("xb").close()
    try:
        _voice_thread().call(_synthesise, text, str(part))
        if not part.exists():
            raise FileNotFoundError(f"{part} was removed while speech was written into it")
        if _wav_seconds(part) <= 0:
            raise VoiceUnavailable(f"the speech engine wrote no audio for {text[:40]!r}",
                                   hint="run `timmy doctor` to check espeak-ng and pyttsx3")
        part.replace(path)
    finally:
        part.unlink(missing_ok=True)
    return path


def check() -> str:
    """Synthesise a short phrase to a temporary WAV; say what it took, or raise VoiceUnavailable.

    It does not play anything: see `audio_output` for the device.
    """
    with tempfile.TemporaryDirectory(prefix="timmy-voice-") as tmp:
        t0 = time.perf_counter()
        wav = save("timmy voice check", Path(tmp) / "check.wav")
        elapsed = time.perf_counter() - t0
        seconds = _wav_seconds(wav)
    engine = "espeak-ng" if _linux() else "the system voice"
    return f"pyttsx3 + {engine}: {seconds:.1f} s of speech synthesised in {elapsed * 1000:.0f} ms"


def audio_output() -> str:
    """Which player can reach an audio device, or VoiceUnavailable with the fix.

    It plays 50 ms of silence, the only way to know: a player finds out that there is no
    sound card when it opens the device.
    """
    if not _linux():
        return "pyttsx3 plays through the system voice"
    with tempfile.TemporaryDirectory(prefix="timmy-voice-") as tmp:
        silence = Path(tmp) / "silence.wav"
        with wave.open(str(silence), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(22_050)
            w.writeframes(b"\0\0" * 1_102)
        return _play(_players(), silence)


def _utterance(text: str) -> str:
    if not isinstance(text, str) or not text.strip():
        raise ConfigError("there is nothing to say (empty text)", hint="pass some words")
    if len(text) > MAX_TEXT:
        raise ConfigError(f"the text is {len(text)} characters long, over {MAX_TEXT}",
                          hint="say less, or split it into several calls")
    return text


def _wav_seconds(path: Path | str) -> float:
    try:
        with wave.open(str(path), "rb") as w:
            return w.getnframes() / w.getframerate()
    except (wave.Error, EOFError, OSError):
        return 0.0


def _one_line(exc: BaseException) -> str:
    text = exc.message if isinstance(exc, VoiceUnavailable) else str(exc)
    return " ".join(text.split()) or type(exc).__name__


_warned: set[str] = set()


def _warn_once(exc: VoiceUnavailable) -> None:
    line = f"voice is off: {_one_line(exc)}"
    if exc.hint:
        line += f" (hint: {' '.join(exc.hint.split())})"
    if line not in _warned:
        _warned.add(line)
        log.warning("%s", line)


# -- the announcer ----------------------------------------------------------------------

_WON, _COMPLETED, _FAILED = "won", "completed", "failed"
_NEWS_KINDS = frozenset({"auction_closed", "task_completed", "task_failed"})


def _news(event: Event) -> str | None:
    """What an event is worth announcing as: an auction won, a task completed or failed."""
    if event.kind == "auction_closed":
        return _WON if event.agent_id is not None else None
    if event.kind == "task_completed":
        return _COMPLETED
    if event.kind == "task_failed":
        return _FAILED
    return None


def _sentence(counts: Counter, last: Event) -> str:
    """One event in full; several merged into a summary."""
    if sum(counts.values()) == 1:
        news = _news(last)
        if news == _WON:
            price = last.data.get("price_sats")
            return f"{last.agent_id} wins task {last.task_id}" + (
                f" for {price} sats." if price is not None else ".")
        if news == _COMPLETED:
            by = f" by {last.agent_id}" if last.agent_id else ""
            return f"Task {last.task_id} completed{by}."
        return f"Task {last.task_id} failed."
    parts = []
    for news, one, many in ((_WON, "auction won", "auctions won"),
                            (_COMPLETED, "task completed", "tasks completed"),
                            (_FAILED, "task failed", "tasks failed")):
        if counts[news]:
            parts.append(f"{counts[news]} {one if counts[news] == 1 else many}")
    return (", ".join(parts[:-1]) + " and " + parts[-1] if len(parts) > 1 else parts[0]) + "."


class Announcer:
    """A swarm subscriber that speaks auction winners, completions and failures.

    ``swarm.subscribe(Announcer())``. Calls cost a lock and a counter on the caller's
    thread; speech happens on the announcer's own thread, at most once every
    ``min_interval`` seconds, merging what arrived meanwhile into one summary. With
    ``to=DIR`` each announcement is saved as ``DIR/announcement-0001.wav`` ... instead of
    played (a machine without speakers, a recording of a run).

    Counters: ``heard`` (events worth announcing), ``announced`` (of those, covered by
    something said), ``spoken`` (utterances), ``dropped`` (not said: voice unavailable,
    or closed before it could speak). ``said`` keeps the last 100 sentences, ``silenced``
    why the announcer went quiet (None while it can speak).

    Its callback runs on the engine's thread and only counts the event under a lock: no
    I/O, no speech, no queue that can grow, so speech never slows an auction and never
    falls behind. Without a voice it logs one line once (on the ``timmy.voice`` logger)
    and stays silent, counting what it could not say in ``dropped``.
    """

    def __init__(self, to: str | Path | None = None, *, min_interval: float = 2.0,
                 on_said: Callable[[str, Path | None], None] | None = None) -> None:
        if min_interval < 0:
            raise ConfigError(f"min_interval must be >= 0, not {min_interval}",
                              hint="pass the fewest seconds between two announcements")
        self.to = Path(to) if to is not None else None
        if self.to is not None:
            self.to.mkdir(parents=True, exist_ok=True)
        self.min_interval = min_interval
        self.on_said = on_said      # called with (sentence, WAV path or None) after each one
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
        if event.kind not in _NEWS_KINDS:   # most events (bids...): the cheapest way out
            return
        news = _news(event)
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
            text = _sentence(counts, last)
            next_at = time.monotonic() + self.min_interval
            try:
                self._say(text)
            except VoiceUnavailable as exc:
                with self._lock:
                    self.dropped += n
                self._silence(exc)
                return
            except Exception as exc:  # an engine error must not kill the announcer silently
                with self._lock:
                    self.dropped += n
                self._silence(VoiceUnavailable(f"speech failed: {_one_line(exc)}",
                                               hint="run `timmy doctor`"))
                return
            with self._lock:
                self.spoken += 1
                self.announced += n
                self.said.append(text)

    def _ready(self) -> None:
        """Fail early (before the first event) when speech cannot work here."""
        _voice_thread().call(_engine_ready)
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
            self.silenced = _one_line(exc)
            self.dropped += sum(self._pending.values())
            self._pending = Counter()
        _warn_once(exc)


def _engine_ready(voice: _VoiceThread) -> None:
    _engine(voice)


def announcer(to: str | Path | None = None, *, min_interval: float = 2.0,
              on_said: Callable[[str, Path | None], None] | None = None) -> Announcer:
    """An `Announcer` to pass to ``swarm.subscribe``: speaks (or, with ``to=DIR``, saves)
    auction winners and completions, rate-limited and merged, off the swarm's thread.
    ``on_said(sentence, wav_path_or_None)`` is called after each announcement (a
    dashboard plays the WAV in the browser)."""
    return Announcer(to, min_interval=min_interval, on_said=on_said)


# At exit, announcers still running say what is pending (bounded): a script's last summary.
_live_announcers: set[Announcer] = set()
_exit_flush_registered = False
EXIT_FLUSH_SECONDS = 10.0


def _register_exit_flush() -> None:
    global _exit_flush_registered
    with _voice_lock:
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
