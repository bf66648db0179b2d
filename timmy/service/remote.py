"""``timmy runner --connect``: a runner on another machine that dials in to a swarm service
with the runner token and then speaks the runner wire protocol over TCP, answered by the
same `timmy.engine.runner.Runner`; it imports nothing heavy.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from timmy.engine import protocol as p
from timmy.engine.protocol import MAX_LINE, Welcome
from timmy.engine.runner import Runner
from timmy.errors import ProtocolError, SwarmClosed, TimmyError
from timmy.market.bidding import BidStats
from timmy.service.wire import (
    AuthenticationError,
    ErrorInfo,
    Request,
    Response,
    ServiceBusy,
    ServiceError,
    ServiceUnavailable,
    encode,
    parse_url,
)

BACKOFF = (0.05, 2.0)      # first and longest pause between attempts to dial in
HANDSHAKE_TIMEOUT = 10.0   # seconds to connect and be answered
# Refusals worth retrying: the service is full, or closing (and may be back).
TRANSIENT = {"ServiceBusy": ServiceBusy, "SwarmClosed": SwarmClosed}
RETRY = (ServiceUnavailable, ServiceBusy, SwarmClosed)


@dataclass
class Options:
    """What ``timmy runner`` was asked for."""

    url: str
    token: str
    persona: str
    agent_id: str | None = None
    # `RunnerSpec` fields to run with instead of the swarm's (executor, seed, task_seconds,
    # model, ollama_host, ollama_timeout): one left out, or None, is as the welcome says.
    spec: dict[str, Any] = field(default_factory=dict)
    max_retries: int | None = None          # failed attempts in a row; None: forever
    connect_timeout: float = HANDSHAKE_TIMEOUT


class RemoteRunner(Runner):
    """A `Runner` whose output is the connection of the moment.

    ``attach`` and ``detach`` switch it under the write lock and bump the generation, so a
    task still executing when its connection dropped never writes to the next one (not
    even to a socket that reuses the old descriptor number).
    """

    _sock: socket.socket | None = None

    def attach(self, sock: socket.socket, stats: BidStats) -> None:
        with self._lock:
            self.generation += 1
            self._sock, self._out_fd = sock, sock.fileno()
            self.stats, self.shutdown = stats, None
            self.quotes.clear()

    def detach(self) -> None:
        with self._lock:
            self.generation += 1
            self._sock, self._out_fd = None, -1

    def leave(self, reason: str) -> None:
        """Say ``bye`` on the connection, if it takes it at once: what this runner held is
        then auctioned again without using an attempt. The newline first ends a line an
        interrupt may have cut short (the coordinator skips an empty one)."""
        data = b"\n" + p.encode(p.Bye(reason=reason))
        with self._lock:
            if self._sock is not None:
                with contextlib.suppress(OSError):
                    self._sock.send(data, socket.MSG_DONTWAIT)

    def write(self, data: bytes, generation: int | None = None) -> None:
        try:
            super().write(data, generation)
        except OSError:             # the connection is gone: make the reading side see it
            sock = self._sock
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


def handshake(opts: Options, agent_id: str | None, stats: BidStats | None,
              key: str | None = None) -> tuple[socket.socket, Welcome, bytes]:
    """Connect and ask to join; returns the socket, the service's `Welcome` and any bytes
    read past it. ``key``: the ``rejoin_key`` of the last welcome, which lets this runner
    replace its own connection if the service still holds it. Raises `ServiceUnavailable`
    (or OSError) when it cannot get through and the `TimmyError` the service answered when
    it refused."""
    host, port = parse_url(opts.url)
    try:
        sock = socket.create_connection((host, port), timeout=opts.connect_timeout)
    except OSError as exc:
        raise ServiceUnavailable(f"no swarm service answers at {opts.url}: "
                                 f"{exc.strerror or exc}",
                                 hint="is `timmy serve` running there, and is the address "
                                      "reachable from here?") from None
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        args: dict = {"persona": opts.persona}
        if agent_id is not None:
            args["agent_id"] = agent_id
        if stats is not None and stats.auctions:
            args["stats"] = stats.to_dict()
        if key is not None and agent_id is not None:
            args["key"] = key
        sock.sendall(encode(Request(id=1, token=opts.token, op="runner", args=args)))
        buf = b""
        while b"\n" not in buf:
            chunk = sock.recv(1 << 16)
            if not chunk:
                raise ServiceUnavailable(f"{opts.url} closed the connection before answering",
                                         hint="is that address a timmy service?")
            buf += chunk
            if len(buf) > MAX_LINE:
                raise ProtocolError(f"{opts.url} answered with an over-long line",
                                    hint="is that address a timmy service?")
        line, _, rest = buf.partition(b"\n")
        try:
            response = msgspec.json.decode(line, type=Response)
            if not response.ok:
                raise _refusal(response.error or ErrorInfo("ServiceError", "refused"))
            welcome = msgspec.convert(response.result, Welcome)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise ProtocolError(f"bad answer from {opts.url}: {exc}",
                                hint="is that address a timmy service of this version?") \
                from None
        sock.settimeout(None)       # blocking: the runner reads the descriptor itself
        # Silence past the ping timeout (the service pings every ping_interval) is a lost
        # connection: the read fails with EAGAIN and the runner dials in again.
        t = welcome.ping_timeout
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO,
                        struct.pack("ll", int(t), int(t % 1 * 1e6)))
        return sock, welcome, rest
    except BaseException:
        sock.close()
        raise


def _refusal(info: ErrorInfo) -> TimmyError:
    if info.type == "AuthenticationError":
        return AuthenticationError(info.message, hint="pass the service's runner token (the "
                                   ".runner.token file `timmy serve` writes beside its "
                                   "database): --token, --token-file, or TIMMY_TOKEN")
    cls = TRANSIENT.get(info.type, ServiceError)
    return cls(f"the service refused: {info.message}", hint=info.hint)


def make_runner(opts: Options, welcome: Welcome) -> RemoteRunner:
    """The runner for the agent the service admitted: the welcome's spec (its persona, the
    swarm's seed, executor and task time) with what the command line said otherwise."""
    spec = welcome.spec(**opts.spec)
    return RemoteRunner.from_spec(spec, out_fd=-1,
                                  where=("the service's persona", "the service's stats"))


def _print(text: str, err: bool = False) -> None:
    from timmy.textsafe import clean  # what a service says is shown, never acted on

    print(clean(text), file=sys.stderr if err else sys.stdout, flush=True)


def run(opts: Options, say: Callable[..., None] = _print) -> int:
    """Dial in, serve, dial in again, until told to stop; returns the exit code.

    0: shut down by the service, or interrupted (Ctrl-C, SIGTERM). 1: gave up after
    ``max_retries`` failed attempts in a row. 2: refused (wrong token, unknown persona,
    an agent_id that is taken) or misconfigured: retrying would not help.

    ``timmy runner --connect tcp://HOST:7341 --token-file F --persona forge --agent-id forge-r1``.
    The runner opens a TCP connection to the service's one port and sends one control
    request, ``{"op": "runner", "token": ..., "args": {"persona": ...}}`` (`handshake`),
    with the service's runner token (``<db>.runner.token``; the admin token works too). The
    answer (`Welcome`) names the agent and carries the persona, the swarm's seed and
    executor and the counters learned so far.

    When the connection drops (the network, the service restarting), the service
    re-auctions what the runner held and the runner dials in again with backoff (0.05 s
    doubling to 2 s), as the same agent: it gets back the counters the service mirrored,
    so its bids go on where they left off (it sends back the ``rejoin_key`` of its last
    welcome: with a runner token, only that key may replace a connection the service still
    holds). Work won over the lost connection is dropped, never answered on the new one.
    A connection that stays silent past the swarm's ping timeout counts as lost. A
    ``shutdown`` from the service (``swarm.stop(agent_id)``, or a newer connection of the
    same agent) ends the runner; so do Ctrl-C and SIGTERM, after a ``bye`` that tells the
    service it left on purpose: what it held is auctioned again without using an attempt.
    """
    restore = _sigterm_interrupts()
    runner: RemoteRunner | None = None
    agent_id = opts.agent_id
    key: str | None = None       # the rejoin_key of the last welcome (a service that gives one)
    delay, failures = BACKOFF[0], 0
    name = lambda: agent_id or opts.persona  # noqa: E731
    try:
        while True:
            try:
                sock, welcome, rest = handshake(opts, agent_id,
                                                runner.stats if runner else None, key)
            except (TimmyError, OSError) as exc:
                if isinstance(exc, TimmyError) and not isinstance(exc, RETRY):
                    say(f"timmy runner {name()}: {type(exc).__name__}: {exc.message}",
                        err=True)
                    if exc.hint:
                        say(f"hint: {exc.hint}", err=True)
                    return 2        # refused: a wrong token (a PermissionError) included
                failures += 1
                if opts.max_retries is not None and failures > opts.max_retries:
                    say(f"timmy runner {name()}: giving up after {failures} failed attempts: "
                        f"{_why(exc)}", err=True)
                    return 1
                say(f"timmy runner {name()}: {_why(exc)}; retrying in {delay:.2f}s")
                time.sleep(delay)
                delay = min(delay * 2, BACKOFF[1])
                continue
            delay, failures = BACKOFF[0], 0
            try:
                if runner is None:
                    runner = make_runner(opts, welcome)
                stats = BidStats.from_dict(welcome.stats or {}, "the service's stats")
            except TimmyError as exc:
                sock.close()
                say(f"timmy runner {name()}: {type(exc).__name__}: {exc.message}", err=True)
                if exc.hint:
                    say(f"hint: {exc.hint}", err=True)
                return 2
            agent_id, key = welcome.agent_id, welcome.rejoin_key
            runner.attach(sock, stats)
            say(f"timmy runner {agent_id}: joined {opts.url} (persona {runner.persona.id}, "
                f"executor {runner.spec.executor}, seed {runner.seed}, "
                f"{stats.auctions} auctions learned)")
            try:
                runner.serve(sock.fileno(), rest)
                lost = "the service closed the connection"
            except BlockingIOError:
                lost = f"nothing heard for {welcome.ping_timeout:g}s"
            except OSError as exc:
                lost = exc.strerror or str(exc)
            except KeyboardInterrupt:
                runner.leave("interrupted")
                raise
            finally:
                runner.detach()
                sock.close()
            if runner.shutdown is not None:
                why = runner.shutdown.reason or "asked to stop"
                say(f"timmy runner {agent_id}: shut down by the service ({why})")
                return 0
            say(f"timmy runner {agent_id}: connection lost ({lost}); dialling in again")
    except KeyboardInterrupt:
        say(f"timmy runner {name()}: interrupted; left (what it held is auctioned again, "
            "without using an attempt)")
        return 0
    finally:
        restore()


def _why(exc: BaseException) -> str:
    if isinstance(exc, TimmyError):
        return exc.message
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def _sigterm_interrupts() -> Callable[[], None]:
    """Make SIGTERM end `run` as Ctrl-C does (main thread only); returns the undo."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, interrupt)
    return lambda: signal.signal(signal.SIGTERM, old)
