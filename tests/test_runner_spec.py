"""`RunnerSpec`: one struct for a runner's start-up settings, local (``--spec``) and remote
(the welcome), and `BidStats.from_dict` for the learned counters it carries."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest
from test_runner_process import TIMEOUT, RunnerProcess
from test_service import ServiceProcess

from timmy.engine import protocol as p
from timmy.errors import ConfigError
from timmy.market.bidding import BidStats, bid_rng, quote
from timmy.market.personas import PERSONAS, persona_from_dict
from timmy.service.remote import Options, handshake, make_runner

REPO = Path(__file__).resolve().parents[1]
SCOUT = {"id": "scout", "name": "Scout", "role": "Web Scout", "bid_base": 20, "bid_jitter": 5,
         "preferred_keywords": ["crawl", "web page"]}
LEARNED = {"auctions": 10, "wins": 9, "won_ok": 1, "won_failed": 4,
           "keyword_successes": {"bug": 3}}
WORK = ["fix the bug in the api client", "write a haiku about rain", "crawl this web page"]

# The welcome as a service before RunnerSpec sent it (every field), and the struct a runner of
# that version decoded it with: the wire must stay readable both ways.
OLD_WELCOME = {
    "agent_id": "forge-1",
    "persona": json.loads(json.dumps({f: getattr(PERSONAS["forge"], f) for f in (
        "id", "name", "role", "description", "capabilities", "rate_sats", "bid_base",
        "bid_jitter", "preferred_keywords")})),
    "seed": 7, "executor": "simulated", "task_seconds": 0.0, "model": None,
    "ollama_timeout": 120.0, "stats": LEARNED, "ping_interval": 5.0, "ping_timeout": 30.0,
    "rejoin_key": "k" * 32,
}


class OldWelcome(msgspec.Struct, frozen=True):
    agent_id: str
    persona: dict[str, Any]
    seed: int
    executor: str
    task_seconds: float
    stats: dict[str, Any]
    ping_interval: float
    ping_timeout: float
    model: str | None = None
    ollama_timeout: float | None = None
    rejoin_key: str | None = None


# -- the struct ----------------------------------------------------------------------------


@pytest.mark.parametrize("spec", [
    p.RunnerSpec(agent_id="forge-1", persona="forge"),
    p.RunnerSpec(agent_id="scout-1", persona=SCOUT, seed=-3, executor="echo", task_seconds=0.5,
                 stats=LEARNED),
    p.RunnerSpec(agent_id="quill-2", persona="quill", executor="ollama", model="llama3.2",
                 ollama_host="http://127.0.0.1:11434", ollama_timeout=30.0),
])
def test_a_spec_round_trips_through_its_json(spec):
    text = p.encode_spec(spec)
    assert json.loads(text)["agent_id"] == spec.agent_id
    assert p.decode_spec(text) == spec
    assert p.convert_spec(json.loads(text)) == spec


def test_a_spec_leaves_an_unset_ollama_host_out_and_defaults_as_the_flags_did():
    spec = p.decode_spec('{"agent_id": "forge-1", "persona": "forge"}')
    assert "ollama_host" not in json.loads(p.encode_spec(spec))
    assert (spec.seed, spec.executor, spec.task_seconds, spec.stats) == (0, "simulated", 0.05,
                                                                       None)


@pytest.mark.parametrize(("text", "says"), [
    ('{"agent_id": "forge-1"}', "missing required field `persona`"),
    ('{"agent_id": "forge-1", "persona": "forge", "sed": 1}', "unknown field `sed`"),
    ('{"agent_id": "forge-1", "persona": "forge", "seed": "1"}', "$.seed"),
    ('{"agent_id": "", "persona": "forge"}', "$.agent_id"),
    ('{"agent_id": "forge-1", "persona": "forge", "task_seconds": -1}', "$.task_seconds"),
    ('{"agent_id": "forge-1", "persona": "forge"', "truncated"),
    ('{"agent_id": "forge-1", "persona": "forge"} x', "trailing characters"),
    ("[]", "Expected `object`"),
])
def test_a_bad_spec_is_a_config_error_with_a_hint(text, says):
    with pytest.raises(ConfigError) as info:
        p.decode_spec(text)
    assert info.value.message.startswith("--spec is not a runner spec: ")
    assert says in info.value.message
    assert '"agent_id": "forge-1"' in info.value.hint and "--persona" in info.value.hint


# -- BidStats.from_dict ----------------------------------------------------------------------


def test_bid_stats_from_dict_reads_back_to_dict():
    stats = BidStats(auctions=10, wins=9, won_ok=1, won_failed=4, keyword_successes={"bug": 3})
    assert BidStats.from_dict(stats.to_dict()) == stats
    assert BidStats.from_dict({}) == BidStats()
    assert BidStats.from_dict({"auctions": "4", "wins": 2.0}) == BidStats(auctions=4, wins=2)


@pytest.mark.parametrize("data", [
    {"auctions": -1}, {"auctions": 1, "wins": 2}, {"keyword_successes": {"bug": -1}},
    {"auctions": "many"}, {"keyword_successes": ["bug"]}, [], None,
])
def test_bid_stats_from_dict_refuses_what_is_not_counters_naming_where(data):
    with pytest.raises(ConfigError) as info:
        BidStats.from_dict(data, "the runner's stats")
    assert info.value.message.startswith("the runner's stats is not a set of learned counters")
    assert '"auctions": 5' in info.value.hint


# -- a local runner from a spec --------------------------------------------------------------


def bids(runner: RunnerProcess) -> tuple[p.Hello, list[p.Bid]]:
    hello = runner.recv()
    runner.send(*(p.Announce(task_id=i, description=d) for i, d in enumerate(WORK, 1)))
    got = [runner.recv() for _ in WORK]
    runner.send(p.Shutdown())
    assert runner.wait_exit() == 0
    return hello, got


def test_a_runner_started_from_a_spec_bids_as_one_started_from_flags(tmp_path):
    spec = p.RunnerSpec(agent_id="scout-1", persona=SCOUT, seed=3, task_seconds=0,
                        stats=LEARNED)
    from_spec = RunnerProcess(["--spec", p.encode_spec(spec)], tmp_path / "spec.err")
    from_flags = RunnerProcess(["--agent-id", "scout-1", "--persona", json.dumps(SCOUT),
                                "--seed", "3", "--task-seconds", "0",
                                "--stats", json.dumps(LEARNED)], tmp_path / "flags.err")
    try:
        hello, got = bids(from_spec)
        hello_flags, got_flags = bids(from_flags)
    finally:
        from_spec.close()
        from_flags.close()
    assert hello == p.Hello(agent_id="scout-1", persona="scout", pid=from_spec.proc.pid)
    assert hello_flags.persona == "scout"
    assert got == got_flags
    scout, learned = persona_from_dict(SCOUT), BidStats.from_dict(LEARNED)
    assert [b.sats for b in got] == [quote(scout, d, bid_rng(3, "scout-1", i, 1), learned).sats
                                     for i, d in enumerate(WORK, 1)]
    unlearned = [quote(scout, d, bid_rng(3, "scout-1", i, 1)).sats
                 for i, d in enumerate(WORK, 1)]
    assert [b.sats for b in got] != unlearned, "the spec's stats were not used"


def run_runner(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "timmy.engine.runner", *args], cwd=REPO,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=30)


def test_a_runner_given_a_bad_spec_exits_2_saying_what_and_how():
    proc = run_runner("--spec", '{"agent_id": "forge-1", "persona": "forge", "sed": 1}')
    assert proc.returncode == 2 and proc.stdout == ""
    assert "--spec is not a runner spec: Object contains unknown field `sed`" in proc.stderr
    assert "hint: " in proc.stderr


@pytest.mark.parametrize(("spec", "says"), [
    ({"agent_id": "x-1", "persona": "nobody"}, "nobody"),
    ({"agent_id": "x-1", "persona": dict(SCOUT, bid_base=0)}, "--spec persona: field 'bid_base'"),
    ({"agent_id": "x-1", "persona": "forge", "stats": {"auctions": -1}},
     "--spec stats is not a set of learned counters"),
    ({"agent_id": "x-1", "persona": "forge", "executor": "magic"}, "magic"),
])
def test_a_runner_given_a_spec_it_cannot_run_exits_2_naming_the_setting(spec, says):
    proc = run_runner("--spec", json.dumps(spec))
    assert proc.returncode == 2 and proc.stdout == ""
    assert says in proc.stderr and "hint: " in proc.stderr


def test_the_spec_and_the_flags_do_not_mix_and_help_still_works():
    mixed = run_runner("--spec", '{"agent_id": "forge-1", "persona": "forge"}', "--seed", "2")
    assert mixed.returncode == 2 and "give it alone, or --seed without it" in mixed.stderr
    neither = run_runner("--seed", "2")
    assert neither.returncode == 2 and "--agent-id, --persona (or --spec)" in neither.stderr
    bad_stats = run_runner("--agent-id", "f-1", "--persona", "forge", "--stats", "[1]")
    assert bad_stats.returncode == 2
    assert "--stats is not a set of learned counters" in bad_stats.stderr
    helped = run_runner("--help")
    assert helped.returncode == 0 and "--spec JSON" in helped.stdout
    assert "--agent-id" in helped.stdout and "--stats" in helped.stdout


SPY = """
    with open(os.path.join(HERE, "specs.jsonl"), "a") as log:
        log.write(sys.argv[sys.argv.index("--spec") + 1] + "\\n")
    become_real_runner()
"""


def test_the_coordinator_starts_runners_with_one_spec_and_restarts_them_with_what_they_learned(
        make_swarm, scripted_runner, tmp_path, eventually):
    swarm = make_swarm(runner_command=scripted_runner("spy", SPY), seed=5)
    swarm.spawn("forge")
    swarm.run([f"fix the bug in the api client, part {i}" for i in range(4)], timeout=30)
    swarm.kill("forge-1")
    eventually(lambda: (tmp_path / "specs.jsonl").read_text().count("\n") == 2, timeout=15)
    first, second = (p.decode_spec(line)
                     for line in (tmp_path / "specs.jsonl").read_text().splitlines())
    assert first == p.RunnerSpec(agent_id="forge-1", persona="forge", seed=5, task_seconds=0.0,
                                 ollama_timeout=swarm.config.ollama_timeout)
    assert second.stats is not None and second.stats["auctions"] == 4
    assert msgspec.structs.replace(second, stats=None) == first


# -- a remote runner's welcome ---------------------------------------------------------------


def test_an_old_style_welcome_is_read_as_a_spec():
    welcome = msgspec.convert(OLD_WELCOME, p.Welcome)
    assert welcome.rejoin_key == "k" * 32 and welcome.ping_timeout == 30.0
    spec = welcome.spec()
    assert type(spec) is p.RunnerSpec
    assert spec == p.RunnerSpec(agent_id="forge-1", persona=OLD_WELCOME["persona"], seed=7,
                                task_seconds=0.0, ollama_timeout=120.0, stats=LEARNED)
    # What the command line says otherwise wins; None leaves the service's value.
    changed = welcome.spec(seed=9, executor="echo", model=None, ollama_host="http://h:1")
    assert (changed.seed, changed.executor, changed.model, changed.ollama_host) == (
        9, "echo", None, "http://h:1")
    # A newer service may say more: unknown fields are ignored (a spec by itself refuses them).
    assert msgspec.convert({**OLD_WELCOME, "later": 1}, p.Welcome) == welcome


def test_a_welcome_encodes_the_old_field_names_exactly():
    welcome = msgspec.convert(OLD_WELCOME, p.Welcome)
    line = msgspec.json.encode(welcome)
    assert json.loads(line) == OLD_WELCOME
    assert msgspec.json.decode(line, type=OldWelcome) == msgspec.convert(OLD_WELCOME, OldWelcome)


@pytest.fixture
def service(tmp_path):
    svc = ServiceProcess(tmp_path / "swarm.db", 0, "--no-spawn")
    yield svc
    svc.stop()


def test_the_service_welcomes_a_remote_runner_with_its_spec(service):
    # Raw: the service's answer carries exactly the field names of before.
    host, port = service.url.removeprefix("tcp://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=TIMEOUT) as sock:
        sock.sendall(json.dumps({"id": 1, "token": service.token, "op": "runner",
                                 "args": {"persona": "forge", "agent_id": "forge-r1",
                                          "stats": LEARNED}}).encode() + b"\n")
        answer = json.loads(sock.makefile("rb").readline())
    assert answer["ok"] is True
    assert set(answer["result"]) == set(OLD_WELCOME)
    assert answer["result"]["persona"] == OLD_WELCOME["persona"]
    assert answer["result"]["stats"] == LEARNED
    assert (answer["result"]["seed"], answer["result"]["task_seconds"]) == (1, 0.0)
    msgspec.convert(answer["result"], OldWelcome)   # an older runner still reads it
    # Through the runner's own handshake: the welcome is a spec, and the runner is built
    # from it with what its command line said otherwise.
    opts = Options(url=service.url, token=service.token, persona="forge", spec={"seed": 4})
    sock, welcome, _ = handshake(opts, "forge-r2", None)
    sock.close()
    assert isinstance(welcome, p.RunnerSpec) and welcome.agent_id == "forge-r2"
    runner = make_runner(opts, welcome)
    assert runner.spec == welcome.spec(seed=4)
    assert (runner.agent_id, runner.seed, runner.persona) == ("forge-r2", 4, PERSONAS["forge"])
