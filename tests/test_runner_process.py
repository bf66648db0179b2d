"""`python -m timmy.engine.runner` as a real OS process, spoken to over its stdin/stdout pipes."""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from timmy.engine import protocol as p
from timmy.engine.executors import simulated_plan
from timmy.market.bidding import BidStats, bid_rng, quote
from timmy.market.personas import PERSONAS, persona_from_dict

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("pandas", "duckdb", "sqlalchemy", "ipywidgets")


def forge_args(task_seconds: float = 0) -> list[str]:
    return ["--agent-id", "forge-1", "--persona", "forge", "--seed", "1",
            "--task-seconds", str(task_seconds)]  # fmt: skip


FORGE_ARGS = forge_args()
TIMEOUT = 5.0


class RunnerProcess:
    """One runner subprocess; a thread turns its stdout into a queue of lines."""

    def __init__(self, args: list[str], stderr_path: Path, stdin=subprocess.PIPE) -> None:
        self.stderr_path = stderr_path
        self._stderr = open(stderr_path, "wb")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "timmy.engine.runner", *args],
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            cwd=REPO,
        )
        self.lines: queue.Queue[bytes | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in iter(self.proc.stdout.readline, b""):
            self.lines.put(line)
        self.lines.put(None)

    def send(self, *items: p.Message | bytes) -> None:
        self.proc.stdin.write(
            b"".join(p.encode(i) if isinstance(i, p.Message) else i for i in items)
        )
        self.proc.stdin.flush()

    def recv(self, timeout: float = TIMEOUT):
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"no reply from the runner within {timeout}s; stderr: {self.stderr()}")
        assert line is not None, f"the runner closed stdout; stderr: {self.stderr()}"
        assert line.endswith(b"\n")
        return p.decode_runner(line)

    def assert_silent(self, seconds: float = 0.3) -> None:
        time.sleep(seconds)
        assert self.lines.empty(), f"unexpected reply {self.lines.get_nowait()!r}"

    def wait_exit(self, timeout: float = TIMEOUT) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the runner did not exit within {timeout}s")

    def stderr(self) -> str:
        self._stderr.flush()
        return self.stderr_path.read_text(errors="replace")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=TIMEOUT)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()
        self._stderr.close()


@pytest.fixture
def start_runner(tmp_path):
    started: list[RunnerProcess] = []

    def start(args: list[str] = FORGE_ARGS, stdin=subprocess.PIPE) -> RunnerProcess:
        runner = RunnerProcess(args, tmp_path / f"stderr-{len(started)}.txt", stdin=stdin)
        started.append(runner)
        return runner

    yield start
    for runner in started:
        runner.close()


@pytest.fixture
def forge(start_runner) -> RunnerProcess:
    runner = start_runner()
    hello = runner.recv()
    assert isinstance(hello, p.Hello)
    return runner


def expected_quote(description: str, task_id: int, attempt: int = 1, stats=None, persona=None):
    persona = persona or PERSONAS["forge"]
    return quote(persona, description, bid_rng(1, "forge-1", task_id, attempt), stats)


# -- start-up -------------------------------------------------------------------------------


def test_runner_says_hello_with_its_agent_id_persona_and_pid(start_runner):
    runner = start_runner()
    hello = runner.recv()
    assert hello == p.Hello(agent_id="forge-1", persona="forge", pid=runner.proc.pid)


# -- bidding --------------------------------------------------------------------------------


def test_announce_of_on_spec_task_gets_on_spec_bid_in_range(forge):
    description = "fix the bug in the api client"
    forge.send(p.Announce(task_id=1, description=description))
    bid = forge.recv()
    assert isinstance(bid, p.Bid)
    assert bid.task_id == 1
    assert bid.on_spec is True
    base, jitter = PERSONAS["forge"].bid_base, PERSONAS["forge"].bid_jitter
    assert base - jitter <= bid.sats <= base  # 21..38
    assert bid.sats == expected_quote(description, 1).sats


def test_announce_of_off_spec_task_gets_off_spec_bid_in_range(forge):
    forge.send(p.Announce(task_id=2, description="paint the garden fence"))
    bid = forge.recv()
    assert isinstance(bid, p.Bid)
    assert bid.on_spec is False
    assert 68 <= bid.sats <= 68 + 17
    assert bid.sats == expected_quote("paint the garden fence", 2).sats


def test_runner_bids_are_the_keyed_pure_function_of_task_and_attempt(forge):
    description = "refactor the class"
    expected = []
    for task_id in range(1, 11):
        for attempt in (1, 2):
            forge.send(p.Announce(task_id=task_id, description=description, attempt=attempt))
            expected.append(expected_quote(description, task_id, attempt).sats)
    got = [forge.recv().sats for _ in expected]
    assert got == expected


def test_runner_learns_from_auctions_it_won(forge):
    description = "fix the bug"
    for task_id in (1, 2, 3):
        forge.send(p.AuctionClosed(task_id=task_id, winner="forge-1", price_sats=30))
    forge.send(p.Announce(task_id=4, description=description))
    bid = forge.recv()
    won_everything = BidStats(auctions=3, wins=3)
    assert bid.sats == expected_quote(description, 4, stats=won_everything).sats
    assert bid.sats > expected_quote(description, 4).sats


def test_auction_closed_gets_no_reply(forge):
    forge.send(p.AuctionClosed(task_id=1, winner="quill-1", price_sats=30))
    forge.assert_silent()


# -- execution ------------------------------------------------------------------------------


def test_assign_gets_started_then_result(forge):
    description = "fix the bug in the api client"
    forge.send(p.Announce(task_id=1, description=description))
    assert isinstance(forge.recv(), p.Bid)
    forge.send(p.Assign(task_id=1, description=description))
    started = forge.recv()
    assert started == p.Started(task_id=1)
    result = forge.recv()
    assert isinstance(result, p.Result)
    assert result.task_id == 1
    assert result.ok == simulated_plan(1, "forge-1", 1, 1, True, 0).ok
    assert result.elapsed_s == 0.0
    if result.ok:
        assert "forge-1" in result.output and description in result.output


def test_assigned_task_outcomes_follow_the_seeded_plan(forge):
    description = "fix the bug"
    tasks = range(1, 9)
    for task_id in tasks:
        forge.send(p.Assign(task_id=task_id, description=description))
    for task_id in tasks:
        assert forge.recv() == p.Started(task_id=task_id)
        result = forge.recv()
        assert result.task_id == task_id
        assert result.ok == simulated_plan(1, "forge-1", task_id, 1, True, 0).ok
        if not result.ok:
            assert "failure" in result.output


def long_task(task_seconds: float, at_least: float) -> int:
    """A task id forge-1 (seed 1) takes at least ``at_least`` seconds to run."""
    plan = lambda t: simulated_plan(1, "forge-1", t, 1, True, task_seconds)  # noqa: E731
    return next(t for t in range(1, 10_000) if plan(t).seconds >= at_least)


def test_busy_runner_still_bids_and_runs_its_tasks_one_after_another(start_runner):
    # Find a task whose simulated run lasts long enough to announce another task meanwhile.
    task_id = long_task(task_seconds=1, at_least=2)
    runner = start_runner(forge_args(task_seconds=1))
    assert isinstance(runner.recv(), p.Hello)
    runner.send(p.Assign(task_id=task_id, description="fix the bug"))
    assert runner.recv() == p.Started(task_id=task_id)
    runner.send(p.Announce(task_id=task_id + 1, description="fix another bug"))
    bid = runner.recv(timeout=1.0)
    assert isinstance(bid, p.Bid) and bid.task_id == task_id + 1 and bid.on_spec
    runner.send(p.Assign(task_id=task_id + 1, description="fix another bug"))
    first = runner.recv(timeout=10)
    assert isinstance(first, p.Result) and first.task_id == task_id, "queued task ran first"
    assert runner.recv(timeout=10) == p.Started(task_id=task_id + 1)
    second = runner.recv(timeout=10)
    assert isinstance(second, p.Result) and second.task_id == task_id + 1


# -- liveness -------------------------------------------------------------------------------


def test_ping_gets_pong_with_the_same_seq(forge):
    forge.send(p.Ping(seq=41))
    assert forge.recv() == p.Pong(seq=41)
    forge.send(p.Ping(seq=0), p.Ping(seq=2**40))
    assert forge.recv() == p.Pong(seq=0)
    assert forge.recv() == p.Pong(seq=2**40)


def test_many_messages_in_one_write_are_all_answered_in_order(forge):
    forge.send(*[p.Ping(seq=i) for i in range(500)])
    assert [forge.recv().seq for _ in range(500)] == list(range(500))


def test_garbage_lines_are_skipped_and_the_runner_keeps_answering(forge):
    garbage = [
        b"garbage\n",
        b"{}\n",
        b"\n",
        b"   \n",
        b'{"v":2,"type":"ping","seq":1}\n',
        b'{"v":1,"type":"bid","task_id":1,"sats":3,"on_spec":true}\n',
        b'{"v":1,"type":"announce","task_id":0,"description":"x"}\n',
        b'{"v":1,"type":"ping","seq":1,"extra":true}\n',
        b'{"v":1,"type":"ping"\n',
    ]
    forge.send(*garbage)
    forge.send(p.Ping(seq=5))
    assert forge.recv() == p.Pong(seq=5), "garbage must get no reply; the runner must go on"
    assert forge.proc.poll() is None
    assert "forge-1" in forge.stderr(), "dropped lines are logged with the runner's id"


def test_line_split_across_writes_is_reassembled(forge):
    line = p.encode(p.Ping(seq=9))
    forge.send(line[:7])
    time.sleep(0.1)
    forge.send(line[7:])
    assert forge.recv() == p.Pong(seq=9)


def test_invalid_utf8_line_is_skipped_and_the_runner_keeps_answering(forge):
    forge.send(b'{"v":1,"type":"announce","task_id":1,"description":"\xff"}\n')
    forge.send(p.Ping(seq=6))
    time.sleep(0.3)
    assert forge.proc.poll() is None, (
        "BUG timmy.engine.protocol._decode: a line with invalid UTF-8 inside a string raises "
        "UnicodeDecodeError (not ProtocolError), which kills the runner; stderr: "
        + forge.stderr()[-300:]
    )
    assert forge.recv() == p.Pong(seq=6)


def test_deeply_nested_line_is_skipped_and_the_runner_keeps_answering(forge):
    n = 100_000
    forge.send(b'{"x":' + b"[" * n + b"]" * n + b',"type":"ping","v":1,"seq":1}\n')
    forge.send(p.Ping(seq=6))
    time.sleep(0.3)
    assert forge.proc.poll() is None, (
        "BUG timmy.engine.protocol._decode: deep nesting before the type tag raises RecursionError "
        "(not ProtocolError), which kills the runner; stderr: " + forge.stderr()[-300:]
    )
    assert forge.recv() == p.Pong(seq=6)


def stdin_file(tmp_path: Path, data: bytes):
    path = tmp_path / "stdin.bin"
    path.write_bytes(data)
    return open(path, "rb")  # the subprocess reads it; the caller closes it


def replies(runner: RunnerProcess) -> list:
    assert runner.wait_exit() == 0
    out = []
    while (line := runner.lines.get(timeout=TIMEOUT)) is not None:
        out.append(p.decode_runner(line))
    return out


def test_over_long_line_is_dropped_and_the_next_line_is_answered(start_runner, tmp_path):
    data = b"x" * (p.MAX_LINE + 1) + p.encode(p.Ping(seq=7)) + p.encode(p.Ping(seq=8))
    with stdin_file(tmp_path, data) as stdin:
        runner = start_runner(stdin=stdin)
        got = replies(runner)
    assert [type(m) for m in got] == [p.Hello, p.Pong]
    assert got[1].seq == 8


@pytest.mark.parametrize("chunks", [17, 20])
def test_over_long_line_is_dropped_whole_not_its_tail(start_runner, tmp_path, chunks):
    # The runner reads 64 KiB at a time; a line over 1 MiB must be dropped up to its newline,
    # not cut at a read boundary and have its remainder handled as a line of its own.
    data = b"x" * (chunks * 65536) + p.encode(p.Ping(seq=7)) + p.encode(p.Ping(seq=8))
    with stdin_file(tmp_path, data) as stdin:
        runner = start_runner(stdin=stdin)
        got = replies(runner)
    seqs = [m.seq for m in got if isinstance(m, p.Pong)]
    assert seqs == [8], (
        "BUG timmy.engine.runner.Runner.serve: when `pending` exceeds MAX_LINE it is reset to "
        "b'' and "
        "the rest of the over-long line is decoded as a fresh line, so the tail "
        f'\'{{"type":"ping","seq":7}}\' of a {chunks * 64} KiB garbage line was answered: {got}'
    )


# -- exit -----------------------------------------------------------------------------------


def test_closing_stdin_makes_the_runner_exit_with_code_0(forge):
    forge.proc.stdin.close()
    start = time.monotonic()
    assert forge.wait_exit(timeout=5) == 0
    assert time.monotonic() - start < 3


def test_closing_stdin_exits_even_while_a_task_runs(start_runner):
    task_id = long_task(task_seconds=10, at_least=5)
    runner = start_runner(forge_args(task_seconds=10))
    assert isinstance(runner.recv(), p.Hello)
    runner.send(p.Assign(task_id=task_id, description="fix the bug"))
    assert runner.recv() == p.Started(task_id=task_id)
    runner.proc.stdin.close()
    assert runner.wait_exit(timeout=5) == 0


def test_shutdown_message_makes_the_runner_exit_with_code_0(forge):
    forge.send(p.Shutdown())
    assert forge.wait_exit() == 0


def test_replies_before_shutdown_in_the_same_write_are_sent(forge):
    forge.send(p.Ping(seq=1), p.Shutdown(), p.Ping(seq=2))
    assert forge.recv() == p.Pong(seq=1)
    assert forge.wait_exit() == 0
    assert forge.lines.get(timeout=TIMEOUT) is None, "nothing is answered after shutdown"


# -- custom personas --------------------------------------------------------------------------

SCOUT = {
    "id": "scout",
    "role": "Web Scout",
    "bid_base": 20,
    "bid_jitter": 5,
    "preferred_keywords": ["crawl", "web page"],
}


def test_custom_persona_as_json_bids_by_its_own_keywords(start_runner):
    args = ["--agent-id", "scout-1", "--persona", json.dumps(SCOUT), "--seed", "3",
            "--task-seconds", "0"]  # fmt: skip
    runner = start_runner(args)
    hello = runner.recv()
    assert hello == p.Hello(agent_id="scout-1", persona="scout", pid=runner.proc.pid)
    scout = persona_from_dict(SCOUT)
    runner.send(p.Announce(task_id=1, description="crawl this web page"))
    runner.send(p.Announce(task_id=2, description="fix the bug"))
    on, off = runner.recv(), runner.recv()
    assert on.on_spec is True and 15 <= on.sats <= 20
    assert off.on_spec is False and 36 <= off.sats <= 41
    assert on.sats == quote(scout, "crawl this web page", bid_rng(3, "scout-1", 1, 1)).sats
    assert off.sats == quote(scout, "fix the bug", bid_rng(3, "scout-1", 2, 1)).sats


def test_invalid_custom_persona_exits_nonzero_naming_the_field(start_runner):
    bad = dict(SCOUT, bid_base=0)
    runner = start_runner(["--agent-id", "scout-1", "--persona", json.dumps(bad)])
    assert runner.wait_exit() != 0
    assert "'bid_base'" in runner.stderr(), (
        "BUG timmy.market.personas.persona_from_dict: with rate_sats left out, bid_base=0 is "
        "reported as a bad 'rate_sats': " + runner.stderr()[-200:]
    )
    assert runner.lines.get(timeout=TIMEOUT) is None, "no hello from a runner that cannot start"


def test_unknown_persona_id_exits_nonzero_listing_known_ones(start_runner):
    runner = start_runner(["--agent-id", "x-1", "--persona", "nobody"])
    assert runner.wait_exit() != 0
    assert "nobody" in runner.stderr()
    assert "forge" in runner.stderr()


# -- stays light ----------------------------------------------------------------------------


def test_importing_timmy_runner_imports_nothing_heavy():
    code = (
        "import json, sys, timmy.engine.runner; "
        f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=30,
        check=True,
    )  # fmt: skip
    assert json.loads(out.stdout) == []


def test_running_python_m_timmy_runner_imports_nothing_heavy():
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "timmy.engine.runner", *FORGE_ARGS],
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr[-500:]
    imported = {
        line.rsplit("|", 1)[1].strip().split(".")[0]
        for line in proc.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }
    assert "timmy" in imported  # the check saw the runner's own imports
    assert imported.isdisjoint(HEAVY), sorted(imported & set(HEAVY))
