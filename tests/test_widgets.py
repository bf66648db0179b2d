"""The notebook consoles (timmy.widgets) on a real local swarm: real runners, a SQLite file.

Buttons are pressed with ``button.click()`` (it runs the click handlers); what the page
would show is read from the HTML widgets' values.
"""

from __future__ import annotations

import html
import itertools
import os
import subprocess
import sys
import threading
import time

import pytest

pytest.importorskip("ipywidgets")

from timmy.market.auction import Bid, clear
from timmy.market.models import Event
from timmy.widgets import desktop, explain, inspect, mobile
from timmy.widgets.throttle import Throttle

SCRIPT = "<script>alert('x')</script> fix the bug in the api client"


def html_values(widget) -> list[str]:
    """Every HTML string a widget tree shows (HTML widgets, nested boxes and tabs)."""
    import ipywidgets as w

    found = []
    if isinstance(widget, w.HTML):
        found.append(widget.value)
    for child in getattr(widget, "children", ()):
        found += html_values(child)
    return found


def post_through(console, description: str) -> int:
    before = {t.task_id for t in console.swarm.tasks()}
    console.post_text.value = description
    console.post_button.click()
    (task_id,) = {t.task_id for t in console.swarm.tasks()} - before
    return task_id


def test_importing_widgets_loads_no_widget_library():
    code = "import sys, timmy.widgets; print('ipywidgets' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"


def test_desktop_posted_task_completes_and_shows_in_the_task_table(swarm, eventually):
    box = desktop(swarm)
    console = box.console
    assert "forge-1" in console.agents_html.value and "no agents" not in console.agents_html.value

    task_id = post_through(console, "fix the bug in the api client")
    assert f"posted task #{task_id}" in console.post_message.value
    assert console.post_text.value == ""
    done = swarm.wait(task_id, timeout=10)
    assert done.status == "completed"

    def shown():
        console.redraw_now()
        row = console.state.tasks[task_id]
        return row.status == "completed" and "fix the bug in the api client" in \
            console.tasks_html.value
    eventually(shown, what="the completed task in the table")
    row = console.state.tasks[task_id]
    assert (row.agent, row.price_sats) == (done.assigned_agent, done.price_sats)
    earned = {a.agent_id: a.earned_sats for a in swarm.agents()}
    assert console.state.agents[done.assigned_agent].earned_sats == earned[done.assigned_agent]

    console.status_filter.value = "failed"
    assert "fix the bug" not in console.tasks_html.value
    console.status_filter.value = "completed"
    assert "fix the bug" in console.tasks_html.value
    assert "completed 1" in console.header.value
    box.close()


def test_desktop_spawn_and_stop_buttons(swarm, eventually):
    console = desktop(swarm).console
    console.persona_pick.value = "echo"
    console.spawn_button.click()
    assert "spawned echo-2" in console.control_message.value
    eventually(lambda: "echo-2" in console.agent_pick.options or console.redraw_now(),
               what="echo-2 in the stop list")
    console.agent_pick.value = "echo-2"
    console.stop_button.click()
    assert "stopped echo-2" in console.control_message.value
    eventually(lambda: console.state.agents["echo-2"].status == "stopped",
               what="echo-2 stopped in the console")
    console.redraw_now()
    assert "echo-2" not in console.agent_pick.options
    console.detach()


def test_posting_an_empty_description_says_so(swarm):
    console = desktop(swarm).console
    console.post_text.value = "   "
    console.post_button.click()
    assert "write a description first" in console.post_message.value
    assert swarm.tasks() == []
    console.detach()


def test_a_refused_post_shows_the_error_and_its_hint(swarm):
    from timmy.engine.protocol import MAX_DESCRIPTION

    console = mobile(swarm).console
    console.post_text.value = "<b>" * MAX_DESCRIPTION
    console.post_button.click()
    assert "character limit" in console.post_message.value
    assert "hint:" in console.post_message.value and "<b><b>" not in console.post_message.value
    assert console.post_text.value        # kept, to be shortened
    console.detach()


def test_mobile_shows_the_feed_and_the_latest_result(swarm, eventually):
    box = mobile(swarm)
    console = box.console
    assert console.post_button.layout.min_height == "44px"
    assert console.post_button.layout.width == "100%"
    task_id = post_through(console, "write the readme")
    done = swarm.wait(task_id, timeout=10)

    def shown():
        console.redraw_now()
        return f"#{task_id}" in console.results.value and "task_completed" in console.feed.value
    eventually(shown, what="the result on the phone")
    assert html.escape(done.result[:40]) in console.results.value
    assert "auction_closed" in console.feed.value
    box.close()


def test_inspector_why_line_and_winner_match_recorded_bids(make_swarm, tmp_path):
    swarm = make_swarm(rule="second_price")
    swarm.spawn_all()
    done = swarm.run(["fix the bug in the api client", "write the readme",
                      "deploy to the staging server"], timeout=20, sequential=True)
    for task in done:
        box = inspect(swarm, task.task_id)
        stories = box.inspector.stories
        bids = swarm.bids(task.task_id)
        assert sum(len(s.bids) for s in stories) == len(bids)
        last = stories[-1]
        recorded = [b for b in bids if b["auction_id"] == last.auction_id]
        winner = next(b["agent_id"] for b in recorded if b["won"])
        again = clear(task.task_id, [Bid(b["agent_id"], b["sats"], b["on_spec"])
                                     for b in recorded], "second_price")
        assert last.recorded_winner == last.winner == winner == task.assigned_agent
        assert last.price_sats == again.price_sats == task.price_sats
        assert last.why == again.reason and "under second_price; 2nd price" in last.why
        assert last.line == f"{winner} won at {task.price_sats} sats: {again.reason}"
        assert html.escape(last.line) in box.inspector.output.value
        assert {b["persona"] for b in last.bids} <= {a.persona for a in swarm.agents()}
        assert all(b["attempt"] == task.attempts for b in last.bids)


def test_explain_says_when_a_cheaper_bidder_did_not_count():
    bids = [
        {"task_id": 3, "auction_id": 9, "attempt": 1, "agent_id": "forge-1", "sats": 20,
         "on_spec": True, "won": False, "rule": "specialist_first"},
        {"task_id": 3, "auction_id": 9, "attempt": 1, "agent_id": "quill-1", "sats": 30,
         "on_spec": True, "won": True, "rule": "specialist_first"},
    ]
    (story,) = explain(bids, {"forge-1": "forge"})
    assert (story.winner, story.recorded_winner, story.price_sats) == ("forge-1", "quill-1", 30)
    assert not story.matches
    assert "forge-1 would win" in story.line
    assert [b["persona"] for b in story.bids] == ["forge", "quill"]


def test_script_descriptions_show_as_text_in_every_widget(swarm, eventually):
    desk, phone = desktop(swarm), mobile(swarm)
    task = swarm.post(SCRIPT)
    swarm.wait(task.task_id, timeout=10)

    def seen():   # attached: the consoles learn of the task from the event stream
        desk.console.redraw_now()
        phone.console.redraw_now()
        return all(task.task_id in c.state.tasks for c in (desk.console, phone.console))
    eventually(seen, what="the task in both consoles")
    # the inspector is made after the task exists, so the desktop's one is refreshed first
    desk.console.inspector.refresh(task.task_id)
    boxes = {"desktop": desk, "mobile": phone, "inspector": inspect(swarm, task.task_id)}
    for name, box in boxes.items():
        values = html_values(box)
        assert not any("<script" in v for v in values), name
        assert any("&lt;script&gt;" in v for v in values), name
    desk.close()
    phone.close()


def synthetic_events(first_task: int, tasks: int) -> list[Event]:
    """A task's whole life, seven events each, for ``tasks`` tasks."""
    events, eid, now = [], 10_000_000, time.time()
    for tid in range(first_task, first_task + tasks):
        for kind, agent, data in (
                ("task_posted", None, {"description": f"synthetic {tid} <b>"}),
                ("auction_opened", None, {"attempt": 1, "eligible": 9}),
                ("bid", "forge-1", {"sats": 30, "on_spec": True, "attempt": 1}),
                ("auction_closed", "forge-1", {"price_sats": 30, "rule": "specialist_first",
                                               "why": "lowest on-spec bid under specialist_first",
                                               "bids": 1, "attempt": 1}),
                ("task_assigned", "forge-1", {"price_sats": 30, "attempt": 1}),
                ("task_started", "forge-1", {}),
                ("task_completed", "forge-1", {"price_sats": 30, "attempts": 1})):
            eid += 1
            events.append(Event(event_id=eid, ts=now, kind=kind, task_id=tid, agent_id=agent,
                                data=data))
    return events


@pytest.mark.parametrize("make_console", [desktop, mobile], ids=["desktop", "mobile"])
def test_a_flood_of_events_redraws_a_few_times_and_ends_up_right(make_swarm, eventually,
                                                                  make_console):
    swarm = make_swarm()          # no runners: the only events are the synthetic ones
    swarm.spawn("forge")
    console = make_console(swarm).console
    earned_before = console.state.agents["forge-1"].earned_sats
    events = synthetic_events(1_000_000, 715)     # 5,005 events
    before = console.redraws
    start = time.monotonic()
    for i in range(0, len(events), 250):       # ~5,000 events/s for one second
        for event in events[i:i + 250]:
            console.on_event(event)
        time.sleep(0.05)
    elapsed = time.monotonic() - start
    time.sleep(console.throttle.interval * 2)    # the last poke's redraw
    redraws = console.redraws - before
    # redraws while the flood lasts (not only at its end), never more than one per interval
    assert 2 <= redraws <= 2 + elapsed / console.throttle.interval, (redraws, elapsed)
    state = console.state
    assert all(state.tasks[t].status == "completed" for t in range(1_000_000, 1_000_715))
    assert state.counts["completed"] == 715
    assert state.agents["forge-1"].earned_sats == earned_before + 715 * 30
    newest = state.recent.newest(1)[0]   # the recent auctions (replaced "open auctions")
    assert (newest.task_id, newest.winner, newest.price_sats) == (1_000_714, "forge-1", 30)
    assert len(state.recent.records) == min(715, state.recent.records.maxlen)
    if make_console is desktop:
        prices = console.market.prices   # the price chart's (replaced the sparkline's)
        assert len(prices) == min(715, prices.maxlen)
        assert prices[-1].sats == 30 and prices[-1].on_spec
        assert "synthetic 1000714 &lt;b&gt;" in console.tasks_html.value
        assert "completed 715" in console.header.value
    else:
        assert "task_completed</b> #1000714" in console.feed.value
    console.detach()


def test_throttle_coalesces_pokes_from_many_threads():
    drawn = []
    throttle = Throttle(lambda: drawn.append(time.monotonic()), interval=0.1)

    def poke():
        for _ in range(5000):
            throttle.poke()

    threads = [threading.Thread(target=poke) for _ in range(4)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - start
    time.sleep(0.25)
    assert 1 <= len(drawn) <= 3 + elapsed / 0.1
    assert all(b - a >= 0.09 for a, b in itertools.pairwise(drawn))
    throttle.close()
    throttle.poke()
    time.sleep(0.15)
    assert len(drawn) == throttle.redraws


def test_closing_a_console_unsubscribes(swarm):
    box = desktop(swarm)
    console = box.console
    box.close()
    seen, redraws = console.state.events_seen, console.redraws
    swarm.wait(swarm.post("write the readme").task_id, timeout=10)
    time.sleep(0.3)
    assert console.state.events_seen == seen
    assert console.redraws == redraws


@pytest.mark.timeout(120)
def test_consoles_update_inside_a_jupyter_kernel(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    from nbclient import NotebookClient

    code = f"""\
import time, timmy, timmy.widgets
swarm = timmy.Swarm('sqlite:///{tmp_path / "nb.db"}', seed=1, task_seconds=0)
swarm.spawn_all()
desk, phone = timmy.widgets.desktop(swarm), timmy.widgets.mobile(swarm)
display(desk, phone)
desk.console.post_text.value = 'write the readme'
desk.console.post_button.click()
(task,) = swarm.tasks()
swarm.wait(task.task_id, timeout=10)
time.sleep(0.6)    # the timer thread's redraw, not one asked for
print('table', 'write the readme' in desk.console.tasks_html.value,
      desk.console.state.tasks[task.task_id].status)
print('phone', f'#{{task.task_id}}' in phone.console.results.value)
desk.close(); phone.close(); swarm.close()
"""
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(code)]
    NotebookClient(nb, timeout=60, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = nb.cells[0].outputs
    stdout = "".join(o.get("text", "") for o in outputs if o.get("name") == "stdout")
    stderr = "".join(o.get("text", "") for o in outputs if o.get("name") == "stderr")
    assert "table True completed" in stdout and "phone True" in stdout
    assert "Traceback" not in stderr and "redraw failed" not in stderr, stderr
    assert sum(o.output_type == "display_data" for o in outputs) == 2


def test_an_attached_console_shows_a_lost_service_and_carries_on_after_a_restart(tmp_path,
                                                                                 eventually):
    from test_service import ServiceProcess

    db = tmp_path / "served.db"
    svc = ServiceProcess(db)
    swarm = svc.attach()
    box = desktop(swarm, interval=0.05)
    console = box.console
    try:
        first = swarm.run(["fix the bug in the api client"], timeout=10)[0]
        eventually(lambda: f">{first.task_id}<" in console.tasks_html.value)
        assert console.connected is True
        assert "reconnecting" not in console.header.value
        svc.stop()
        eventually(lambda: "reconnecting" in console.header.value)
        assert console.connected is False
        svc = ServiceProcess(db, svc.port)
        eventually(lambda: "reconnecting" not in console.header.value, timeout=15)
        task_id = post_through(console, "write the release notes")
        eventually(lambda: swarm.task(task_id).status == "completed")
        eventually(lambda: any("release notes" in row and ">completed<" in row
                               for row in console.tasks_html.value.split("</tr>")))
    finally:
        box.close()
        swarm.close()
        svc.stop()


def test_the_inspector_shows_an_llm_answer_escaped(make_swarm, monkeypatch):
    """A task done by the Ollama executor (against the loopback Ollama look-alike): its answer
    is shown in the inspector as typed, markup included, never as markup."""
    from ollama_server import FakeOllama

    monkeypatch.delenv("OLLAMA_HOST", raising=False)
    with FakeOllama(models=["llama3.2:latest"]) as server:
        swarm = make_swarm(executor="ollama", ollama_host=server.url)
        swarm.spawn("forge")
        task = swarm.run([SCRIPT], timeout=20)[0]
        assert task.status == "completed" and "says:" in task.result
        box = inspect(swarm, task.task_id)
        shown = box.inspector.output.value
        assert "class='timmy-outcome'" in shown
        assert html.escape(task.result, quote=True) in shown
        assert "<script" not in shown


def need_voice() -> None:
    """Skip without a voice here (pyttsx3 + espeak-ng), except under CI=true: fail."""
    from timmy.errors import VoiceUnavailable
    from timmy.voice import check

    try:
        check()
    except VoiceUnavailable as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"voice is required under CI=true: {exc.hint}")
        pytest.skip(f"no voice here: {exc.hint}")


def test_speak_events_plays_real_speech_in_the_page(make_swarm, eventually):
    """The toggle subscribes a voice announcer whose WAVs (pyttsx3 + espeak-ng, for real)
    go to the page's Audio widget; turning it off unsubscribes."""
    import io
    import wave

    need_voice()
    swarm = make_swarm()
    swarm.spawn_all()
    box = desktop(swarm, interval=0.05)
    console = box.console
    console.speak_button.value = True
    swarm.run(["fix the bug in the api client"] * 3, timeout=20)
    eventually(lambda: console.audio.value[:4] == b"RIFF", timeout=20, what="a WAV in the page")
    with wave.open(io.BytesIO(console.audio.value)) as wav:
        assert wav.getnframes() / wav.getframerate() > 0.3
    eventually(lambda: "completed" in console.speak_line.value, timeout=20,
               what="completions announced (rate-limited: the second announcement)")
    assert console.speak_line.value.startswith("🔊")
    announcer = console.announcer
    console.speak_button.value = False
    assert console.announcer is None
    heard = announcer.heard
    swarm.run(["write the docs"], timeout=20)
    assert announcer.heard == heard, "turned off: no longer subscribed"
    box.close()


def test_speak_events_says_when_the_voice_stops(make_swarm, eventually, tmp_path):
    """Announcements that keep failing (here their folder is gone) turn the toggle off and
    say why, instead of "speaking events" over silence."""
    import shutil

    need_voice()
    swarm = make_swarm()
    swarm.spawn_all(["forge"])
    box = desktop(swarm, interval=0.05)
    console = box.console
    console.speak_button.value = True
    console.announcer.min_interval = 0
    shutil.rmtree(console._voice_dir.name)
    for i in range(4):
        swarm.run([f"fix the bug number {i} in the api client"], timeout=20)
        if not console.speak_button.value:
            break
    eventually(lambda: not console.speak_button.value, timeout=20, what="the toggle off")
    assert "voice stopped" in console.speak_line.value
    assert "timmy doctor" in console.speak_line.value        # the hint
    assert console.announcer is None
    box.close()


def test_speak_events_without_pyttsx3_says_how_to_fix_it(tmp_path):
    code = f"""
import sys
sys.modules["pyttsx3"] = None
import timmy
from timmy.widgets import mobile
swarm = timmy.Swarm(db={str(tmp_path / 'v.db')!r}, task_seconds=0).start()
box = mobile(swarm)
box.console.speak_button.value = True
print(box.console.speak_button.value, box.console.speak_line.value)
box.close()
swarm.close()
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("False ")
    assert "pip install" in out.stdout and "voice" in out.stdout
