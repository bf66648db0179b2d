"""Golden values of the wire protocol: its limits, its bytes, its optional fields.

Runners and coordinators of different versions talk to each other (a remote runner is
installed separately), so the exact line of each message and the default of every field
that may be left out must not change by accident. Literals computed once, before the
package was reorganised (issue 13, point 8); see also test_golden.py.
"""

from __future__ import annotations

import msgspec
import pytest

from timmy.engine import protocol as P
from timmy.errors import ProtocolError


def test_limits():
    assert (P.VERSION, P.MAX_LINE, P.MAX_OUTPUT, P.MAX_DESCRIPTION) == (
        1, 1_048_576, 131_072, 8_000)


def test_a_line_of_max_line_bytes_is_decoded_and_one_more_is_refused():
    line = b'{"type":"ping","seq":1}'
    padded = line[:-1] + b" " * (P.MAX_LINE - len(line)) + b"}"
    assert len(padded) == 1_048_576
    assert P.decode_runner(padded.replace(b"ping", b"pong")) == P.Pong(seq=1)
    with pytest.raises(ProtocolError, match="1048576-byte limit"):
        P.decode_coordinator(b" " + padded)


# one message of each type (and the optional fields set and unset) -> its exact line
LINES = [
    (P.Announce(task_id=7, description="fix the bug"),
     b'{"type":"announce","task_id":7,"description":"fix the bug","attempt":1,"v":1}\n'),
    (P.Assign(task_id=7, description="fix the bug", attempt=2),
     b'{"type":"assign","task_id":7,"description":"fix the bug","attempt":2,"v":1}\n'),
    (P.AuctionClosed(task_id=7, winner="forge-1", price_sats=38),
     b'{"type":"auction_closed","task_id":7,"winner":"forge-1","price_sats":38,"v":1}\n'),
    (P.AuctionClosed(task_id=7, winner=None, price_sats=None),
     b'{"type":"auction_closed","task_id":7,"winner":null,"price_sats":null,"v":1}\n'),
    (P.Ping(seq=3), b'{"type":"ping","seq":3,"v":1}\n'),
    (P.Shutdown(), b'{"type":"shutdown","v":1}\n'),
    (P.Shutdown(reason="bye now"), b'{"type":"shutdown","reason":"bye now","v":1}\n'),
    (P.Hello(agent_id="forge-1", persona="forge", pid=4242),
     b'{"type":"hello","agent_id":"forge-1","persona":"forge","pid":4242,"v":1}\n'),
    (P.Bid(task_id=7, sats=38, on_spec=True),
     b'{"type":"bid","task_id":7,"sats":38,"on_spec":true,"v":1}\n'),
    (P.Decline(task_id=7), b'{"type":"decline","task_id":7,"reason":"","v":1}\n'),
    (P.Started(task_id=7), b'{"type":"started","task_id":7,"v":1}\n'),
    (P.Result(task_id=7, ok=True),
     b'{"type":"result","task_id":7,"ok":true,"output":"","elapsed_s":0.0,"usage":null,'
     b'"permanent":false,"v":1}\n'),
    (P.Result(task_id=7, ok=False, output="x", elapsed_s=1.5, permanent=True,
              usage=P.Usage(model="m", prompt_tokens=3, output_tokens=4, first_token_s=0.25,
                            server_s=1.0, load_s=0.5, eval_s=0.125)),
     b'{"type":"result","task_id":7,"ok":false,"output":"x","elapsed_s":1.5,"usage":'
     b'{"model":"m","prompt_tokens":3,"output_tokens":4,"first_token_s":0.25,"server_s":1.0,'
     b'"load_s":0.5,"eval_s":0.125},"permanent":true,"v":1}\n'),
    (P.Pong(seq=3), b'{"type":"pong","seq":3,"v":1}\n'),
    (P.Bye(), b'{"type":"bye","reason":"","v":1}\n'),
]
TO_RUNNER = (P.Announce, P.Assign, P.AuctionClosed, P.Ping, P.Shutdown)


def _decode(msg):
    return P.decode_coordinator if isinstance(msg, TO_RUNNER) else P.decode_runner


@pytest.mark.parametrize(("msg", "line"), LINES, ids=lambda x: getattr(x, "__class__",
                                                                          type(x)).__name__)
def test_exact_line_of_each_message(msg, line):
    assert P.encode(msg) == line
    assert _decode(msg)(line) == msg


def test_every_message_type_has_a_golden_line():
    types = {type(m) for m, _ in LINES}
    assert types == set(TO_RUNNER) | {P.Hello, P.Bid, P.Decline, P.Started, P.Result, P.Pong,
                                      P.Bye}
    assert set(P.ToRunner.__args__) | set(P.FromRunner.__args__) == types


# every field that may be left out -> its default (and a non-default value to round-trip)
DEFAULTS = {
    (P.Announce, "v"): (1, None), (P.Announce, "attempt"): (1, 1000),
    (P.Assign, "v"): (1, None), (P.Assign, "attempt"): (1, 1000),
    (P.AuctionClosed, "v"): (1, None),
    (P.Ping, "v"): (1, None),
    (P.Shutdown, "v"): (1, None), (P.Shutdown, "reason"): (msgspec.UNSET, "r" * 200),
    (P.Hello, "v"): (1, None),
    (P.Bid, "v"): (1, None),
    (P.Decline, "v"): (1, None), (P.Decline, "reason"): ("", "r" * 200),
    (P.Started, "v"): (1, None),
    (P.Result, "v"): (1, None),
    (P.Result, "output"): ("", "o" * P.MAX_OUTPUT),
    (P.Result, "elapsed_s"): (0.0, 2.5),
    (P.Result, "usage"): (None, P.Usage(model="llama3")),
    (P.Result, "permanent"): (False, True),
    (P.Pong, "v"): (1, None),
    (P.Bye, "v"): (1, None), (P.Bye, "reason"): ("", "r" * 200),
    (P.Usage, "prompt_tokens"): (0, 2**62), (P.Usage, "output_tokens"): (0, 2**62),
    (P.Usage, "first_token_s"): (None, 0.5), (P.Usage, "server_s"): (None, 1.25),
    (P.Usage, "load_s"): (None, 0.0), (P.Usage, "eval_s"): (None, 3.0),
}
# the smallest valid message of each type: its required fields only
REQUIRED = {
    P.Announce: {"task_id": 1, "description": ""},
    P.Assign: {"task_id": 1, "description": ""},
    P.AuctionClosed: {"task_id": 1, "winner": None, "price_sats": None},
    P.Ping: {"seq": 0},
    P.Shutdown: {},
    P.Hello: {"agent_id": "a", "persona": "p", "pid": 0},
    P.Bid: {"task_id": 1, "sats": 1, "on_spec": False},
    P.Decline: {"task_id": 1},
    P.Started: {"task_id": 1},
    P.Result: {"task_id": 1, "ok": True},
    P.Pong: {"seq": 0},
    P.Bye: {},
    P.Usage: {"model": "m"},
}


def test_the_optional_fields_are_the_golden_ones():
    found = {(cls, f.name): f.default for cls in REQUIRED for f in msgspec.structs.fields(cls)
             if f.default is not msgspec.NODEFAULT}
    assert found == {k: default for k, (default, _) in DEFAULTS.items()}
    required = {cls: [f.name for f in msgspec.structs.fields(cls) if f.required]
                for cls in REQUIRED}
    assert required == {cls: list(fields) for cls, fields in REQUIRED.items()}


def _line(cls, fields: dict) -> bytes:
    """A line with exactly ``fields`` (and the type tag, unless a bare struct)."""
    tag = cls.__struct_config__.tag
    return msgspec.json.encode({"type": tag, **fields} if tag else fields)


def _dec(cls, line: bytes):
    if cls is P.Usage:
        return msgspec.json.decode(line, type=P.Usage)
    return (P.decode_coordinator if cls in TO_RUNNER else P.decode_runner)(line)


@pytest.mark.parametrize(("cls", "name"), list(DEFAULTS), ids=lambda x: getattr(x, "__name__",
                                                                                  x))
def test_an_absent_optional_field_takes_its_default_and_a_set_one_round_trips(cls, name):
    default, value = DEFAULTS[cls, name]
    absent = _dec(cls, _line(cls, REQUIRED[cls]))
    assert type(absent) is cls
    assert getattr(absent, name) == default
    if value is None:       # "v": the only value is 1, and any other is refused
        assert _dec(cls, _line(cls, {**REQUIRED[cls], "v": 1})) == absent
        with pytest.raises(ProtocolError):
            _dec(cls, _line(cls, {**REQUIRED[cls], "v": 2}))
        return
    wire = value if not isinstance(value, msgspec.Struct) else msgspec.to_builtins(value)
    present = _dec(cls, _line(cls, {**REQUIRED[cls], name: wire}))
    assert getattr(present, name) == value
    assert _dec(cls, msgspec.json.encode(present)) == present


@pytest.mark.parametrize(("fields", "ok"), [
    ({"task_id": 1, "ok": True, "output": "o" * P.MAX_OUTPUT}, True),
    ({"task_id": 1, "ok": True, "output": "o" * (P.MAX_OUTPUT + 1)}, False),
    ({"task_id": 2**62, "ok": True}, True),
    ({"task_id": 2**62 + 1, "ok": True}, False),
    ({"task_id": 0, "ok": True}, False),
    ({"task_id": 1, "ok": True, "elapsed_s": -0.001}, False),
])
def test_result_bounds(fields, ok):
    line = _line(P.Result, fields)
    if ok:
        assert P.decode_runner(line).task_id == fields["task_id"]
    else:
        with pytest.raises(ProtocolError):
            P.decode_runner(line)


@pytest.mark.parametrize(("cls", "fields", "ok"), [
    (P.Bid, {"task_id": 1, "sats": 10_000, "on_spec": True}, True),
    (P.Bid, {"task_id": 1, "sats": 10_001, "on_spec": True}, False),
    (P.Bid, {"task_id": 1, "sats": 0, "on_spec": True}, False),
    (P.Hello, {"agent_id": "a" * 64, "persona": "p", "pid": 2**31 - 1}, True),
    (P.Hello, {"agent_id": "a" * 65, "persona": "p", "pid": 1}, False),
    (P.Hello, {"agent_id": "", "persona": "p", "pid": 1}, False),
    (P.Hello, {"agent_id": "a", "persona": "p", "pid": 2**31}, False),
    (P.Announce, {"task_id": 1, "description": "d" * 8_000, "attempt": 1000}, True),
    (P.Announce, {"task_id": 1, "description": "d" * 8_001}, False),
    (P.Announce, {"task_id": 1, "description": "d", "attempt": 1001}, False),
    (P.Announce, {"task_id": 1, "description": "d", "attempt": 0}, False),
    (P.Ping, {"seq": 2**63 - 1}, True),
    (P.Ping, {"seq": -1}, False),
    (P.Decline, {"task_id": 1, "reason": "r" * 201}, False),
    (P.Shutdown, {"reason": "r" * 201}, False),
    (P.Bye, {"reason": "r" * 201}, False),
])
def test_field_bounds(cls, fields, ok):
    line = _line(cls, fields)
    if ok:
        assert type(_dec(cls, line)) is cls
    else:
        with pytest.raises(ProtocolError):
            _dec(cls, line)
