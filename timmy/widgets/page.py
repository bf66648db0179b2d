"""A whole dashboard page (`dashboard`): the console of a swarm service, the page's CSS and a
link to the other page; ``dashboards/*.ipynb`` are one call each, rendered by Voilà.
"""

from __future__ import annotations

import os
import threading

from timmy.errors import TimmyError
from timmy.widgets.console import error_html, ipywidgets
from timmy.widgets.render import esc

RETRY_EVERY = 5.0   # seconds between attempts of an unattached page to reach the service

PAGES = {
    "desktop": ("mobile.ipynb", "mobile view →"),
    "mobile": ("desktop.ipynb", "desktop view →"),
}

# Scoped to Voilà's page (its lab template) and to the console; harmless in JupyterLab.
CSS = """
<style>
body.jp-Notebook, .jp-Notebook { padding: 0 !important; }
.voila .jp-Cell, body .jp-Cell { padding: 0 !important; }
.jp-OutputArea-prompt { display: none !important; }
.jp-OutputArea-output, .jp-OutputArea-child { min-width: 0 !important; }
.timmy-page { box-sizing: border-box; max-width: 100%; padding: 6px 8px; }
.timmy-page .widget-box, .timmy-page .widget-html, .timmy-page .widget-html-content
  { min-width: 0; max-width: 100%; }
.timmy-page table { max-width: 100%; }
.timmy-nav { display: flex; justify-content: space-between; align-items: center;
  gap: 8px; flex-wrap: wrap; font-size: 15px; }
.timmy-nav a { display: inline-block; min-height: 44px; line-height: 44px; padding: 0 12px;
  border-radius: 4px; background: #e3f2fd; color: #0d47a1; text-decoration: none; }
</style>
"""
MOBILE_CSS = """
<style>
html, body { max-width: 100vw; }
.jp-Notebook, .jp-Cell, .jp-OutputArea, .jp-Cell-outputWrapper, .jp-OutputArea-output
  { max-width: 100vw !important; margin: 0 !important; }
.timmy-mobile .widget-text { width: 100% !important; margin: 0 0 6px 0 !important; }
.timmy-mobile .widget-text input { min-width: 0; min-height: 44px; font-size: 16px; }
.timmy-mobile .widget-button { width: 100% !important; margin: 0 !important; }
.timmy-mobile .widget-html-content { overflow-wrap: anywhere; white-space: normal; }
</style>
"""


def dashboard(kind: str = "desktop", url: str | None = None, token: str | None = None,
              interval: float = 0.25):
    """The ``"desktop"`` or ``"mobile"`` page for a swarm service, as one VBox.

    ``url``/``token`` default to ``TIMMY_URL``/``TIMMY_TOKEN`` (then the default
    service and the token file beside ``TIMMY_DB``). Never raises for a service
    that is down: the page shows the error, its hint and a Retry button.

    When the service is out of reach the page says so, with the hint, and tries again by
    itself every `RETRY_EVERY` seconds (a pre-heated Voilà kernel runs the page before
    anyone looks at it, possibly while the service is down); once attached, a lost
    service shows a red "reconnecting…" line until it is back. The CSS is what makes
    the mobile page fit a 390×844 phone without sideways scrolling: Voilà's lab template
    pads cells and keeps a prompt column, ipywidgets give text boxes and rows fixed
    minimum widths; both are reset for this page only.
    """
    if kind not in PAGES:
        from timmy.errors import ConfigError

        raise ConfigError(f"unknown dashboard {kind!r}", hint='use "desktop" or "mobile"')
    return Page(kind, url, token, interval).box


class Page:
    """The page's parts: CSS, the navigation line, and the console (or why it is missing)."""

    def __init__(self, kind: str, url: str | None, token: str | None, interval: float) -> None:
        w = ipywidgets()
        self.w, self.kind, self.interval = w, kind, interval
        self.url = url or os.environ.get("TIMMY_URL")
        self.token = token
        other, label = PAGES[kind]
        css = CSS + (MOBILE_CSS if kind == "mobile" else "")
        title = "timmy swarm" if kind == "mobile" else "timmy swarm · desktop console"
        self.nav = w.HTML(
            f'{css}<div class="timmy-nav"><b>{esc(title)}</b>'
            f'<a class="timmy-switch" href="{esc(other)}">{esc(label)}</a></div>')
        self.body = w.VBox()
        self.box = w.VBox([self.nav, self.body], layout=w.Layout(width="100%"))
        self.box.add_class("timmy-page")
        self.box.add_class(f"timmy-{kind}")
        self.console = None
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None
        self.attach()

    def attach(self, _button=None) -> None:
        """Attach to the service and show its console, or show why not and offer Retry."""
        with self._lock:
            if self.console is None:
                self._attach()

    def _retry_later(self) -> None:
        timer = self._timer
        if timer is not None and timer.is_alive() and timer is not threading.current_thread():
            return
        self._timer = threading.Timer(RETRY_EVERY, self.attach)
        self._timer.daemon = True
        self._timer.start()

    def _attach(self) -> None:
        from timmy.widgets import desktop, mobile

        try:
            swarm = self._swarm()
            self.console = (desktop if self.kind == "desktop" else mobile)(
                swarm, interval=self.interval)
        except (TimmyError, OSError) as exc:
            retry = self.w.Button(description="Retry", icon="refresh",
                                  layout=self.w.Layout(min_height="44px"))
            retry.on_click(self.attach)
            message = self.w.HTML(f'<div class="timmy-unreachable">{error_html(exc)}</div>')
            self.body.children = [message, retry]
            self._retry_later()
            return
        self.body.children = [self.console]

    def _swarm(self):
        from timmy.service.client import AttachedSwarm, default_token

        token = self.token or default_token(os.environ.get("TIMMY_DB"))
        swarm = AttachedSwarm(self.url, token) if self.url else AttachedSwarm(token=token)
        return swarm.start()
