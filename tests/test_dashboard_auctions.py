"""Recent auctions, the inspector's live picker and search, "why this bid won" after a reload,
and the phone's cards, chart and feed history: real ``timmy serve`` + Voilà (the fixtures of
tests/test_dashboards.py), Debian's headless Chromium through Playwright.

Screenshots go to ``test-artifacts/dashboards/``. Under ``CI=true`` a missing Chromium or
Playwright fails, as in tests/test_dashboards.py.
"""

from __future__ import annotations

import re

import pytest
import test_dashboards as dash
from test_dashboards import (
    CHANGE,
    DESKTOP,
    LOAD,
    PHONE,
    attach,
    horizontal_overflow,
    open_page,
    shot,
    task_row,
)

browser = dash.browser   # the fixtures: real service + Voilà, headless Chromium
stack = dash.stack


@pytest.fixture(scope="module")
def swarm(stack):
    swarm = attach(stack)
    if not any(a.agent_id == "forge-1" and a.status in ("idle", "busy", "starting")
               for a in swarm.agents()):
        swarm.spawn("forge")
    yield swarm
    swarm.close()


def finished(swarm, description: str) -> int:
    task = swarm.post(description)
    assert swarm.wait(task.task_id, timeout=60).status == "completed"
    return task.task_id


def open_in_inspector(page, task_id: int):
    """Click the task's button in the recent auctions; the inspector shows it."""
    page.locator(".timmy-recent button", has_text=f"#{task_id}").first.click(timeout=CHANGE)
    out = page.locator(".timmy-inspector")
    out.locator(f"b:text-is('#{task_id}')").wait_for(timeout=CHANGE)
    out.locator(".timmy-why").first.wait_for(timeout=CHANGE)
    return out


def test_recent_auctions_open_the_inspector_and_why_reads_the_same_after_a_reload(
        browser, stack, swarm):
    """A task finished while the page is open: its auction is listed, a click opens it in the
    inspector, and after a reload the list, the inspector and the task table's why read the
    same."""
    page = open_page(browser, stack.running.desktop_url, DESKTOP)
    task_id = finished(swarm, "fix the flaky parser test in the cli")
    recent = page.locator(".timmy-recent")
    recent.locator(f"button:has-text('#{task_id}')").wait_for(timeout=CHANGE)
    entry = recent.locator(".widget-hbox", has=page.locator(f"button:has-text('#{task_id}')"))
    listed = entry.first.inner_text()
    assert "forge-1" in listed and "sats" in listed and "specialist_first" in listed
    row = task_row(page, task_id)
    row.get_by_text("completed", exact=True).wait_for(timeout=CHANGE)
    why_row = row.inner_text()
    assert "lowest on-spec bid" in why_row, "the why column shows the recorded reason"
    inspector = open_in_inspector(page, task_id)
    before = inspector.locator(".timmy-why").all_inner_texts()
    table = inspector.locator("table").first.inner_text()
    assert before and "forge-1 won at" in before[0]
    assert "rank" in table and "on-spec" in table
    shot(page, "auctions-before-reload")

    page.reload()
    page.wait_for_selector(".timmy-header", timeout=LOAD)
    page.locator(f".timmy-recent button:has-text('#{task_id}')").wait_for(timeout=CHANGE)
    entry = page.locator(".timmy-recent .widget-hbox",
                         has=page.locator(f"button:has-text('#{task_id}')"))
    assert entry.first.inner_text() == listed
    row = task_row(page, task_id)
    row.get_by_text("completed", exact=True).wait_for(timeout=CHANGE)
    assert row.inner_text() == why_row, "the task table's why is the same after a reload"
    inspector = open_in_inspector(page, task_id)
    assert inspector.locator(".timmy-why").all_inner_texts() == before
    assert inspector.locator("table").first.inner_text() == table
    shot(page, "auctions-after-reload")
    page.context.close()


def picker_labels(page) -> list[str]:
    return page.locator(".timmy-inspector select option").all_inner_texts()


def test_picker_follows_new_tasks_and_searches_by_id_and_text(browser, stack, swarm):
    page = open_page(browser, stack.running.desktop_url, DESKTOP)
    page.get_by_text("Auction inspector", exact=True).click()
    page.locator(".timmy-inspector select").wait_for(timeout=CHANGE)
    task = swarm.post("translate the zebrafish onboarding guide")   # after the page loaded
    page.locator(".timmy-inspector select option",
                 has_text=f"#{task.task_id} ").wait_for(state="attached", timeout=CHANGE)
    other = finished(swarm, "benchmark the heap allocator")
    page.locator(".timmy-inspector select option",
                 has_text=f"#{other} ").wait_for(state="attached", timeout=CHANGE)

    search = page.locator(".timmy-inspector-search input")
    search.fill("zebrafish")
    page.wait_for_function(
        "() => [...document.querySelectorAll('.timmy-inspector select option')]"
        ".every(o => o.textContent.includes('zebrafish'))", timeout=CHANGE)
    assert all("zebrafish" in label for label in picker_labels(page))
    page.locator(".timmy-inspector b", has_text=f"#{task.task_id}").wait_for(timeout=CHANGE)

    search.fill(f"#{other}")
    page.wait_for_function(
        f"() => {{ const o = [...document.querySelectorAll('.timmy-inspector select option')];"
        f" return o.length > 0 && o.every(x => x.textContent.startsWith('#{other}')); }}",
        timeout=CHANGE)
    page.locator(".timmy-inspector b", has_text=f"#{other}").wait_for(timeout=CHANGE)
    shot(page, "inspector-search")
    search.fill("")
    page.wait_for_function(
        "() => document.querySelectorAll('.timmy-inspector select option').length >= 2",
        timeout=CHANGE)
    page.context.close()


def test_mobile_fits_with_cards_chart_and_the_feed_history_after_a_reload(browser, stack,
                                                                           swarm):
    task_id = finished(swarm, "fix the bug in the api client")
    page = open_page(browser, stack.running.mobile_url, PHONE, mobile=True)
    feed = page.locator(".timmy-feed")
    feed.get_by_text(re.compile(rf"auction_closed\s+#{task_id}\b")).wait_for(timeout=CHANGE)
    page.reload()
    page.wait_for_selector(".timmy-header", timeout=LOAD)
    feed = page.locator(".timmy-feed")
    feed.get_by_text(re.compile(rf"auction_closed\s+#{task_id}\b")).wait_for(timeout=CHANGE)
    assert "waiting for events" not in feed.inner_text(), "the stored history shows at once"
    cards = page.locator(".timmy-cards .timmy-card")
    assert cards.count() >= 6
    assert "runners live" in page.locator(".timmy-cards").inner_text()
    chart = page.locator(".timmy-price-chart svg")
    chart.wait_for(timeout=CHANGE)
    assert chart.locator("rect").count() >= 1, "a bar per recent auction"
    assert "sats" in chart.text_content()
    assert horizontal_overflow(page) == [], "nothing sticks out of a 390 px screen"
    for button in page.locator(".timmy-page button").all():
        if button.is_visible():
            assert button.bounding_box()["height"] >= 44, "touch targets are at least 44 px"
    shot(page, "mobile-cards-chart")
    page.context.close()
