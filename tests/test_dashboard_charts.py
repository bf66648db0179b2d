"""The desktop page's market at a glance in a real browser: ``timmy serve`` and Voilà (the
fixtures of tests/test_dashboards.py), headless Chromium via Playwright. Stat cards, bqplot
charts with axes that show the same data after a reload, the teaching panel, empty states.

Screenshots go to ``test-artifacts/dashboards/``; under ``CI=true`` a missing Chromium fails.
"""

from __future__ import annotations

import itertools
import re

import test_dashboards as base
from test_dashboards import CHANGE, DESKTOP, PHONE, attach, await_approval, open_page, shot

browser, stack = base.browser, base.stack   # the same fixtures: Chromium, service + Voilà

AXES = ("time", "completions per second", "tasks waiting", "winning persona", "price (sats)",
        "persona", "earned (sats)", "win share (%)")


def chart_data(page) -> str:
    return page.locator(".timmy-chart-data").text_content()


def legends_over_plots(page) -> list[str]:
    """Each legend (ours under a figure, or bqplot's own inside it) whose box meets a
    figure's plot area, or a chart wider than the window; [] when every legend is clear."""
    return page.evaluate("""() => {
        const out = [], meets = (a, b) => a.left < b.right && b.left < a.right
            && a.top < b.bottom && b.top < a.bottom;
        const plots = [...document.querySelectorAll('.timmy-chart .plotarea_background')]
            .map(el => el.getBoundingClientRect());
        const legends = [...document.querySelectorAll('.timmy-legend, .timmy-chart .g_legend')]
            .filter(el => el.getBoundingClientRect().width > 0);
        if (plots.length < 3 || legends.length < 3)
            out.push(`${plots.length} plots, ${legends.length} legends`);
        for (const el of legends) {
            const r = el.getBoundingClientRect();
            plots.forEach((p, i) => { if (meets(r, p))
                out.push(`legend "${el.textContent.trim()}" over plot ${i}`); });
        }
        for (const el of document.querySelectorAll('.timmy-chart-box'))
            if (el.getBoundingClientRect().right > window.innerWidth + 0.5)
                out.push(`chart right=${Math.round(el.getBoundingClientRect().right)}`);
        return out;
    }""")


def test_a_fresh_swarm_teaches_and_says_what_to_do(browser, stack):
    page = open_page(browser, stack.running.desktop_url, DESKTOP)
    page.locator(".timmy-tasks").get_by_text("post a task above", exact=False) \
        .wait_for(timeout=CHANGE)
    page.locator(".timmy-charts-empty").get_by_text("no completed tasks yet", exact=False) \
        .wait_for(timeout=CHANGE)
    how = page.locator(".timmy-teach details")
    how.locator("summary").click()
    for word in ("Task", "bid", "On-spec", "clearing rule", "sats", "Where the numbers come"):
        assert word in how.inner_text()
    price = page.locator(".timmy-tasks th", has_text="price")
    assert "sats" in price.get_attribute("title")
    assert page.locator(".timmy-stat-cards .timmy-card").count() >= 6
    shot(page, "desktop-fresh-teaching")
    page.context.close()


def test_cards_and_charts_show_the_market_and_survive_a_reload(browser, stack):
    swarm = attach(stack)
    if not [a for a in swarm.agents() if a.status in ("idle", "busy")]:
        swarm.spawn("forge")
        swarm.spawn("quill")
    page = open_page(browser, stack.running.desktop_url, DESKTOP)
    done = swarm.run(["fix the parser bug", "write the cli docs", "fix the api client",
                      "write the guide"], timeout=60)
    assert {t.status for t in done} == {"completed"}
    completed = len(swarm.tasks("completed"))
    live = len([a for a in swarm.agents() if a.status in ("idle", "busy")])
    page.locator(".timmy-chart-data").get_by_text(
        f"completed {completed};", exact=False).wait_for(timeout=CHANGE, state="attached")
    runners = page.locator(".timmy-card-runners .timmy-card-value")
    page.wait_for_function(
        "n => document.querySelector('.timmy-card-runners .timmy-card-value')"
        "?.textContent === String(n)", arg=live, timeout=CHANGE)
    assert runners.inner_text() == str(live)
    page.locator(".timmy-card-tasks").get_by_text(   # a redraw after the charts' may be due
        f"completed {completed}", exact=False).wait_for(timeout=CHANGE)
    assert re.search(r"\d+(\.\d+)? (ms|s)", page.locator(".timmy-card-latency").inner_text())
    assert page.locator(".timmy-chart svg").count() >= 3
    page.wait_for_function("() => document.querySelectorAll('.timmy-chart .dot').length > 0",
                           timeout=CHANGE)
    for label in AXES:
        assert page.locator(".timmy-chart text", has_text=label).count() >= 1, label
    for legend in ("on-spec", "off-spec", "sats earned", "win share %", "completed / s",
                   "queued or bidding"):
        assert page.locator(".timmy-legend", has_text=legend).count() == 1, legend
    assert legends_over_plots(page) == []
    before = chart_data(page)
    dots = page.locator(".timmy-chart .dot").count()
    bars = page.locator(".timmy-chart .bar").count()
    shot(page, "desktop-charts")

    page.reload()
    page.wait_for_selector(".timmy-header", timeout=CHANGE * 3)
    page.locator(".timmy-chart-data").get_by_text(
        f"completed {completed};", exact=False).wait_for(timeout=CHANGE, state="attached")
    page.wait_for_function("n => document.querySelectorAll('.timmy-chart .dot').length === n",
                           arg=dots, timeout=CHANGE)
    assert chart_data(page) == before
    assert page.locator(".timmy-chart .bar").count() == bars
    for label in AXES:
        assert page.locator(".timmy-chart text", has_text=label).count() >= 1, label
    shot(page, "desktop-charts-after-reload")
    swarm.close()
    page.context.close()


def test_header_counts_tasks_awaiting_approval(browser, stack):
    swarm = attach(stack)
    if not [a for a in swarm.agents() if a.status in ("idle", "busy")]:
        swarm.spawn("forge")
    held = swarm.post("fix the held bug", max_price=0)
    await_approval(swarm, held)
    waiting = len(swarm.tasks("awaiting_approval"))
    page = open_page(browser, stack.running.desktop_url, DESKTOP)
    page.locator(".timmy-header").get_by_text(f"awaiting_approval {waiting}", exact=False) \
        .wait_for(timeout=CHANGE)
    assert page.locator(".timmy-card-awaiting .timmy-card-value").inner_text() == str(waiting)
    swarm.reject(held.task_id)
    swarm.close()
    page.context.close()


def test_legends_leave_the_data_visible_on_a_desktop_and_a_phone(browser, stack):
    """Each chart's legend sits under its plot, never over the lines, dots or bars; the
    charts fit a 390 px phone as well as a 1280 px desktop."""
    swarm = attach(stack)
    if not [a for a in swarm.agents() if a.status in ("idle", "busy")]:
        swarm.spawn("forge")
    swarm.run(["fix the legend bug", "write the chart docs"], timeout=60)
    for name, viewport in (("desktop", DESKTOP), ("phone", PHONE)):
        page = open_page(browser, stack.running.desktop_url, viewport,
                         mobile=viewport is PHONE)
        page.wait_for_function(
            "() => document.querySelectorAll('.timmy-chart .dot').length > 0", timeout=CHANGE)
        page.locator(".timmy-chart-box").first.scroll_into_view_if_needed()
        assert legends_over_plots(page) == [], name
        ticks = page.evaluate("""() => [...document.querySelectorAll('.timmy-chart .axis')]
            .filter(a => a.querySelector('.axislabel')?.textContent === 'tasks waiting')
            .map(a => [...a.querySelectorAll('.tick text')].map(t => t.textContent))""")
        assert len(ticks) == 1, ticks
        whole = sorted(int(t.replace(",", "")) for t in ticks[0])   # whole tasks, evenly
        assert whole[0] == 0 and len({b - a for a, b in itertools.pairwise(whole)}) == 1, ticks
        shot(page, f"desktop-chart-legends-{name}")
        page.context.close()
    swarm.close()
