"""The doctor's checks of the machine around Python: espeak-ng, speech synthesis and an audio
device, an Ollama server with a model, Chromium and Playwright for the dashboards, Voilà,
and free ports for ``timmy serve`` and Voilà.
"""

from __future__ import annotations

import ctypes.util
import importlib.util
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

from timmy.doctor.packages import version_of
from timmy.doctor.report import Finding
from timmy.errors import ConfigError

OLLAMA_HOST = "http://127.0.0.1:11434"
OLLAMA_MODEL = "llama3.2"       # what the fix suggests pulling
CHROMIUM = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")

def espeak() -> Finding:
    """libespeak-ng, which pyttsx3 loads on Linux (and the espeak-ng command)."""
    if not sys.platform.startswith("linux"):
        return ("espeak-ng", "voice", True, "not needed here: pyttsx3 uses the system voice", "")
    library = ctypes.util.find_library("espeak-ng")
    binary = shutil.which("espeak-ng")
    version = ""
    if binary:
        try:
            out = subprocess.run([binary, "--version"], capture_output=True, text=True,
                                 timeout=10).stdout
            version = " ".join(out.split()[3:4])   # "eSpeak NG text-to-speech: 1.51 ..."
        except (OSError, subprocess.TimeoutExpired):
            pass
    if binary:
        command = f"espeak-ng {version} ({binary})" if version else f"espeak-ng ({binary})"
    else:
        command = "no espeak-ng command on PATH"
    if library is None:
        return ("espeak-ng", "voice", False,
                f"libespeak-ng not found (pyttsx3 loads it); {command}",
                "apt-get install espeak-ng")
    return ("espeak-ng", "voice", True, f"lib{library.removeprefix('lib')}; {command}", "")


def speech() -> Finding:
    """A short phrase can be synthesised into a WAV (`timmy.voice.check`)."""
    from timmy import voice

    try:
        return ("speech synthesis", "voice", True, voice.check(), "")
    except voice.VoiceUnavailable as exc:
        return ("speech synthesis", "voice", False, exc.message, exc.hint)


def audio() -> Finding:
    """A player reaches an audio device (`timmy.voice.audio_output`)."""
    from timmy import voice

    try:
        return ("audio output", "audio", True, f"{voice.audio_output()} plays sound", "")
    except voice.VoiceUnavailable as exc:
        return ("audio output", "audio", False,
                f"{exc.message}; speech can still be saved as WAV files",
                "apt-get install alsa-utils, on a machine with a sound card "
                "(or PulseAudio/PipeWire)")


def ollama(host: str | None, timeout: float) -> Finding:
    """An Ollama server answers at ``host`` and has a model."""
    try:
        base = ollama_url(host)
    except ConfigError as exc:
        return ("ollama", "llm", False, exc.message, exc.hint)
    status = probe_ollama(base, timeout)
    if status["error"]:
        return ("ollama", "llm", False, f"no Ollama server at {base}: {status['error']}",
                f"start it: ollama serve (https://ollama.com/download); "
                f"or set OLLAMA_HOST; then ollama pull {OLLAMA_MODEL}")
    models = status["models"]
    if not models:
        return ("ollama", "llm", False, f"Ollama {status['version']} at {base}, but no models",
                f"ollama pull {OLLAMA_MODEL}")
    return ("ollama", "llm", True,
            f"Ollama {status['version']} at {base}; models: {', '.join(models)}", "")


def ollama_url(host: str | None = None) -> str:
    """The Ollama server's URL for ``host``, else OLLAMA_HOST, else the local default: the
    executor's own reading (`timmy.llm.base_url`), so the doctor probes where it will call.
    A bad address is a `ConfigError`."""
    from timmy.llm import base_url

    return base_url(host)


def probe_ollama(base: str, timeout: float = 2.0) -> dict:
    """GET /api/version and /api/tags: ``{"version", "models", "error"}`` (error None if up).

    The same probe ``executor="auto"`` uses (`timmy.llm.probe`, standard library only).
    """
    from timmy.llm import probe

    found = probe(base, timeout=timeout)
    if not found.reachable:
        return {"version": None, "models": [], "error": found.problem}
    return {"version": found.version or "?", "models": list(found.models), "error": None}


def chromium() -> Finding:
    """A Chromium that starts (dashboard screenshots and tests)."""
    candidates = [Path("/usr/bin/chromium")] + [Path(p) for p in map(shutil.which, CHROMIUM)
                                                 if p]
    binary = next((p for p in candidates if p.is_file() and os.access(p, os.X_OK)), None)
    fix = "apt-get install chromium (dashboard screenshots and tests)"
    if binary is None:
        return ("chromium", "dashboard", False, "no chromium on PATH or at /usr/bin/chromium",
                fix)
    try:
        out = subprocess.run([str(binary), "--version"], capture_output=True, text=True,
                             timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return ("chromium", "dashboard", False, f"{binary} does not start ({exc})", fix)
    if out.returncode != 0:
        said = (out.stderr.strip().splitlines() or [f"exit code {out.returncode}"])[-1]
        return ("chromium", "dashboard", False, f"{binary} --version failed: {said}", fix)
    return ("chromium", "dashboard", True, f"{out.stdout.strip()} ({binary})", "")


def playwright() -> Finding:
    """The playwright package is installed."""
    if importlib.util.find_spec("playwright") is None:
        return ("playwright", "dashboard", False, "the playwright package is not installed",
                "pip install playwright (the browser is the system chromium)")
    return ("playwright", "dashboard", True, f"playwright {version_of('playwright')}", "")


def voila() -> Finding:
    """Voilà is installed and its command is on PATH."""
    fix = 'pip install "timmy[notebooks]"'
    if importlib.util.find_spec("voila") is None:
        return ("voilà", "notebooks", False, "voila is not installed", fix)
    command = shutil.which("voila") or shutil.which("voila", path=str(Path(sys.executable).parent))
    if command is None:
        return ("voilà", "notebooks", False,
                f"voila {version_of('voila')} is installed but there is no voila command on PATH",
                f"run it as {sys.executable} -m voila, or put {Path(sys.executable).parent} "
                "on PATH")
    return ("voilà", "notebooks", True, f"voila {version_of('voila')} ({command})", "")


def port_free(port: int, who: str, fix: str) -> Finding:
    """127.0.0.1:``port`` can be bound (for ``who``)."""
    name = f"port {port} ({who})"
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As asyncio's servers do: a port in TIME_WAIT is free to them, so it is free here.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            return (name, "ports", False, f"127.0.0.1:{port} is in use ({exc.strerror})", fix)
    return (name, "ports", True, f"127.0.0.1:{port} is free", "")

