"""The wire: every message round-trips; every kind of garbage is a `ProtocolError`, only that."""

from __future__ import annotations

import json

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from timmy.engine import protocol as p
from timmy.errors import ProtocolError, TimmyError

TO_RUNNER = [
    p.Announce(task_id=1, description="fix the bug in the api client"),
    p.Announce(task_id=2**62, description="x" * p.MAX_DESCRIPTION, attempt=1000),
    p.Announce(task_id=5, description='two\nlines, "quotes", \\ ünïcode ✓ \u2028 \x00', attempt=2),
    p.Announce(task_id=6, description=""),
    p.Assign(task_id=1, description="fix the bug"),
    p.Assign(task_id=77, description="render a video\r\n", attempt=3),
    p.AuctionClosed(task_id=1, winner="forge-1", price_sats=30),
    p.AuctionClosed(task_id=1, winner=None, price_sats=None),
    p.Ping(seq=0),
    p.Ping(seq=123456789),
    p.Shutdown(),
]
FROM_RUNNER = [
    p.Hello(agent_id="forge-1", persona="forge", pid=4121),
    p.Hello(agent_id="a" * 64, persona="p" * 64, pid=1),
    p.Bid(task_id=1, sats=1, on_spec=True),
    p.Bid(task_id=2**62, sats=10_000, on_spec=False),
    p.Decline(task_id=3, reason="busy"),
    p.Decline(task_id=3),
    p.Started(task_id=9),
    p.Result(task_id=9, ok=True, output="done: ✓\nnext line", elapsed_s=0.25),
    p.Result(task_id=9, ok=False, output="x" * p.MAX_OUTPUT, elapsed_s=0.0),
    p.Result(task_id=9, ok=True),
    p.Pong(seq=7),
    p.Bye(reason="interrupted"),
    p.Bye(),
]
TAGS_TO_RUNNER = {"announce", "assign", "auction_closed", "ping", "shutdown"}
TAGS_FROM_RUNNER = {"hello", "bid", "decline", "started", "result", "pong", "bye"}


def label(msg: p.Message) -> str:
    return type(msg).__name__


# -- round trips -----------------------------------------------------------------------------


def test_every_message_type_is_covered():
    assert {type(m) for m in TO_RUNNER} == set(p.ToRunner.__args__)
    assert {type(m) for m in FROM_RUNNER} == set(p.FromRunner.__args__)


@pytest.mark.parametrize("msg", TO_RUNNER, ids=label)
def test_coordinator_message_round_trips(msg):
    line = p.encode(msg)
    decoded = p.decode_coordinator(line)
    assert type(decoded) is type(msg)
    assert decoded == msg
    assert p.decode_coordinator(line.decode()) == msg  # str lines too
    assert p.decode_coordinator(line.rstrip(b"\n")) == msg


@pytest.mark.parametrize("msg", FROM_RUNNER, ids=label)
def test_runner_message_round_trips(msg):
    line = p.encode(msg)
    decoded = p.decode_runner(line)
    assert type(decoded) is type(msg)
    assert decoded == msg
    assert p.decode_runner(line.decode()) == msg
    assert p.decode_runner(line.rstrip(b"\n")) == msg


@pytest.mark.parametrize("msg", TO_RUNNER + FROM_RUNNER, ids=label)
def test_encoded_message_is_one_json_line_with_version_and_type(msg):
    line = p.encode(msg)
    assert line.endswith(b"\n")
    assert line.count(b"\n") == 1, "a newline inside a field must be escaped"
    assert b"\r" not in line
    obj = json.loads(line)
    assert obj["v"] == 1
    assert obj["type"] in TAGS_TO_RUNNER | TAGS_FROM_RUNNER
    assert len(line) <= p.MAX_LINE


def test_wire_field_names_follow_the_design():
    assert json.loads(p.encode(p.Bid(task_id=4, sats=30, on_spec=True))) == {
        "v": 1,
        "type": "bid",
        "task_id": 4,
        "sats": 30,
        "on_spec": True,
    }
    assert json.loads(p.encode(p.Hello(agent_id="forge-1", persona="forge", pid=12))) == {
        "v": 1,
        "type": "hello",
        "agent_id": "forge-1",
        "persona": "forge",
        "pid": 12,
    }
    assert json.loads(p.encode(p.Shutdown())) == {"v": 1, "type": "shutdown"}


def test_fields_may_come_in_any_order():
    line = b'{"seq": 3, "type": "pong", "v": 1}'
    assert p.decode_runner(line) == p.Pong(seq=3)


@pytest.mark.parametrize("msg", TO_RUNNER, ids=label)
def test_runner_decoder_rejects_coordinator_messages(msg):
    with pytest.raises(ProtocolError):
        p.decode_runner(p.encode(msg))


@pytest.mark.parametrize("msg", FROM_RUNNER, ids=label)
def test_coordinator_decoder_rejects_runner_messages(msg):
    with pytest.raises(ProtocolError):
        p.decode_coordinator(p.encode(msg))


def test_messages_are_frozen():
    with pytest.raises(AttributeError):
        p.Bid(task_id=1, sats=2, on_spec=True).sats = 1  # type: ignore[misc]


def test_largest_valid_result_fits_in_one_line():
    # The runner truncates output to MAX_OUTPUT *characters*; the line limit is in *bytes*.
    worst = p.Result(task_id=2**62, ok=True, output="\x00" * p.MAX_OUTPUT, elapsed_s=1e300)
    line = p.encode(worst)
    assert len(line) <= p.MAX_LINE, (
        f"BUG timmy.engine.protocol: a valid Result encodes to {len(line)} bytes, over MAX_LINE="
        f"{p.MAX_LINE}, so the coordinator would drop a legitimate result as garbage "
        "(MAX_OUTPUT counts characters; one char can take 6 bytes escaped)"
    )


@given(
    st.integers(1, 2**62),
    st.text(max_size=200),
    st.integers(1, 1000),
    st.integers(1, 10_000),
    st.booleans(),
    st.floats(min_value=0, allow_nan=False, allow_infinity=False),
)
def test_any_valid_field_values_round_trip(task_id, text, attempt, sats, flag, seconds):
    for msg in (
        p.Announce(task_id=task_id, description=text, attempt=attempt),
        p.Assign(task_id=task_id, description=text, attempt=attempt),
        p.AuctionClosed(task_id=task_id, winner=text[:64] or None, price_sats=sats),
    ):
        assert p.decode_coordinator(p.encode(msg)) == msg
    for msg in (
        p.Bid(task_id=task_id, sats=sats, on_spec=flag),
        p.Decline(task_id=task_id, reason=text),
        p.Result(task_id=task_id, ok=flag, output=text, elapsed_s=seconds),
    ):
        assert p.decode_runner(p.encode(msg)) == msg


# -- garbage -----------------------------------------------------------------------------------


def obj(**fields) -> bytes:
    return json.dumps({"v": 1, **fields}).encode()


def raw(text: str) -> bytes:
    return text.encode()


DEEP = 100_000
GARBAGE_FROM_RUNNER = {
    # malformed JSON
    "empty": b"",
    "blank": b"   \t ",
    "not_json": b"hello there",
    "truncated": b'{"v": 1, "type": "pong", "seq": 1',
    "trailing_comma": b'{"v": 1, "type": "pong", "seq": 1,}',
    "single_quotes": b"{'v': 1, 'type': 'pong', 'seq': 1}",
    "two_objects": b'{"v":1,"type":"pong","seq":1}{"v":1,"type":"pong","seq":2}',
    "nan": b'{"v":1,"type":"result","task_id":1,"ok":true,"elapsed_s":NaN}',
    "nul_byte": b"\x00",
    "null": b"null",
    "list": b'[{"v":1,"type":"pong","seq":1}]',
    "number": b"42",
    "string": b'"pong"',
    "empty_object": b"{}",
    # invalid UTF-8
    "invalid_utf8_bare": b"\xff\xfe\xfd",
    "invalid_utf8_in_string": b'{"v":1,"type":"hello","agent_id":"\xff","persona":"x","pid":1}',
    "overlong_utf8_in_string": b'{"v":1,"type":"decline","task_id":1,"reason":"\xc0\xaf"}',
    "encoded_surrogate_in_string": b'{"v":1,"type":"decline","task_id":1,"reason":"\xed\xa0\x80"}',
    "escaped_lone_surrogate": b'{"v":1,"type":"decline","task_id":1,"reason":"\\ud800"}',
    # wrong types
    "task_id_string": obj(type="bid", task_id="1", sats=5, on_spec=True),
    "task_id_float": obj(type="bid", task_id=1.0, sats=5, on_spec=True),
    "sats_float": obj(type="bid", task_id=1, sats=1.5, on_spec=True),
    "on_spec_string": obj(type="bid", task_id=1, sats=5, on_spec="yes"),
    "on_spec_int": obj(type="bid", task_id=1, sats=5, on_spec=1),
    "seq_bool": obj(type="pong", seq=True),
    "pid_null": obj(type="hello", agent_id="a", persona="b", pid=None),
    "agent_id_number": obj(type="hello", agent_id=5, persona="b", pid=1),
    "ok_string": obj(type="result", task_id=1, ok="true"),
    "elapsed_string": obj(type="result", task_id=1, ok=True, elapsed_s="0"),
    "type_number": obj(type=5, seq=1),
    "v_string": raw('{"v":"1","type":"pong","seq":1}'),
    "v_bool": raw('{"v":true,"type":"pong","seq":1}'),
    # missing fields
    "no_type": obj(seq=1),
    "bid_without_sats": obj(type="bid", task_id=1, on_spec=True),
    "bid_without_task": obj(type="bid", sats=3, on_spec=True),
    "hello_without_pid": obj(type="hello", agent_id="a", persona="b"),
    "result_without_ok": obj(type="result", task_id=1),
    # unknown type
    "unknown_type": obj(type="bogus", seq=1),
    "type_wrong_case": obj(type="Pong", seq=1),
    "coordinator_type": obj(type="announce", task_id=1, description="x"),
    # unknown fields
    "unknown_field": obj(type="pong", seq=1, extra=1),
    "unknown_field_null": obj(type="started", task_id=1, note=None),
    # version
    "v2": raw('{"v":2,"type":"pong","seq":1}'),
    "v0": raw('{"v":0,"type":"pong","seq":1}'),
    "v_null": raw('{"v":null,"type":"pong","seq":1}'),
    # out of range and huge numbers
    "task_id_zero": obj(type="started", task_id=0),
    "task_id_negative": obj(type="started", task_id=-1),
    "task_id_above_2_62": obj(type="started", task_id=2**62 + 1),
    "task_id_huge": obj(type="started", task_id=10**30),
    "sats_zero": obj(type="bid", task_id=1, sats=0, on_spec=True),
    "sats_above_limit": obj(type="bid", task_id=1, sats=10_001, on_spec=True),
    "sats_huge": obj(type="bid", task_id=1, sats=10**30, on_spec=True),
    "elapsed_negative": obj(type="result", task_id=1, ok=True, elapsed_s=-0.5),
    "elapsed_overflow": raw('{"v":1,"type":"result","task_id":1,"ok":true,"elapsed_s":1e400}'),
    "seq_huge": obj(type="pong", seq=10**30),
    "pid_huge": obj(type="hello", agent_id="a", persona="b", pid=10**30),
    "reason_too_long": obj(type="decline", task_id=1, reason="x" * 201),
    "agent_id_empty": obj(type="hello", agent_id="", persona="b", pid=1),
    "agent_id_too_long": obj(type="hello", agent_id="a" * 65, persona="b", pid=1),
    "output_too_long": obj(type="result", task_id=1, ok=True, output="x" * (p.MAX_OUTPUT + 1)),
    # deep nesting
    "deep_array": b"[" * DEEP + b"]" * DEEP,
    "deep_object_value": raw('{"v":1,"type":"pong","seq":' + "[" * DEEP + "]" * DEEP + "}"),
    "deep_before_tag": raw('{"x":' + "[" * DEEP + "]" * DEEP + ',"type":"pong","v":1,"seq":1}'),
    "deep_unknown_field": raw('{"type":"pong","v":1,"seq":1,"x":' + "[" * DEEP + "]" * DEEP + "}"),
    # over-long lines
    "line_over_1_mib": b" " * (p.MAX_LINE + 1),
    "valid_message_padded_over_1_mib": obj(type="pong", seq=1) + b" " * p.MAX_LINE,
    "huge_string": obj(type="decline", task_id=1, reason="x" * (2 * p.MAX_LINE)),
}

GARBAGE_TO_RUNNER = {
    "runner_type": obj(type="bid", task_id=1, sats=3, on_spec=True),
    "announce_without_description": obj(type="announce", task_id=1),
    "description_too_long": obj(type="announce", task_id=1, description="x" * 8001),
    "description_number": obj(type="announce", task_id=1, description=5),
    "attempt_zero": obj(type="announce", task_id=1, description="x", attempt=0),
    "attempt_too_high": obj(type="assign", task_id=1, description="x", attempt=1001),
    "ping_seq_string": obj(type="ping", seq="1"),
    "ping_seq_huge": obj(type="ping", seq=10**30),
    "shutdown_with_field": obj(type="shutdown", now=True),
    "closed_price_huge": obj(type="auction_closed", task_id=1, winner="a", price_sats=10**30),
    "closed_price_negative": obj(type="auction_closed", task_id=1, winner="a", price_sats=-5),
    "closed_without_winner": obj(type="auction_closed", task_id=1, price_sats=None),
    "invalid_utf8_description": b'{"v":1,"type":"announce","task_id":1,"description":"\xff"}',
    "deep_before_tag": raw('{"x":' + "[" * DEEP + "]" * DEEP + ',"type":"ping","v":1,"seq":1}'),
    "v2": raw('{"v":2,"type":"shutdown"}'),
    "malformed": b'{"type": "shutdown"',
    "line_over_1_mib": obj(type="ping", seq=1) + b"\t" * p.MAX_LINE,
}

STR_GARBAGE = {
    "lone_surrogate": "\ud800",
    "lone_surrogate_in_string": '{"v":1,"type":"decline","task_id":1,"reason":"\udcff"}',
    "str_over_1_mib": " " * (p.MAX_LINE + 1),
}


def assert_rejected(decode, line) -> ProtocolError:
    try:
        msg = decode(line)
    except ProtocolError as exc:
        assert exc.message and exc.hint, "a ProtocolError needs a message and a hint"
        assert isinstance(exc, TimmyError)
        return exc
    except BaseException as exc:  # anything but ProtocolError is a bug in timmy.engine.protocol
        pytest.fail(
            f"BUG timmy.engine.protocol.{decode.__name__}: {type(exc).__name__} escaped instead of "
            f"ProtocolError: {str(exc)[:200]}"
        )
    pytest.fail(f"BUG timmy.engine.protocol.{decode.__name__}: garbage accepted as {msg!r:.200}")


@pytest.mark.parametrize("line", GARBAGE_FROM_RUNNER.values(), ids=GARBAGE_FROM_RUNNER.keys())
def test_garbage_from_runner_raises_protocol_error(line):
    assert_rejected(p.decode_runner, line)


@pytest.mark.parametrize("line", GARBAGE_TO_RUNNER.values(), ids=GARBAGE_TO_RUNNER.keys())
def test_garbage_to_runner_raises_protocol_error(line):
    assert_rejected(p.decode_coordinator, line)


@pytest.mark.parametrize("line", STR_GARBAGE.values(), ids=STR_GARBAGE.keys())
@pytest.mark.parametrize("decode", [p.decode_runner, p.decode_coordinator])
def test_garbage_str_line_raises_protocol_error(decode, line):
    assert_rejected(decode, line)


def test_over_long_line_error_names_the_limit():
    exc = assert_rejected(p.decode_runner, b" " * (p.MAX_LINE + 1))
    assert str(p.MAX_LINE) in exc.message


def test_line_of_exactly_the_limit_is_accepted():
    msg = obj(type="pong", seq=1)
    line = msg + b" " * (p.MAX_LINE - len(msg))
    assert len(line) == p.MAX_LINE
    assert p.decode_runner(line) == p.Pong(seq=1)


def test_bad_message_error_says_what_was_wrong():
    exc = assert_rejected(p.decode_runner, obj(type="bid", task_id=1, sats=0, on_spec=True))
    assert "sats" in exc.message
    assert '"v": 1' in exc.hint


def test_protocol_error_does_not_chain_the_decoder_exception():
    # The coordinator logs ProtocolError as one line; a chained msgspec traceback adds noise.
    with pytest.raises(ProtocolError) as info:
        p.decode_runner(b"{")
    assert info.value.__cause__ is None
    assert not isinstance(info.value, msgspec.DecodeError)


# -- fuzzing: only ProtocolError may escape ------------------------------------------------------

VALID_LINES = [p.encode(m) for m in FROM_RUNNER + TO_RUNNER if len(p.encode(m)) < 1000]
FIELD_NAMES = sorted(
    {f for t in (*p.ToRunner.__args__, *p.FromRunner.__args__) for f in t.__struct_fields__}
    | {"type", "x"}
)
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=10,
)


def decoded_or_protocol_error(decode, line) -> None:
    try:
        msg = decode(line)
    except ProtocolError:
        return
    except BaseException as exc:
        raise AssertionError(
            f"BUG timmy.engine.protocol.{decode.__name__}: {type(exc).__name__} escaped instead of "
            f"ProtocolError for {line!r:.300}: {exc}"
        ) from exc
    assert isinstance(msg, p.Message)
    assert msg.v == 1


@given(st.binary(max_size=300))
def test_random_bytes_raise_only_protocol_error(data):
    decoded_or_protocol_error(p.decode_runner, data)
    decoded_or_protocol_error(p.decode_coordinator, data)


@given(st.sampled_from(VALID_LINES), st.data())
@settings(suppress_health_check=[HealthCheck.too_slow])
def test_corrupted_valid_lines_raise_only_protocol_error(line, data):
    start = data.draw(st.integers(0, len(line)), label="start")
    stop = data.draw(st.integers(start, min(len(line), start + 4)), label="stop")
    junk = data.draw(st.binary(min_size=0, max_size=4), label="junk")
    corrupted = line[:start] + junk + line[stop:]
    decoded_or_protocol_error(p.decode_runner, corrupted)
    decoded_or_protocol_error(p.decode_coordinator, corrupted)


@given(
    st.dictionaries(st.sampled_from(FIELD_NAMES), json_values, max_size=6),
    st.sampled_from([*sorted(TAGS_TO_RUNNER | TAGS_FROM_RUNNER), "bogus"]),
    st.sampled_from([1, 1, 1, 2, 0, "1", None]),
)
def test_random_json_objects_raise_only_protocol_error(fields, tag, version):
    line = json.dumps({**fields, "type": tag, "v": version}).encode()
    decoded_or_protocol_error(p.decode_runner, line)
    decoded_or_protocol_error(p.decode_coordinator, line)


@given(st.text(max_size=200))
def test_random_text_raises_only_protocol_error(text):
    decoded_or_protocol_error(p.decode_runner, text)
    decoded_or_protocol_error(p.decode_coordinator, text)
