"""`make venv`'s install step: VENV with timmy installed editable with every extra.

Usage: python3 tools/venv.py VENV. Says one line per phase. Installs with uv (from PyPI,
pip-installed into VENV when it is not on PATH: one wheel, seconds) when it can, with pip
otherwise; TIMMY_INSTALLER=pip forces pip. pip's configuration (pip.conf files and PIP_*
variables: indexes, find-links, constraints, certificate) is handed to uv as the UV_* variables
it reads; a pip setting uv has no equivalent for, or a uv install that fails, means pip installs
instead, so a machine that installs with pip today still does.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

#: pip settings and the uv variable that means the same (uv's lists: space- or comma-separated).
TO_UV = {"index-url": ("UV_INDEX_URL", " "), "extra-index-url": ("UV_EXTRA_INDEX_URL", " "),
         "find-links": ("UV_FIND_LINKS", ","), "constraint": ("UV_CONSTRAINT", " "),
         "cert": ("SSL_CERT_FILE", None), "no-index": ("UV_NO_INDEX", None),
         "trusted-host": ("UV_INSECURE_HOST", " ")}
#: pip settings that do not change what is installed.
HARMLESS = {"timeout", "default-timeout", "disable-pip-version-check", "no-cache-dir", "quiet",
            "verbose", "progress-bar", "no-color", "retries", "no-input", "root-user-action",
            "cache-dir", "break-system-packages", "user"}


def say(line: str) -> None:
    print(f"venv: {line}", flush=True)


def run(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(args, env=env, capture_output=True, text=True)


def pip_config(python: str) -> dict[str, str]:
    """pip's effective settings (files, then PIP_* variables), as `pip config list` shows them."""
    proc = run([python, "-m", "pip", "config", "list"])
    settings: dict[str, str] = {}
    for line in proc.stdout.splitlines():
        name, sep, value = line.partition("=")
        if sep:
            key = name.rsplit(".", 1)[-1]
            settings[key] = value.strip().strip("'\"")   # later lines (PIP_* env) win
    return settings


def uv_env(settings: dict[str, str]) -> tuple[dict[str, str] | None, str]:
    """The environment for uv equivalent to pip's ``settings``, or None and why not."""
    env = dict(os.environ)
    for key, value in settings.items():
        if key in HARMLESS:
            continue
        if key not in TO_UV:
            return None, f"pip setting {key!r} has no uv equivalent here"
        var, sep = TO_UV[key]
        if var in env:          # set by the user: theirs wins
            continue
        items = value.split()
        env[var] = sep.join(items) if sep else ("1" if key == "no-index" else value)
    if "UV_EXTRA_INDEX_URL" in env or "UV_FIND_LINKS" in env:
        # pip picks the best version across every index; uv's default stops at the first
        env.setdefault("UV_INDEX_STRATEGY", "unsafe-best-match")
    return env, ""


def find_uv(bin_dir: Path) -> str | None:
    """uv in the venv or on PATH, else pip-installed into the venv; None when that fails."""
    for candidate in (bin_dir / "uv", shutil.which("uv")):
        if candidate and os.access(candidate, os.X_OK):
            return str(candidate)
    say("fetching uv, the fast installer (PyPI, a few seconds)")
    proc = run([str(bin_dir / "python"), "-m", "pip", "install", "--quiet",
                "--disable-pip-version-check", "uv"])
    if proc.returncode != 0 or not (bin_dir / "uv").exists():
        say("could not install uv; pip installs instead")
        return None
    return str(bin_dir / "uv")


def main(venv: str) -> int:
    start = time.monotonic()
    bin_dir = Path(venv) / "bin"
    python = str(bin_dir / "python")
    if not os.access(python, os.X_OK):
        say(f"creating the virtual environment {venv} (Python {sys.version.split()[0]})")
        subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    target = ".[all]"
    how = "pip"
    uv = None if os.environ.get("TIMMY_INSTALLER") == "pip" else find_uv(bin_dir)
    if uv:
        env, why = uv_env(pip_config(python))
        if env is None:
            say(f"{why}; pip installs instead")
        else:
            say("installing timmy and its extras with uv (first run only, about a minute)")
            # --compile-bytecode: uv writes no .pyc by default, and where PYTHONDONTWRITEBYTECODE
            # is set (CI images) none is ever written: every runner and kernel would compile
            # pandas, SQLAlchemy ... from source again (imports measured 2.3x slower)
            proc = subprocess.run([uv, "pip", "install", "--quiet", "--compile-bytecode",
                                   "--python", python, "-e", target], env=env)
            if proc.returncode == 0:
                how = "uv"
            else:
                say("uv could not install them (above); trying pip")
    if how == "pip":
        say("installing timmy and its extras with pip (first run only, a few minutes)")
        proc = subprocess.run([python, "-m", "pip", "install", "--quiet",
                               "--disable-pip-version-check", "-e", target])
        if proc.returncode != 0:
            say("pip could not install timmy (above)")
            return proc.returncode
    say(f"ready in {time.monotonic() - start:.0f} s ({how}); next runs skip this step")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python3 tools/venv.py VENV")
    sys.exit(main(sys.argv[1]))
