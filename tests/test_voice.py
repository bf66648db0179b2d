"""timmy.voice for real: WAV files read back with `wave`, a live swarm, missing pieces.

Speech needs pyttsx3 and espeak-ng. Where they are missing, tests that need them skip
with the reason, except under ``CI=true``, where they fail: CI must have them.
Missing pyttsx3 / espeak-ng is shown in child processes whose import of pyttsx3 (or of
its espeak driver) is blocked; a missing or broken audio device by PATH (no player, or
an ``aplay`` that fails like one without a sound card).
"""

from __future__ import annotations

import array
import json
import os
import subprocess
import sys
import textwrap
import time
import wave
from pathlib import Path

import pytest

import timmy
from timmy import voice
from timmy.errors import ConfigError, VoiceUnavailable
from timmy.market.models import Event

ROOT = Path(__file__).resolve().parent.parent


def on_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("true", "1", "yes")


def need_speech() -> None:
    """Skip (fail on CI) unless pyttsx3 + espeak-ng synthesise a WAV here."""
    try:
        voice.check()
    except VoiceUnavailable as exc:
        message = f"speech synthesis is unavailable: {exc.message} (fix: {exc.hint})"
        if on_ci():
            pytest.fail(f"CI must be able to synthesise speech: {message}")
        pytest.skip(message)


@pytest.fixture
def speech() -> None:
    need_speech()


def read_wav(path: Path) -> tuple:
    with wave.open(str(path), "rb") as w:
        params = w.getparams()
        samples = array.array("h", w.readframes(params.nframes))
    return params, samples


def assert_speech(path: Path, at_least_s: float = 0.3) -> None:
    """A real WAV: 16-bit mono, long enough, and loud somewhere (not silence)."""
    params, samples = read_wav(path)
    assert (params.nchannels, params.sampwidth) == (1, 2)
    assert params.nframes / params.framerate >= at_least_s
    loud = sum(abs(s) > 500 for s in samples)
    assert max(abs(s) for s in samples) > 5000 and loud > len(samples) // 10, \
        "the WAV is (nearly) silent"


def python(code: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run ``code`` in a child Python with this worktree's timmy."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})


# Child-process preludes: the dependency is "not installed" / "its library is missing".
NO_PYTTSX3 = "import sys; sys.modules['pyttsx3'] = None\n"
NO_ESPEAK = "import sys; sys.modules['pyttsx3.drivers._espeak'] = None\n"

TRY_ALL = """
import json, timmy
from timmy import voice
out = {}
for name, call in (("speak", lambda: voice.speak("hello")),
                   ("save", lambda: voice.save("hello", "out.wav")),
                   ("check", voice.check)):
    try:
        call()
        out[name] = "worked"
    except timmy.VoiceUnavailable as exc:
        out[name] = [exc.message, exc.hint]
import os
out["file_left"] = os.path.exists("out.wav")
print(json.dumps(out))
"""


# -- import cost --------------------------------------------------------------------


def test_import_timmy_does_not_import_pyttsx3():
    proc = python("""
        import sys, timmy
        timmy.Swarm, timmy.voice, timmy.voice.announcer
        print("pyttsx3" in sys.modules)
    """)
    assert proc.stdout.strip() == "False", proc.stderr


# -- save: a real WAV -----------------------------------------------------------------


def test_saved_wav_is_real_speech(tmp_path, speech):
    path = voice.save("Forge wins task twelve for thirty sats.", tmp_path / "news.wav")
    assert path == tmp_path / "news.wav"
    assert_speech(path, at_least_s=1.0)
    assert [p.name for p in tmp_path.iterdir()] == ["news.wav"]  # no part file left


def test_save_into_a_missing_directory_raises_and_writes_nothing(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(OSError):
        voice.save("hello", blocker / "news.wav")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


@pytest.mark.parametrize("text", ["", "   \n", None])
def test_empty_text_is_refused(text):
    with pytest.raises(ConfigError, match="nothing to say"):
        voice.save(text, "never.wav")


# -- missing pieces --------------------------------------------------------------------


def try_all(prelude: str, cwd: Path) -> dict:
    """TRY_ALL in a fresh interpreter after ``prelude`` (which takes a piece away)."""
    proc = subprocess.run([sys.executable, "-c", prelude + TRY_ALL], capture_output=True,
                          text=True, cwd=cwd, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_missing_pyttsx3_raises_voice_unavailable_with_install_hint(tmp_path):
    out = try_all(NO_PYTTSX3, tmp_path)
    for name in ("speak", "save", "check"):
        message, hint = out[name]
        assert "pyttsx3 is not installed" in message
        assert hint == 'pip install "timmy[voice]"'
    assert out["file_left"] is False


def test_missing_espeak_ng_raises_voice_unavailable_with_apt_hint(tmp_path, speech):
    out = try_all(NO_ESPEAK, tmp_path)
    for name in ("speak", "save", "check"):
        message, hint = out[name]
        assert "cannot load espeak-ng" in message
        assert "apt-get install espeak-ng" in hint
    assert out["file_left"] is False


def test_without_an_audio_player_speak_says_how_to_save_instead(tmp_path, monkeypatch, speech):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(VoiceUnavailable, match="no audio player") as info:
        voice.speak("hello")
    assert "apt-get install alsa-utils" in info.value.hint
    assert "timmy.voice.save" in info.value.hint


def fake_aplay(directory: Path, body: str) -> None:
    """An ``aplay`` on PATH: a shell script standing in for the real player."""
    directory.mkdir()
    script = directory / "aplay"
    script.write_text("#!/bin/sh\n" + textwrap.dedent(body))
    script.chmod(0o755)


def test_speak_reports_an_audio_device_that_fails(tmp_path, monkeypatch, speech):
    fake_aplay(tmp_path / "bin", """\
        echo "ALSA lib confmisc.c:855:(parse_card) cannot find card '0'" >&2
        echo "aplay: main:831: audio open error: No such file or directory" >&2
        exit 1
    """)
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    with pytest.raises(VoiceUnavailable) as info:
        voice.speak("hello")
    assert info.value.message == ("no audio device: aplay: main:831: audio open error: "
                                  "No such file or directory")
    assert "timmy.voice.save" in info.value.hint


def test_audio_output_plays_silence_to_find_a_working_device(tmp_path, monkeypatch):
    fake_aplay(tmp_path / "works", "exit 0\n")
    fake_aplay(tmp_path / "fails", """\
        echo "aplay: main:831: audio open error: No such file or directory" >&2
        exit 1
    """)
    monkeypatch.setenv("PATH", str(tmp_path / "works"))
    assert voice.audio_output() == "aplay"
    monkeypatch.setenv("PATH", str(tmp_path / "fails"))
    with pytest.raises(VoiceUnavailable, match="no audio device: aplay: main:831"):
        voice.audio_output()


def test_speak_hands_the_player_real_speech(tmp_path, monkeypatch, speech):
    heard = tmp_path / "heard.wav"
    fake_aplay(tmp_path / "bin", f"""\
        for last; do :; done
        cp "$last" {heard}
    """)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:/usr/bin:/bin")
    voice.speak("Task seven completed by quill.")
    assert_speech(heard, at_least_s=1.0)


def test_on_ci_a_missing_espeak_fails_the_test_instead_of_skipping(tmp_path):
    test_file = tmp_path / "test_needs_espeak.py"
    test_file.write_text(NO_ESPEAK + "from test_voice import need_speech\n\n"
                         "def test_needs_espeak():\n    need_speech()\n")
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}",
           "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}  # a quicker start; no plugin is needed
    runs = {}
    for ci in ("true", ""):
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p",
                               "no:cacheprovider", str(test_file)], capture_output=True,
                              text=True, cwd=tmp_path, timeout=60, env={**env, "CI": ci})
        runs[ci] = proc
    assert runs["true"].returncode == 1 and "1 failed" in runs["true"].stdout
    assert "CI must be able to synthesise speech" in runs["true"].stdout
    assert runs[""].returncode == 0 and "1 skipped" in runs[""].stdout
    assert "apt-get install espeak-ng" in runs[""].stdout


# -- the announcer --------------------------------------------------------------------


def event(kind: str, task_id: int, agent_id: str | None = "forge-1", **data) -> Event:
    return Event(event_id=task_id, ts=0.0, kind=kind, task_id=task_id, agent_id=agent_id,
                 data=data)


def test_announcer_merges_a_burst_without_holding_up_the_caller(tmp_path, speech):
    ann = voice.announcer(tmp_path, min_interval=0.2)
    t0 = time.perf_counter()
    for i in range(1, 10_001):
        ann(event("bid", i, sats=30))                    # not news: ignored
        ann(event("auction_closed", i, price_sats=30))
        ann(event("task_completed", i))
    ann(event("auction_closed", 10_001, agent_id=None))  # nobody won: not news
    elapsed = time.perf_counter() - t0
    ann.close(wait=10)
    assert elapsed < 1.0, f"30,001 events took {elapsed:.2f}s on the caller's thread"
    stats = ann.stats()
    assert stats["heard"] == 20_000 and stats["announced"] == 20_000 and stats["dropped"] == 0
    assert 1 <= stats["spoken"] <= 1 + elapsed / 0.2 + 1   # rate-limited
    said = " ".join(ann.said)
    assert "auctions won" in said and "tasks completed" in said
    files = sorted(tmp_path.glob("announcement-*.wav"))
    assert len(files) == stats["spoken"]
    for f in files:
        assert_speech(f)


def test_one_event_is_announced_in_full(tmp_path, speech):
    ann = voice.announcer(tmp_path, min_interval=0)
    ann(event("auction_closed", 12, agent_id="forge-1", price_sats=30))
    deadline = time.monotonic() + 10
    while ann.stats()["spoken"] < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    ann(event("task_failed", 12))
    ann.close(wait=10)
    assert list(ann.said) == ["forge-1 wins task 12 for 30 sats.", "Task 12 failed."]


def _wait_for(check, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not check() and time.monotonic() < deadline:
        time.sleep(0.01)


def test_one_failed_utterance_does_not_silence_the_announcer(tmp_path, speech):
    """A failure of one announcement (here its folder vanished) drops what it covered;
    the next one is said: only `max_failures` failures in a row silence the voice."""
    silenced = []
    out = tmp_path / "said"
    ann = voice.announcer(out, min_interval=0, on_silenced=silenced.append)
    _wait_for(lambda: ann._thread.is_alive() and voice.speech._voice is not None)
    out.rmdir()                                   # the next save cannot create its file
    ann(event("auction_closed", 1, agent_id="forge-1", price_sats=30))
    _wait_for(lambda: ann.stats()["dropped"] == 1)
    out.mkdir()
    ann(event("task_completed", 1))
    _wait_for(lambda: ann.stats()["spoken"] == 1)
    ann.close(wait=10)
    stats = ann.stats()
    assert stats["dropped"] == 1 and stats["spoken"] == 1 and stats["silenced"] is None
    assert [s[:16] for s in ann.said] == ["Task 1 completed"] and silenced == []
    assert ann.failures == 0
    assert_speech(next(out.glob("announcement-*.wav")))


def test_failures_in_a_row_silence_the_announcer_and_say_why(tmp_path, speech):
    silenced = []
    out = tmp_path / "said"
    out.mkdir()
    ann = voice.announcer(out, min_interval=0, max_failures=2, on_silenced=silenced.append)
    out.rmdir()
    for task in (1, 2):
        ann(event("task_completed", task))
        _wait_for(lambda task=task: ann.stats()["dropped"] >= task)
    _wait_for(lambda: silenced)
    ann(event("task_completed", 3))               # after silence: counted, not said
    ann.close(wait=10)
    assert len(silenced) == 1 and isinstance(silenced[0], VoiceUnavailable)
    assert "speech failed" in silenced[0].message and "timmy doctor" in silenced[0].hint
    stats = ann.stats()
    assert stats["spoken"] == 0 and stats["dropped"] == 3
    assert stats["silenced"] == silenced[0].message


def test_max_failures_must_be_positive(tmp_path):
    with pytest.raises(ConfigError, match="max_failures"):
        voice.announcer(tmp_path, max_failures=0)


def test_a_stop_request_left_in_the_driver_does_not_empty_the_next_save(tmp_path, speech):
    """pyttsx3 2.99's espeak driver can leave a stop request behind after a save (it asks
    espeak-ng to stop when it says "playing", as it does right after it starts); the
    request then cancelled the next utterance, whose WAV came out empty (1 process in 12:
    the second save, the dashboard's first announcement after its voice check). Each save
    now starts with espeak-ng idle and no request pending."""
    proc = python(f"""
from pathlib import Path
from timmy.voice import save, speech
save("warming up", Path({str(tmp_path)!r}) / "0.wav")
for i in range(1, 6):
    speech._voice.engine.proxy._driver._stopping = True    # what the driver leaves behind
    save(f"task {{i}} completed", Path({str(tmp_path)!r}) / f"{{i}}.wav")
""")
    assert proc.returncode == 0, proc.stderr[-1500:]
    for i in range(6):
        assert_speech(tmp_path / f"{i}.wav")


def test_announcer_in_a_live_swarm_hears_every_winner_and_completion(tmp_path, make_swarm,
                                                                     speech):
    swarm = make_swarm()
    swarm.spawn_all(["forge", "quill", "echo"])
    ann = voice.announcer(tmp_path / "said", min_interval=0.05)
    unsubscribe = swarm.subscribe(ann)
    done = swarm.run([f"fix the bug number {i} in the api client" for i in range(30)],
                     timeout=60)
    unsubscribe()
    ann.close(wait=10)
    assert all(t.done for t in done)
    news = [e for e in swarm.events() if (e.kind == "auction_closed" and e.agent_id)
            or e.kind in ("task_completed", "task_failed")]
    stats = ann.stats()
    assert stats["heard"] == len(news) >= 60
    assert stats["announced"] == stats["heard"] and stats["dropped"] == 0
    assert len(list((tmp_path / "said").glob("*.wav"))) == stats["spoken"] >= 1


def test_swarm_with_voice_and_no_pyttsx3_warns_once_and_runs(tmp_path):
    proc = python(NO_PYTTSX3 + f"""
import json, time, timmy
with timmy.Swarm({f"sqlite:///{tmp_path / 't.db'}"!r}, seed=1, task_seconds=0,
                 voice=True) as swarm:
    swarm.spawn_all(["forge", "quill"])
    second = timmy.voice.announcer()      # a second one: still one warning
    swarm.subscribe(second)
    done = swarm.run([f"write the docs for part {{i}}" for i in range(10)], timeout=60)
    time.sleep(0.2)
    print(json.dumps({{"statuses": [t.status for t in done],
                      "first": swarm.announcer.stats(), "second": second.stats()}}))
""")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert set(out["statuses"]) <= {"completed", "failed"} and len(out["statuses"]) == 10
    for stats in (out["first"], out["second"]):
        assert stats["spoken"] == 0 and stats["heard"] >= 20
        assert stats["dropped"] == stats["heard"]
        assert "pyttsx3 is not installed" in stats["silenced"]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines == [
        "voice is off: pyttsx3 is not installed (import of pyttsx3 halted; None in "
        'sys.modules) (hint: pip install "timmy[voice]")'], proc.stderr


def test_swarm_voice_true_without_audio_device_stays_quiet(tmp_path, monkeypatch, make_swarm,
                                                          speech):
    monkeypatch.setenv("PATH", str(tmp_path))   # no player: no audio device here
    swarm = make_swarm(voice=True)
    swarm.spawn_all(["forge"])
    done = swarm.run(["fix the bug in the api client"] * 3, timeout=30)
    assert all(t.done for t in done)
    ann = swarm.announcer
    assert isinstance(ann, voice.Announcer)
    deadline = time.monotonic() + 10
    while ann.silenced is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert "no audio player" in (ann.silenced or "")
    assert ann.stats()["spoken"] == 0


def test_an_attached_swarm_with_voice_speaks_the_services_events(tmp_path, monkeypatch,
                                                                 speech):
    from test_service import ServiceProcess

    svc = ServiceProcess(tmp_path / "s.db")
    try:
        monkeypatch.setenv("PATH", str(tmp_path))   # no player: no audio device here
        with timmy.Swarm.attach(svc.url, token=svc.token, voice=True) as swarm:
            ann = swarm.announcer
            assert isinstance(ann, voice.Announcer)
            done = swarm.run(["fix the bug in the api client"] * 3, timeout=30)
            assert all(t.done for t in done)
            deadline = time.monotonic() + 10
            while (ann.silenced is None or ann.stats()["heard"] < 6) and \
                    time.monotonic() < deadline:
                time.sleep(0.01)
            assert ann.stats()["heard"] >= 6     # 3 auctions won, 3 completions
            assert "no audio player" in (ann.silenced or "")
        heard = ann.stats()["heard"]
        with svc.attach() as other:                  # closed: no longer subscribed
            other.run(["write the docs"], timeout=30)
        time.sleep(0.3)
        assert ann.stats()["heard"] == heard
    finally:
        svc.stop()


def test_the_lazy_attribute_is_the_module():
    assert timmy.voice is voice
