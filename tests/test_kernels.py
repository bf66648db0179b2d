"""Voilà kernels that go away: a closed dashboard page's kernel is culled (and with it its
event subscriber on the service), while the pre-heated pool keeps its kernels.

Real ``timmy serve`` and Voilà (started by `timmy.ops.launcher.Dashboards`), real headless
Chromium through Playwright. Without Chromium or Playwright these tests skip, except under
``CI=true``, where they fail (as in tests/test_dashboards.py).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from test_dashboards import DESKTOP, LOAD, browser, free_port  # noqa: F401 (fixture)

import timmy
from timmy.ops.launcher import Dashboards, kernel_processes

ROOT = Path(__file__).resolve().parent.parent


def kernels(voila_pid: int) -> set[int]:
    """Pids of Voilà's kernel processes."""
    return {k.pid for k in kernel_processes(voila_pid)}


def census(dash: Dashboards, swarm) -> tuple[int, int]:
    """(Voilà's kernels, the service's subscribers)."""
    return len(kernels(dash.voila.pid)), swarm.status()["service"]["subscribers"]


def wait_for(what: str, check, timeout: float):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        ok, last = check()
        if ok:
            return last
        time.sleep(0.5)
    pytest.fail(f"{what}: still {last} after {timeout:.0f}s")


def steady(dash: Dashboards, swarm, timeout: float = 120.0) -> tuple[int, int]:
    """The census once every kernel holds one subscriber and it stayed so for 3 s."""
    seen: list[tuple[int, int]] = []

    def check():
        now = census(dash, swarm)
        seen.append(now)
        recent = seen[-7:]
        return len(recent) == 7 and len(set(recent)) == 1 and now[0] == now[1], now

    return wait_for("kernels and subscribers settling", check, timeout)


@pytest.fixture
def dash(tmp_path):
    # culling as `timmy dashboards` does it, on a shorter clock (the defaults wait 45 + 10 s)
    d = Dashboards(f"sqlite:///{tmp_path / 'swarm.db'}", ROOT / "dashboards", port=0,
                   voila_port=free_port(), serve_args=("--no-spawn",), echo=lambda line: None,
                   cull_timeout=12, cull_interval=3)
    d.start()
    yield d
    d.stop()


@pytest.mark.timeout(400)
def test_a_closed_page_loses_its_kernel_and_subscriber(browser, dash):  # noqa: F811
    """Open the desktop page (one kernel, one subscriber more than before), close its tab
    without a goodbye (a phone's browser killed, a laptop lid shut): within ~90 s Voilà's
    kernel count and the service's subscriber count are back where they were."""
    swarm = timmy.Swarm.attach(dash.running.service_url, token=dash._service_token())
    try:
        base = steady(dash, swarm)
        ctx = browser.new_context(viewport=DESKTOP)
        page = ctx.new_page()
        page.goto(dash.running.desktop_url)
        page.wait_for_selector(".timmy-header", timeout=LOAD)
        opened = wait_for("the page's kernel and subscriber",
                          lambda: ((now := census(dash, swarm)) == (base[0] + 1, base[1] + 1),
                                   now), 120)
        assert opened == (base[0] + 1, base[1] + 1)
        ctx.close()   # no beforeunload: Voilà's own shutdown request is never sent
        wait_for("kernel and subscriber of the closed page",
                 lambda: ((now := census(dash, swarm)) == base, now), 90)
    finally:
        swarm.close()


@pytest.mark.timeout(400)
def test_pre_heated_kernels_are_kept_and_serve_live_data(browser, dash):  # noqa: F811
    """`timmy dashboards` pre-heats a kernel per notebook by default; the pool outlives the
    culling interval and a page served from it shows a task posted after it was heated."""
    swarm = timmy.Swarm.attach(dash.running.service_url, token=dash._service_token())
    try:
        base = steady(dash, swarm)
        assert base[0] >= 2, "a pre-heated kernel for desktop.ipynb and for mobile.ipynb"
        time.sleep(dash.cull_timeout + 2 * dash.cull_interval)   # a pool kernel is not culled
        assert census(dash, swarm) == base
        task = swarm.post("write the release notes after heating")
        ctx = browser.new_context(viewport=DESKTOP)
        page = ctx.new_page()
        page.goto(dash.running.desktop_url)
        page.wait_for_selector(".timmy-header", timeout=LOAD)
        page.locator(".timmy-tasks").get_by_text("write the release notes after heating") \
            .wait_for(timeout=30_000)
        assert str(task.task_id) in page.locator(".timmy-tasks").inner_text()
        ctx.close()
    finally:
        swarm.close()


def test_a_page_made_while_the_service_is_down_attaches_once_it_is_up(tmp_path):
    """What a pre-heated kernel does when it runs the notebook while the service is down:
    the page shows why, and attaches by itself (no Retry click) once the service answers."""
    from test_service import ServiceProcess

    from timmy.widgets.page import Page

    port = free_port()
    page = Page("desktop", f"tcp://127.0.0.1:{port}", "page-token", 0.25)
    assert page.console is None
    assert "timmy-unreachable" in page.body.children[0].value
    token = tmp_path / "swarm.db.token"   # where `timmy serve` keeps its token
    token.write_text("page-token\n")
    token.chmod(0o600)
    svc = ServiceProcess(tmp_path / "swarm.db", port, "--no-spawn")
    try:
        wait_for("the page attaching", lambda: (page.console is not None, page.body.children),
                 60)
        assert page.body.children == (page.console,)
    finally:
        if page.console is not None:
            page.console.close()
        svc.stop()
