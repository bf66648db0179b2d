"""The wire between coordinator and runners: one JSON object per line with ``"v": 1`` and a
``"type"`` tag, decoded into typed structs (`decode_runner`, `decode_coordinator`) that carry
their own validation, or a `ProtocolError`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from timmy.errors import ConfigError, ProtocolError

VERSION = 1
MAX_DESCRIPTION = 8_000          # characters in a task description
MAX_OUTPUT = 128 * 1024          # characters in a task result
MAX_LINE = 1024 * 1024           # bytes in one line; longer lines are dropped as garbage

TaskId = Annotated[int, Meta(ge=1, le=2**62)]
AgentId = Annotated[str, Meta(min_length=1, max_length=64)]
Sats = Annotated[int, Meta(ge=1, le=10_000)]
Seq = Annotated[int, Meta(ge=0, le=2**63 - 1)]
Text = Annotated[str, Meta(max_length=MAX_DESCRIPTION)]
Seconds = Annotated[float, Meta(ge=0)]
Count = Annotated[int, Meta(ge=0, le=2**62)]
# Stored in agents.pid, a 32-bit INTEGER on a server database: a bigger one would make the
# database refuse the agent's row (no real system hands out pids past 2**31 - 1).
Pid = Annotated[int, Meta(ge=0, le=2**31 - 1)]


class Message(
    msgspec.Struct, frozen=True, kw_only=True, tag_field="type", forbid_unknown_fields=True
):
    v: Literal[1] = 1


# coordinator -> runner
class Announce(Message, tag="announce"):
    task_id: TaskId
    description: Text
    attempt: Annotated[int, Meta(ge=1, le=1000)] = 1


class Assign(Message, tag="assign"):
    task_id: TaskId
    description: Text
    attempt: Annotated[int, Meta(ge=1, le=1000)] = 1


class AuctionClosed(Message, tag="auction_closed"):
    task_id: TaskId
    winner: AgentId | None
    price_sats: Sats | None


class Ping(Message, tag="ping"):
    seq: Seq


class Shutdown(Message, tag="shutdown"):
    """Exit now. ``reason`` (optional, added after version 1 shipped; left out of the line
    when not given) says why, for a remote runner to print before it exits."""

    reason: Annotated[str, Meta(max_length=200)] | msgspec.UnsetType = msgspec.UNSET


# runner -> coordinator
class Hello(Message, tag="hello"):
    agent_id: AgentId
    persona: AgentId
    pid: Pid


class Bid(Message, tag="bid"):
    task_id: TaskId
    sats: Sats
    on_spec: bool


class Decline(Message, tag="decline"):
    task_id: TaskId
    reason: Annotated[str, Meta(max_length=200)] = ""


class Started(Message, tag="started"):
    task_id: TaskId


class Usage(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What a model-backed execution (Ollama) cost: the model, its tokens, where time went.

    ``first_token_s`` is measured by the runner (request sent -> first piece of the answer);
    the ``*_s`` durations after it are the server's own figures (Ollama reports them in
    nanoseconds): ``server_s`` the whole request, ``load_s`` loading the model, ``eval_s``
    generating the ``output_tokens``.
    """

    model: Annotated[str, Meta(min_length=1, max_length=200)]
    prompt_tokens: Count = 0
    output_tokens: Count = 0
    first_token_s: Seconds | None = None
    server_s: Seconds | None = None
    load_s: Seconds | None = None
    eval_s: Seconds | None = None


class Result(Message, tag="result"):
    """The outcome of a task a runner won.

    ``usage`` and ``permanent`` came after version 1 shipped; both are optional, so a
    runner that sends neither still speaks the same protocol. ``usage`` is set by executors
    that call a model (tokens and timing, see `Usage`); the coordinator puts it in the
    task's ``task_completed`` / ``task_failed`` event. ``permanent`` marks a failure that
    would repeat on any runner (a model the server has not pulled): the coordinator then
    fails the task at once instead of auctioning it again.
    """

    task_id: TaskId
    ok: bool
    output: Annotated[str, Meta(max_length=MAX_OUTPUT)] = ""
    elapsed_s: Seconds = 0.0
    usage: Usage | None = None
    permanent: bool = False


class Pong(Message, tag="pong"):
    seq: Seq


class Bye(Message, tag="bye"):
    """The runner is leaving on purpose (a remote runner's Ctrl-C or SIGTERM), its
    connection ending next: what it held is auctioned again without using an attempt, as
    for a runner the swarm stopped. Added after version 1 shipped; an older coordinator
    counts it as one bad line."""

    reason: Annotated[str, Meta(max_length=200)] = ""


# a runner's start-up settings
class RunnerSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Everything a runner needs to start: who it is, how it bids, how it executes.

    A local runner gets it as ``python -m timmy.engine.runner --spec JSON`` (the flags
    ``--agent-id``, ``--persona``... build the same spec by hand); a remote runner gets it
    as the fields of its `Welcome`. ``persona`` is a built-in persona id or the fields
    `timmy.market.personas.persona_from_dict` reads. ``model``, ``ollama_host`` and
    ``ollama_timeout`` are for the "ollama" executor (None: its defaults and environment
    variables); ``ollama_host`` is left out of a welcome (the service's server address
    means nothing on the runner's machine). ``stats`` are the learned counters to start
    from (`timmy.market.bidding.BidStats.to_dict`; None: none learned yet).
    """

    agent_id: AgentId
    persona: Annotated[str, Meta(min_length=1, max_length=64)] | dict[str, Any]
    seed: Annotated[int, Meta(ge=-(2**63), le=2**63 - 1)] = 0
    executor: Annotated[str, Meta(min_length=1, max_length=64)] = "simulated"
    task_seconds: Annotated[float, Meta(ge=0, le=3600)] = 0.05
    model: Annotated[str, Meta(min_length=1, max_length=200)] | None = None
    ollama_host: Annotated[str, Meta(max_length=2048)] | msgspec.UnsetType | None = msgspec.UNSET
    ollama_timeout: Annotated[float, Meta(gt=0)] | None = None
    stats: dict[str, Any] | None = None


class Welcome(RunnerSpec, frozen=True, kw_only=True, forbid_unknown_fields=False):
    """The service's answer to a remote runner's ``runner`` request: its `RunnerSpec`
    (``persona`` always as fields, ``stats`` always given) and the connection's settings.
    Unknown fields are ignored, so a newer service can say more; the field names are the
    wire protocol's (a runner of any version reads them)."""

    ping_interval: Seconds
    ping_timeout: Seconds
    rejoin_key: str | None = None     # to send back as ``key`` when dialling in again

    def spec(self, **changes: Any) -> RunnerSpec:
        """The runner's spec, with ``changes`` (what the runner's command line said
        otherwise; None values are left as the service said)."""
        fields = {f: v for f, v in msgspec.to_builtins(self).items()
                  if f in RunnerSpec.__struct_fields__}
        fields.update({k: v for k, v in changes.items() if v is not None})
        return convert_spec(fields, "the service's welcome")


def encode_spec(spec: RunnerSpec) -> str:
    """A spec as the JSON text of one ``--spec`` argument."""
    return _encoder.encode(spec).decode()


def convert_spec(data: Any, where: str = "--spec") -> RunnerSpec:
    """A `RunnerSpec` from decoded JSON (a dict), or `ConfigError` naming ``where``."""
    try:
        return msgspec.convert(data, RunnerSpec)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{where} is not a runner spec: {exc}", hint=SPEC_HINT) from None


def decode_spec(text: str | bytes, where: str = "--spec") -> RunnerSpec:
    """A `RunnerSpec` from its JSON text, or `ConfigError` naming ``where``."""
    try:
        return msgspec.json.decode(text, type=RunnerSpec)
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeError, RecursionError) as exc:
        raise ConfigError(f"{where} is not a runner spec: {exc}", hint=SPEC_HINT) from None


SPEC_HINT = ('a JSON object such as {"agent_id": "forge-1", "persona": "forge", "seed": 1} '
             "(fields: " + ", ".join(RunnerSpec.__struct_fields__) + "); or start the runner "
             "with flags: --agent-id ID --persona forge")


ToRunner = Announce | Assign | AuctionClosed | Ping | Shutdown
FromRunner = Hello | Bid | Decline | Started | Result | Pong | Bye

_encoder = msgspec.json.Encoder()
_from_runner = msgspec.json.Decoder(FromRunner)
_to_runner = msgspec.json.Decoder(ToRunner)


def encode(msg: Message) -> bytes:
    """One message as one line (with the newline)."""
    return _encoder.encode(msg) + b"\n"


def _decode(decoder: msgspec.json.Decoder, line: bytes | str):
    if len(line) > MAX_LINE:
        raise ProtocolError(
            f"line of {len(line)} bytes exceeds the {MAX_LINE}-byte limit",
            hint="send one JSON message per line, under 1 MiB",
        )
    try:
        return decoder.decode(line)
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeError, RecursionError) as exc:
        raise ProtocolError(
            f"bad message: {exc}",
            hint='each line must be one JSON object with "v": 1 and a known "type"',
        ) from None


def decode_runner(line: bytes | str) -> FromRunner:
    """Decode a runner's line into a typed message, or raise `ProtocolError`."""
    return _decode(_from_runner, line)


def decode_coordinator(line: bytes | str) -> ToRunner:
    """Decode a coordinator's line into a typed message, or raise `ProtocolError`."""
    return _decode(_to_runner, line)
