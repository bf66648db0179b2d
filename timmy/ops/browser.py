"""Headless Chromium for dashboard tests and benchmarks: the system's Chromium (Debian's
``chromium``), driven by Playwright through ``executable_path``, since Playwright's own browser
download cannot run everywhere.
"""

from __future__ import annotations

import os
import shutil

from timmy.errors import MissingDependency

CHROMIUM_ARGS = ("--headless", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update")
CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")


def chromium_path() -> str:
    """``TIMMY_CHROMIUM``, else the first Chromium found; `MissingDependency` if none."""
    env = os.environ.get("TIMMY_CHROMIUM")
    found = [env] if env else [*CANDIDATES, shutil.which("chromium") or ""]
    for path in found:
        if path and os.access(path, os.X_OK):
            return path
    raise MissingDependency("no Chromium found" + (f" at TIMMY_CHROMIUM={env}" if env else ""),
                            hint="apt-get install chromium (make test does it), or set "
                                 "TIMMY_CHROMIUM to a Chromium or Chrome binary")


def launch(playwright):
    """A headless Chromium browser from a started ``sync_playwright()``."""
    return playwright.chromium.launch(executable_path=chromium_path(), args=list(CHROMIUM_ARGS))
