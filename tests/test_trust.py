"""Trust no runner: the service decides ``on_spec`` and the price range itself, and remote
runners hold a runner token that lets them join and do nothing else.

A real ``timmy serve`` on a SQLite file in ``tmp_path``, a real runner of the specialist
(spawned by the service), and a liar: a real process that dials in over TCP, speaks the
wire protocol by hand and bids what it likes.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_remote import RunnerProcess, live
from test_service import ServiceProcess
from test_service_security import answer, closed, request

import timmy
from timmy.market.bidding import (
    MAX_BID,
    MIN_BID,
    BidStats,
    KeyedRandom,
    bid_range,
    compute_bid,
    quote,
)
from timmy.market.personas import PERSONAS, Persona
from timmy.service.wire import AuthenticationError

VIDEO = [f"render the video clip, take {i}" for i in range(40)]   # reel's, off-spec for quill

# A remote runner that lies: it joins, then answers every announce with the bid its plan
# gives for that task ([sats, on_spec], cycled by task id) and completes what it wins.
LIAR = r'''
import json, os, socket, sys

host, port, token, persona, agent_id, plan, report = sys.argv[1:8]
plan = json.loads(plan)
sock = socket.create_connection((host, int(port)), timeout=60)
f = sock.makefile("rwb")

def send(obj):
    f.write(json.dumps(obj).encode() + b"\n")
    f.flush()

send({"id": 1, "token": token, "op": "runner",
      "args": {"persona": persona, "agent_id": agent_id}})
welcome = json.loads(f.readline())
if not welcome["ok"]:
    open(report, "w").write(json.dumps({"refused": welcome["error"]}))
    sys.exit(2)
send({"v": 1, "type": "hello", "agent_id": agent_id, "persona": persona, "pid": os.getpid()})
bids = 0
try:
    for line in f:
        msg = json.loads(line)
        kind = msg["type"]
        if kind == "ping":
            send({"v": 1, "type": "pong", "seq": msg["seq"]})
        elif kind == "announce":
            sats, on_spec = plan[(msg["task_id"] - 1) % len(plan)]
            send({"v": 1, "type": "bid", "task_id": msg["task_id"], "sats": sats,
                  "on_spec": on_spec})
            bids += 1
        elif kind == "assign":
            send({"v": 1, "type": "started", "task_id": msg["task_id"]})
            send({"v": 1, "type": "result", "task_id": msg["task_id"], "ok": True,
                  "output": "trust me", "elapsed_s": 0.0})
        elif kind == "shutdown":
            break
except OSError:
    pass
open(report, "w").write(json.dumps({"ended": True, "bids": bids}))
'''


def runner_token_of(svc: ServiceProcess) -> str:
    return Path(f"{svc.db}.runner.token").read_text().strip()


def start_liar(svc: ServiceProcess, tmp_path: Path, plan: list, token: str,
               persona: str = "quill", agent_id: str = "quill-liar") -> tuple:
    script, report = tmp_path / "liar.py", tmp_path / "liar.json"
    script.write_text(LIAR)
    proc = subprocess.Popen([sys.executable, str(script), "127.0.0.1", str(svc.port), token,
                             persona, agent_id, json.dumps(plan), str(report)])
    return proc, report


@pytest.fixture
def service(tmp_path):
    """A service with no runners of its own yet; the test spawns the specialist."""
    svc = ServiceProcess(tmp_path / "swarm.db", 0, "--no-spawn")
    yield svc
    svc.stop()


# -- the range of a correct bid -------------------------------------------------------


personas = st.builds(
    lambda base, jitter, kw: Persona(id="p", name="P", role="r", description="",
                                     capabilities=(), rate_sats=base, bid_base=base,
                                     bid_jitter=jitter, preferred_keywords=(kw,)),
    st.integers(2, 199), st.integers(0, 200), st.sampled_from(["code", "fix", "data"]))
stats = st.builds(
    lambda auctions, wins, ok, failed, proven: BidStats(
        auctions=auctions, wins=min(wins, auctions), won_ok=ok, won_failed=failed,
        keyword_successes={"code": proven, "fix": proven // 2}),
    st.integers(0, 50), st.integers(0, 50), st.integers(0, 20), st.integers(0, 20),
    st.integers(0, 6))


@given(persona=personas, stats=st.none() | stats, key=st.integers(0, 2**64 - 1),
       description=st.sampled_from(["fix the code", "draw a cat", "data please", "code"]))
def test_every_bid_compute_bid_makes_lies_in_the_personas_range(persona, stats, key,
                                                                 description):
    q = quote(persona, description, KeyedRandom(key), stats)
    lo, hi = bid_range(persona, q.on_spec)
    assert MIN_BID <= lo <= q.sats <= hi <= MAX_BID
    lo_all, hi_all = bid_range(persona)
    assert lo_all <= lo and hi <= hi_all
    assert compute_bid(persona, description, KeyedRandom(key), stats) == q.sats


def test_the_range_follows_the_bidding_rule_for_the_built_in_personas():
    forge = PERSONAS["forge"]      # bid_base 38, jitter 17: on-spec 21..38, off-spec 68..85
    (on_lo, on_hi), (off_lo, off_hi) = bid_range(forge, True), bid_range(forge, False)
    # scaled by the learned multiplier, 0.85 * 0.9 at least and 1.15 * 1.2 at most
    assert (on_lo, on_hi) == (round(21 * 0.85 * 0.9), round(38 * 1.15 * 1.2))
    assert (off_lo, off_hi) == (round(68 * 0.85 * 0.9), min(MAX_BID, round(85 * 1.15 * 1.2)))
    assert bid_range(forge) == (on_lo, off_hi)
    for p in PERSONAS.values():    # one sat is nobody's price: the liar of issue 12
        assert bid_range(p)[0] > 1
        assert bid_range(p, True)[1] < MAX_BID and math.isfinite(bid_range(p)[1])


# -- a lying remote runner -----------------------------------------------------------


@pytest.mark.timeout(90)
def test_a_lying_remote_runner_wins_nothing_against_the_real_specialist(service, tmp_path):
    token = runner_token_of(service)
    quill = PERSONAS["quill"]
    off_lo, off_hi = bid_range(quill, False)
    cheap_but_off_spec = off_lo + 2      # a price quill may ask, off-spec; below reel's
    assert cheap_but_off_spec < bid_range(PERSONAS["reel"], True)[0]
    # 1 sat "on-spec" (nobody's price), a real off-spec price sold as on-spec, 10,000 sats
    plan = [[1, True], [cheap_but_off_spec, True], [10_000, False]]
    liar, _ = start_liar(service, tmp_path, plan, token)
    try:
        with service.attach() as swarm:
            swarm.spawn("reel")
            live(swarm, "reel-1", "quill-liar")
            done = swarm.run(VIDEO[:12], timeout=60)
            bids = swarm.bids()
            status = swarm.status()
            events = swarm.events()
            agents = {a.agent_id: a for a in swarm.agents()}
        # The real specialist won every task; the liar none.
        assert [(t.status, t.assigned_agent) for t in done] == [("completed", "reel-1")] * 12
        assert agents["quill-liar"].tasks_won == 0 and agents["quill-liar"].status == "idle"
        # Every auction (a task whose simulated run failed is auctioned again) heard the
        # liar's bid from the plan; its in-range bids stand, as what they are: off-spec.
        auctions = [(e.task_id, e.data["attempt"]) for e in events
                    if e.kind == "auction_opened"]
        said = {a: plan[(a[0] - 1) % len(plan)][0] for a in auctions}
        mine = sorted((b["task_id"], b["attempt"], b["sats"], b["on_spec"]) for b in bids
                      if b["agent_id"] == "quill-liar")
        assert mine == sorted((t, n, sats, False) for (t, n), sats in said.items()
                              if sats == cheap_but_off_spec)
        assert all(b["on_spec"] for b in bids if b["agent_id"] == "reel-1")
        # The out-of-range ones (2 in 3) were dropped, counted and logged with its id.
        out_of_range = sum(sats in (1, 10_000) for sats in said.values())
        assert out_of_range >= 8
        assert status["bids_refused"] == status["protocol_errors"] == out_of_range
        refused = [e for e in events if e.kind == "protocol_error"]
        assert {e.agent_id for e in refused} == {"quill-liar"}
        assert sum("bid of 1 sats" in e.data["error"] for e in refused) == \
            sum(sats == 1 for sats in said.values())
        assert all(f"quill's range {off_lo}..{off_hi}" in e.data["error"] for e in refused)
        assert not any(e.kind == "bid" and e.agent_id == "quill-liar"
                       and e.data["sats"] in (1, 10_000) for e in events)
    finally:
        liar.kill()
        liar.wait(timeout=10)


@pytest.mark.timeout(90)
def test_a_runner_that_keeps_bidding_out_of_range_is_cut_off(service, tmp_path):
    liar, report = start_liar(service, tmp_path, [[1, True]], runner_token_of(service))
    try:
        with service.attach() as swarm:
            swarm.spawn("reel")
            live(swarm, "reel-1", "quill-liar")
            done = swarm.run(VIDEO[:25], timeout=60, sequential=True)
            assert {t.assigned_agent for t in done} == {"reel-1"}
            assert liar.wait(timeout=20) == 0          # its connection was cut
            ended = json.loads(report.read_text())
            assert ended["ended"] and ended["bids"] == 20
            events = swarm.events()
            status = swarm.status()
        # As for a runner sending garbage: 20 bad lines, then the connection is cut.
        assert status["bids_refused"] == 20
        assert [e.kind for e in events if e.agent_id == "quill-liar"
                and e.kind.startswith("agent_")] == ["agent_joined", "agent_disconnected"]
    finally:
        liar.kill()
        liar.wait(timeout=10)


# -- runner tokens -------------------------------------------------------------------


def test_serve_writes_a_runner_token_beside_the_admin_one_owner_only(service):
    path = Path(f"{service.db}.runner.token")
    assert path.stat().st_mode & 0o777 == 0o600
    token = path.read_text().strip()
    assert len(token) >= 32 and token != service.token
    assert any(f"runner token: {path}" in line for line in service.lines), service.lines


@pytest.mark.timeout(90)
def test_the_runner_token_joins_as_a_runner_and_does_nothing_else(service, tmp_path):
    token = runner_token_of(service)
    forge = RunnerProcess(service, "forge", "--agent-id", "forge-r1", token=token)
    try:
        with service.attach() as swarm:
            live(swarm, "forge-r1")
            done = swarm.run(["fix the bug in the api client"], timeout=30)[0]
            assert (done.status, done.assigned_agent) == ("completed", "forge-r1")
            swarm.stop("forge-r1")
            assert forge.proc.wait(timeout=10) == 0
            forge = RunnerProcess(service, "forge", "--agent-id", "forge-r1", token=token)
            live(swarm, "forge-r1", restarts=1)
            before = (swarm.tasks(), [(a.agent_id, a.status, a.restarts)
                                      for a in swarm.agents()])
        out = tmp_path / "export"
        forbidden = [("post", {"description": "rm -rf /"}),
                     ("post_many", {"descriptions": ["a", "b"]}),
                     ("run", {"descriptions": ["a"]}),
                     ("cancel", {"task_id": 1}), ("stop", {"agent_id": "forge-r1"}),
                     ("kill", {"agent_id": "forge-r1"}), ("export", {"out_dir": str(out)}),
                     ("spawn", {"persona": "forge"}), ("spawn_all", {}),
                     ("subscribe", {"after": 0}), ("status", {}), ("tasks", {}),
                     ("task", {"task_id": 1}), ("bids", {}), ("events", {}), ("agents", {}),
                     ("wait", {"task_id": 1}), ("ping", {}), ("no_such_op", {})]
        for op, args in forbidden:
            with socket.create_connection(("127.0.0.1", service.port), timeout=10) as sock:
                sock.sendall(request(op, token, rid=3, **args))
                reply = answer(sock)
                assert reply["ok"] is False and reply["id"] == 3, op
                error = reply["error"]
                assert error["type"] == "AuthenticationError", (op, error)
                assert "runner token" in error["message"] and op in error["message"]
                assert "admin token" in error["hint"]
                assert closed(sock)
        # The client says so too, as the same class.
        with pytest.raises(AuthenticationError, match="runner token") as err:
            timmy.Swarm.attach(service.url, token=token).post("steal the swarm")
        assert "admin token" in err.value.hint
        # ... and on the command line: one line and a hint, exit code 2.
        cli = subprocess.run([sys.executable, "-m", "timmy", "post", "steal the swarm", "--url",
                              service.url, "--token", token], capture_output=True, text=True,
                             timeout=60)
        assert cli.returncode == 2 and "runner token" in cli.stderr, cli.stderr
        assert "hint:" in cli.stderr and "Traceback" not in cli.stderr
        # ... and nothing happened.
        with service.attach() as swarm:
            after = (swarm.tasks(), [(a.agent_id, a.status, a.restarts)
                                     for a in swarm.agents()])
        assert after == before
        assert not out.exists()
        assert forge.proc.poll() is None
    finally:
        forge.end()


@pytest.mark.timeout(90)
def test_the_admin_token_still_does_everything(service, tmp_path):
    forge = RunnerProcess(service, "forge", "--agent-id", "forge-r1")   # joins with it
    try:
        with service.attach() as swarm:
            live(swarm, "forge-r1")
            agent = swarm.spawn("quill")
            task = swarm.run(["fix the bug in the api client"], timeout=30)[0]
            assert task.assigned_agent == "forge-r1"
            swarm.kill("forge-r1")
            live(swarm, "forge-r1", restarts=1)
            assert swarm.stop(agent.agent_id).status == "stopped"
            swarm.stop("forge-r1")
            queued = swarm.post("write the docs")
            assert swarm.cancel(queued.task_id).status == "cancelled"
            files = swarm.export(tmp_path / "export")
            assert all(Path(f).exists() for f in files.values())
            assert swarm.status()["bids_refused"] == 0
    finally:
        forge.end()


def test_the_runner_token_file_is_kept_across_restarts(tmp_path):
    first = ServiceProcess(tmp_path / "swarm.db", 0, "--no-spawn")
    token = runner_token_of(first)
    first.stop()
    again = ServiceProcess(tmp_path / "swarm.db", 0, "--no-spawn")
    try:
        assert runner_token_of(again) == token
        assert os.stat(f"{again.db}.runner.token").st_mode & 0o077 == 0
    finally:
        again.stop()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("rule", ["specialist_first", "lowest"])
def test_honest_runners_never_have_a_bid_refused_or_overruled(make_swarm, rule):
    """Nine real runners learning over 400 tasks (so the multipliers come into play): every
    bid stands, with the on_spec the runner computed itself."""
    from timmy.sim.workloads import demo_descriptions

    swarm = make_swarm(rule=rule, seed=3, task_seconds=0)
    swarm.spawn_all()
    work = demo_descriptions(400, 3)
    done = swarm.run(work, timeout=100)
    status = swarm.status()
    assert {t.status for t in done} <= {"completed", "failed"}
    assert status["bids_refused"] == 0 and status["protocol_errors"] == 0
    description = {t.task_id: t.description for t in done}
    bids = list(swarm.iter_bids())
    assert len(bids) >= 9 * 400
    for b in bids:
        persona = PERSONAS[b["agent_id"].split("-")[0]]
        assert b["on_spec"] == persona.is_on_spec(description[b["task_id"]])
        lo, hi = bid_range(persona, b["on_spec"])
        assert lo <= b["sats"] <= hi
    assert len({b["sats"] for b in bids}) > 50


def join(svc: ServiceProcess, token: str, agent_id: str, **extra) -> tuple[socket.socket, dict]:
    """Ask to join as a runner on a raw connection; returns it and the answer."""
    sock = socket.create_connection(("127.0.0.1", svc.port), timeout=10)
    sock.sendall(request("runner", token, persona="forge", agent_id=agent_id, **extra))
    return sock, answer(sock)


@pytest.mark.timeout(90)
def test_a_runner_token_cannot_take_over_another_live_runners_connection(service):
    token = runner_token_of(service)
    forge = RunnerProcess(service, "forge", "--agent-id", "forge-r1", token=token)
    try:
        with service.attach() as swarm:
            live(swarm, "forge-r1")
            impostor, reply = join(service, token, "forge-r1")
            assert reply["ok"] is False and reply["error"]["type"] == "ServiceBusy"
            assert "forge-r1 is connected" in reply["error"]["message"]
            assert closed(impostor)
            impostor.close()
            # the real one is untouched: still connected, still working
            agents = live(swarm, "forge-r1")
            assert agents["forge-r1"].restarts == 0 and forge.proc.poll() is None
            done = swarm.run(["fix the bug in the api client"], timeout=30)[0]
            assert done.assigned_agent == "forge-r1"
            # a disconnected agent's name can be taken up again (a runner back after a crash)
            forge.proc.kill()
            forge.proc.wait(timeout=10)
            wait = 0
            while {a.agent_id: a.status for a in swarm.agents()}["forge-r1"] != "disconnected":
                wait += 1
                assert wait < 500
                time.sleep(0.02)
            forge = RunnerProcess(service, "forge", "--agent-id", "forge-r1", token=token)
            live(swarm, "forge-r1", restarts=1)
    finally:
        forge.end()


@pytest.mark.timeout(60)
def test_the_key_a_welcome_carries_lets_a_runner_replace_its_own_connection(service):
    token = runner_token_of(service)
    first, welcome = join(service, token, "forge-q")
    assert welcome["ok"] and welcome["result"]["rejoin_key"]
    key = welcome["result"]["rejoin_key"]
    wrong, refused = join(service, token, "forge-q", key="not-the-key")
    assert refused["error"]["type"] == "ServiceBusy"
    second, again = join(service, token, "forge-q", key=key)      # e.g. a half-open first
    assert again["ok"] and again["result"]["rejoin_key"] != key
    shutdown = answer(first)                                      # the first one is replaced
    assert shutdown["type"] == "shutdown" and "replaced" in shutdown["reason"]
    # the admin token may replace any remote runner's connection, as before
    third, admin = join(service, service.token, "forge-q")
    assert admin["ok"]
    for s in (first, wrong, second, third):
        s.close()
