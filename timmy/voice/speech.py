"""Speech itself: `speak` (through the audio device), `save` (a WAV file), `check` and
`audio_output`; one daemon thread owns the pyttsx3 engine and a player (``aplay``...) plays
the WAV it writes. When speech cannot work, `VoiceUnavailable` names the fix.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import wave
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from queue import SimpleQueue
from typing import Any

from timmy.errors import ConfigError, VoiceUnavailable

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
            raise VoiceUnavailable(f"pyttsx3 cannot load espeak-ng: {one_line(exc)}",
                                   hint=ESPEAK_HINT) from exc
        raise VoiceUnavailable(f"pyttsx3 cannot start a speech engine: {one_line(exc)}",
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
    _settle(engine)
    engine.save_to_file(text, path)
    engine.runAndWait()


def _settle(engine: Any) -> None:
    """Start each synthesis with espeak-ng idle and no stop request pending in the driver.

    pyttsx3 2.99's espeak driver asks espeak-ng to stop whenever its run loop ends while
    espeak-ng says it is playing (it says so right after it starts, before anything was
    synthesised). The request is only cleared by a loop turn that comes before the end of
    the message is called back, so it can outlive its utterance and cancel the next one:
    espeak-ng then reports that message finished with no audio, and the WAV is empty (seen
    in about 1 process in 12: the second save, often the first announcement after
    `check`). So, first: wait for espeak-ng's thread to be idle (the driver then sees
    nothing playing, and asks for no stop), and drop a request left over.
    """
    if not _linux():
        return
    espeak = sys.modules.get("pyttsx3.drivers._espeak")
    if espeak is not None:
        espeak.Synchronize()
    driver = getattr(getattr(engine, "proxy", None), "_driver", None)
    if getattr(driver, "_stopping", None) is True:
        driver._stopping = False


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
            errors.append(f"{name}: {one_line(exc)}")
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


def one_line(exc: BaseException) -> str:
    """``exc``'s message on one line (a `VoiceUnavailable`'s without its hint)."""
    text = exc.message if isinstance(exc, VoiceUnavailable) else str(exc)
    return " ".join(text.split()) or type(exc).__name__


def start_engine() -> None:
    """Start the speech engine now (on the voice thread), or raise `VoiceUnavailable`."""
    _voice_thread().call(_engine_ready)


def _engine_ready(voice: _VoiceThread) -> None:
    _engine(voice)
