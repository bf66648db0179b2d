"""A desktop redraw does only visible work: every widget its `render` fills is on the page
(no hidden leftovers, such as the old "open auctions" list or the hand-drawn sparklines), and
the task table waits while the inspector's tab covers it. A real local swarm, no runners.
"""

from __future__ import annotations

import pytest

pytest.importorskip("ipywidgets")
pytest.importorskip("bqplot")

from timmy.widgets import desktop


def shown(widget) -> set[int]:
    """The ids of ``widget`` and everything inside it that the page shows (of a Tab, only
    the selected child)."""
    out = {id(widget)}
    children = list(getattr(widget, "children", ()) or ())
    if children and hasattr(widget, "selected_index") and widget.selected_index is not None:
        children = [children[widget.selected_index]]
    for child in children:
        out |= shown(child)
    return out


def test_every_widget_a_redraw_fills_is_on_the_page(make_swarm):
    swarm = make_swarm()
    console = desktop(swarm).console
    with console.lock:
        updates = console.render()
    on_page = shown(console.box)
    hidden = [name for name, value in vars(console).items()
              if any(value is widget for widget, _ in updates) and id(value) not in on_page]
    assert hidden == []
    assert len(updates) >= 4
    console.detach()


def test_the_task_table_waits_while_the_inspector_tab_shows(make_swarm, eventually):
    swarm = make_swarm()
    console = desktop(swarm).console
    console.tabs.selected_index = 1
    task = swarm.post("fix the hidden table bug")
    eventually(lambda: task.task_id in console.state.tasks, what="the post's event")
    console.redraw_now()
    assert "fix the hidden table bug" not in console.tasks_html.value
    assert all(widget is not console.tasks_html for widget, _ in console.render())
    console.tabs.selected_index = 0   # back on the tasks tab: drawn at once
    assert f">{task.task_id}<" in console.tasks_html.value
    assert "fix the hidden table bug" in console.tasks_html.value
    console.detach()
