"""Protocol fuzzing against live processes: a runner that sends a corpus of mutated and
random messages to a real coordinator, and hypothesis-made requests to a real ``timmy
serve``. Nothing crashes, memory stays bounded, bad senders are counted and restarted
or disconnected, and the swarm goes on completing tasks. (The decoders alone are fuzzed
in ``tests/test_protocol.py``.)"""

from __future__ import annotations

import json
import random
import socket
import sys
from pathlib import Path

import psutil
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from test_service import ServiceProcess

from timmy.engine import protocol

VALID = [
    {"v": 1, "type": "bid", "task_id": 1, "sats": 12, "on_spec": True},
    {"v": 1, "type": "result", "task_id": 1, "ok": True, "output": "done", "elapsed_s": 0.1},
    {"v": 1, "type": "pong", "seq": 3},
    {"v": 1, "type": "started", "task_id": 1},
]


def corpus(seed: int, n: int = 400) -> list[bytes]:
    """Mutated valid messages, wrong types, huge numbers, deep nesting, invalid UTF-8,
    random bytes: one line each (no newline inside)."""
    rng = random.Random(seed)
    out: list[bytes] = []
    weird = [2**200, -(2**70), 1e308, float("-inf"), None, [], {}, "x" * 1000, True, "1"]
    for _ in range(n):
        kind = rng.randrange(6)
        msg = dict(rng.choice(VALID))
        if kind == 0:                                    # a field of the wrong type or size
            msg[rng.choice(list(msg))] = rng.choice(weird)
            line = json.dumps(msg).encode()
        elif kind == 1:                                  # bit flips in a valid line
            raw = bytearray(json.dumps(msg).encode())
            for _ in range(rng.randrange(1, 6)):
                raw[rng.randrange(len(raw))] ^= 1 << rng.randrange(8)
            line = bytes(raw)
        elif kind == 2:                                  # truncated
            raw = json.dumps(msg).encode()
            line = raw[: rng.randrange(len(raw))]
        elif kind == 3:                                  # deep nesting
            depth = rng.choice([10, 1000, 100_000])
            line = b"[" * depth + b"]" * depth
        elif kind == 4:                                  # invalid UTF-8
            bad = rng.choice([b"\xff\xfe", b"\xc3", b"\xed\xa0\x80"])
            line = json.dumps(msg).encode()[:-2] + bad + b"}"
        else:                                            # random bytes
            line = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))
        out.append(line.replace(b"\n", b" "))
    return out


@pytest.mark.timeout(120)
def test_a_runner_sending_a_fuzz_corpus_never_hurts_the_coordinator(
        make_swarm, scripted_runner, tmp_path, eventually):
    lines = corpus(seed=1)
    (tmp_path / "corpus.bin").write_bytes(b"\n".join(lines) + b"\n")
    command = scripted_runner("fuzzer", """
        if args.persona != "forge":
            become_real_runner()
        hello()
        data = open(os.path.join(HERE, "corpus.bin"), "rb").read()
        big = b"x" * (10 * 1024 * 1024)
        sys.stdout.buffer.write(data + big + b"\\n" + big + b"\\n" + big + b"\\n")
        sys.stdout.buffer.write(b'{"v": 1, "type": "bid", "task_id": 1')   # no newline, then gone
        sys.stdout.buffer.flush()
    """)
    me = psutil.Process()
    swarm = make_swarm(runner_command=command, auction_window=0.3)
    swarm.spawn_all(["forge", "quill", "seer"])
    rss_before = me.memory_info().rss
    eventually(lambda: swarm.status()["protocol_errors"] >= 100, timeout=60,
               what="the corpus counted as protocol errors")
    done = swarm.run([f"write the docs part {i}" for i in range(20)], timeout=60)
    assert all(t.status == "completed" for t in done)
    assert {t.assigned_agent for t in done} <= {"quill-1", "seer-1"}
    forge = eventually(lambda: [a for a in swarm.agents()
                                if a.agent_id == "forge-1" and a.restarts >= 1],
                       timeout=30, what="the fuzzing runner restarted")
    assert forge
    assert swarm.status()["protocol_errors"] >= 100
    grown = (me.memory_info().rss - rss_before) / 1e6
    assert grown < 150, f"coordinator grew {grown:.0f} MB on 30 MB of over-long lines"


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    svc = ServiceProcess(tmp_path_factory.mktemp("fuzz") / "swarm.db", 0, "--no-spawn")
    with svc.attach() as swarm:
        swarm.post_many([f"fix bug {i}" for i in range(5)])
    yield svc
    svc.stop()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=50),
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=20)


def request_lines(token: str):
    ops = st.sampled_from(["post", "wait", "tasks", "task", "bids", "events", "spawn", "stop",
                           "cancel", "status", "subscribe", "export", "run", "nope", ""])
    good = st.fixed_dictionaries({
        "id": st.integers(min_value=-(2**70), max_value=2**70) | json_values,
        "token": st.just(token), "op": ops,
        "args": st.dictionaries(st.sampled_from(["description", "task_id", "timeout",
                                                 "persona", "after", "limit", "status",
                                                 "descriptions", "out_dir", "x"]),
                                json_values, max_size=4) | json_values})
    return st.one_of(
        good.map(lambda d: json.dumps(d).encode()),
        json_values.map(lambda v: json.dumps(v).encode()),
        st.binary(max_size=300).map(lambda b: b.replace(b"\n", b"")))


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_random_requests_get_an_answer_or_a_close_and_the_service_stays_up(service, data):
    lines = data.draw(st.lists(request_lines(service.token), min_size=1, max_size=4))
    with socket.create_connection(("127.0.0.1", service.port), timeout=10) as sock:
        sock.sendall(b"".join(line + b"\n" for line in lines))
        sock.shutdown(socket.SHUT_WR)
        got = b""
        while chunk := sock.recv(1 << 16):
            got += chunk
    for line in got.splitlines():
        answer = json.loads(line)                       # every answer is well-formed JSON
        if isinstance(answer, dict) and answer.get("ok") is False:
            assert answer["error"]["message"]
    with service.attach() as swarm:
        assert swarm.ping() == "pong"
        assert [t.description for t in swarm.tasks()][:5] == [f"fix bug {i}" for i in range(5)]


def test_the_corpus_decodes_to_protocol_errors_only():
    """The corpus is really bad input: each line is refused by the decoder with a
    ProtocolError, or (rarely, a harmless mutation) decodes to a valid message."""
    bad = 0
    for line in corpus(seed=1):
        try:
            protocol.decode_runner(line)
        except protocol.ProtocolError:
            bad += 1
    assert bad >= 300
