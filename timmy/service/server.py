"""The swarm service: one `AsyncSwarm` served to many TCP connections (`Service`).
It speaks `timmy.service.wire`; `timmy.service.host.serve` starts it, with the token files
of `timmy.service.tokens`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import secrets
import socket
from collections import deque

import msgspec

from timmy.engine.protocol import MAX_LINE, Welcome
from timmy.errors import ProtocolError, TimmyError
from timmy.market.models import Event
from timmy.service.ops import OPS, NoArgs, RunnerArgs, SubscribeArgs, op_args
from timmy.service.wire import (
    AuthenticationError,
    Request,
    Response,
    ServiceBusy,
    ServiceError,
    decode_request,
    encode,
    error_info,
    url_host,
)

log = logging.getLogger(__name__)

MAX_CONNECTIONS = 64          # authenticated connections served at once; more are refused
MAX_HANDSHAKES = 16           # connections at once not yet authenticated; past it the oldest goes
EVENT_BACKLOG = 4096          # live events held per subscriber; past it, caught up from the store
STREAM_SNDBUF = 256 * 1024    # kernel send buffer per subscriber (fixed: no autotuning to 4 MiB)
PAGE = 1000                   # stored events read per query when catching up
SEND_TIMEOUT = 10.0           # seconds a reader may leave its socket full before it is dropped
FIRST_LINE_TIMEOUT = 10.0     # seconds from accept until a request carries the token (handshake)
IDLE_TIMEOUT = 3600.0         # seconds an idle control connection is kept
MAX_STRIKES = 16              # malformed lines before a never-authenticated connection is closed
CLIENT_CHECK = 0.5            # seconds between checks that a client waiting on wait/run is there
LONG_OPS = frozenset({"wait", "run"})   # ops that may block: dropped when their client leaves
CLOSE_ROUNDS = 10             # seconds a stop waits for the connections' handlers to end


# -- the server -------------------------------------------------------------------


class Service:
    """Serves one `AsyncSwarm` to TCP connections (use through `timmy.service.host.serve`).

    What the endpoint refuses, always with an error line that says why, while the
    service stays up: a missing or wrong token (the connection is closed), a line
    that is not a request (answered; the connection stays usable), a line over
    1 MiB (closed), more than ``max_connections`` authenticated connections at once
    (closed), a connection that sends no request with the token within ``first_line_timeout``
    of connecting, whatever else it sends (closed: one deadline for the whole handshake),
    more than ``max_handshakes`` such unauthenticated connections at once (the oldest is
    closed, so garbage senders cannot lock out a client with the token), a connection that
    sends nothing for too long (closed). A subscriber that stops
    reading is disconnected after ``SEND_TIMEOUT`` seconds instead of buffering
    without bound; one that falls behind is caught up from the store.
    """

    def __init__(self, swarm, token: str, max_connections: int = MAX_CONNECTIONS, *,
                 send_timeout: float = SEND_TIMEOUT,
                 first_line_timeout: float = FIRST_LINE_TIMEOUT,
                 max_handshakes: int = MAX_HANDSHAKES,
                 runner_token: str | None = None) -> None:
        self.swarm = swarm
        self._token = token.encode()
        # The token that allows joining as a runner (op "runner") and nothing else.
        self._runner_token = runner_token.encode() if runner_token else None
        self.max_connections = max_connections
        self.max_handshakes = max_handshakes
        self.send_timeout, self.first_line_timeout = send_timeout, first_line_timeout
        self.dropped = 0              # subscribers dropped for not reading
        self.connections = 0
        self.subscribers = 0
        self.refused = 0
        self.requests = 0
        self.runners = 0              # remote runners connected
        self._rejoin_keys: dict[str, str] = {}   # agent_id -> the key of its last welcome
        self.mmap_threshold: int | None = None  # reported only (`timmy.service.heap`)
        self._handlers: dict[asyncio.Task, asyncio.StreamWriter] = {}
        self._closing = False         # `close` ends the handlers: their cancellation is ours
        # Handlers of connections still in the handshake, oldest first, and of authenticated
        # ones: two caps, so connections that never authenticate cannot starve the others.
        self._pending: dict[asyncio.Task, asyncio.StreamWriter] = {}
        self._evicted: set[asyncio.Task] = set()
        self._live: set[asyncio.Task] = set()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One connection, from accept to close; never raises."""
        task = asyncio.current_task()
        self._handlers[task] = writer
        try:
            if len(self._live) >= self.max_connections:
                self.refused += 1
                with contextlib.suppress(Exception):
                    await self._send(writer, Response(None, False, error=error_info(
                        self._busy())))
                await _discard(reader, writer)    # a request already sent must not reset it
                await _close(writer)
                return
            await self._connection(task, reader, writer)
        except asyncio.CancelledError:
            # Cancelled by `close` (the service stops) or `_evict`: end quietly. A handler
            # task must not end cancelled: asyncio's stream callback would print a traceback.
            if not (self._closing or task in self._evicted):
                raise
        finally:
            self._evicted.discard(task)
            self._handlers.pop(task, None)
            writer.close()

    async def _connection(self, task: asyncio.Task, reader, writer) -> None:
        if len(self._pending) >= self.max_handshakes:
            self._evict(next(iter(self._pending)))
        self.connections += 1
        self._pending[task] = writer
        try:
            await self._serve(reader, writer)
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError):
            pass
        except Exception:
            log.exception("connection failed")
        finally:
            self.connections -= 1
            self._pending.pop(task, None)
            self._live.discard(task)
            if task in self._evicted and not self._closing:
                await _discard(reader, writer)    # so the client gets the line that says why
            await _close(writer)

    def _busy(self) -> ServiceBusy:
        return ServiceBusy(f"the service already serves {self.max_connections} connections",
                           hint="close idle clients (swarm.close()) and retry, or start the "
                                "service with a higher --max-connections")

    def _evict(self, task: asyncio.Task) -> None:
        """Make room for a new connection: the oldest one still in its handshake is told why
        and closed (its handler is cancelled, or sees it is let go, and ends quietly)."""
        writer = self._pending.pop(task)
        self._evicted.add(task)
        self.refused += 1
        with contextlib.suppress(Exception):
            writer.write(encode(Response(None, False, error=error_info(ServiceBusy(
                f"{self.max_handshakes} connections are already waiting to authenticate; "
                "closing the oldest",
                hint="send a request with the token right after connecting, or start the "
                     "service with a higher --max-handshakes")))))
        task.cancel()               # the handler half-closes and ends (`handle`)

    def _admit(self, task: asyncio.Task | None) -> bool:
        """The connection's first request with the token: it leaves the handshake and takes
        an authenticated slot, if one is free."""
        if task in self._live:
            return True
        self._pending.pop(task, None)
        if len(self._live) >= self.max_connections:
            return False
        self._live.add(task)
        return True

    async def close(self) -> None:
        """End every connection (before the swarm stops): each handler is cancelled, closes
        its connection and ends quietly; returns once all have."""
        self._closing = True
        for _ in range(CLOSE_ROUNDS):
            if not self._handlers:
                return
            # Closing the connection too ends a handler whose cancellation asyncio.wait_for
            # lost (Python 3.11 drops a cancel that races a read completing).
            for task, writer in list(self._handlers.items()):
                task.cancel()
                writer.close()
            await asyncio.wait(list(self._handlers), timeout=1.0)
        log.warning("%d connections did not end within %ds of the stop", len(self._handlers),
                    CLOSE_ROUNDS)

    async def _serve(self, reader, writer) -> None:
        loop, task = asyncio.get_running_loop(), asyncio.current_task()
        deadline = loop.time() + self.first_line_timeout   # one for the whole handshake
        authenticated = False
        strikes = 0
        while task not in self._evicted:
            timeout = IDLE_TIMEOUT if authenticated else max(0.0, deadline - loop.time())
            try:
                line = await asyncio.wait_for(reader.readuntil(b"\n"), timeout)
            except asyncio.IncompleteReadError:
                return                                  # the client left
            except asyncio.LimitOverrunError:
                await self._refuse(writer, ProtocolError(
                    f"request line over the {MAX_LINE}-byte limit; closing the connection",
                    hint="send one JSON request per line, under 1 MiB (post_many in "
                         "smaller batches)"))
                await _discard(reader, writer)
                return
            except TimeoutError:
                if authenticated:
                    await self._refuse(writer, ProtocolError(
                        f"no request for {timeout:g}s; closing the connection",
                        hint="send a request right after connecting"))
                else:
                    await self._refuse(writer, ProtocolError(
                        f"no request for {self.first_line_timeout:g}s after connecting: the "
                        "handshake took too long; closing the connection",
                        hint="send a request with the token right after connecting"))
                return
            if task in self._evicted:
                return                  # let go while its line was read (`_evict`)
            try:
                req = decode_request(line)
            except ProtocolError as exc:
                await self._send(writer, Response(None, False, error=error_info(exc)))
                strikes += 1
                if not authenticated and strikes >= MAX_STRIKES:
                    return              # garbage only, never a token: not worth a slot
                continue
            role = self._role(req.token)
            if role is None:
                why = "no token" if not req.token else "a wrong token"
                await self._refuse(writer, AuthenticationError(
                    f"request {req.id} carries {why}; closing the connection",
                    hint="pass the token printed by `timmy serve` (token=... / --token / "
                         "TIMMY_TOKEN), or read it from the .token file beside the database"),
                    req.id)
                return
            if role == "runner" and req.op != "runner":
                await self._refuse(writer, AuthenticationError(
                    f"request {req.id} ({req.op!r}) carries the runner token, which only lets a "
                    "remote runner join (op 'runner'); closing the connection",
                    hint="use the admin token for anything else: printed by `timmy serve` and "
                         "kept in the .token file beside the database (not .runner.token)"),
                    req.id)
                return
            if not self._admit(task):
                await self._refuse(writer, self._busy(), req.id)
                return
            authenticated = True        # may stay idle for longer
            self.requests += 1
            if req.op == "subscribe":
                try:
                    args = op_args(SubscribeArgs, req)
                except ProtocolError as exc:
                    await self._send(writer, Response(req.id, False, error=error_info(exc)))
                    continue
                await self._stream(reader, writer, req.id, args.after)
                return
            if req.op == "runner":
                await self._runner(reader, writer, req, role)
                return
            if req.op in LONG_OPS:
                response = await self._answer_while_there(reader, writer, req)
                if response is None:
                    return                  # the client left: nobody to answer
            else:
                response = await self._answer(req)
            await self._send(writer, response)

    def _role(self, token: str) -> str | None:
        """"admin" for the service's token, "runner" for its runner token, None for any
        other (both compared in constant time)."""
        given = token.encode()
        admin = hmac.compare_digest(given, self._token)
        runner = self._runner_token is not None and hmac.compare_digest(given,
                                                                         self._runner_token)
        return "admin" if admin else "runner" if runner else None

    async def _answer_while_there(self, reader, writer, req: Request) -> Response | None:
        """`_answer` for an op that may block (wait, run), given up if the client leaves."""
        task = asyncio.ensure_future(self._answer(req))
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=CLIENT_CHECK)
                if done:
                    return task.result()
                if reader.at_eof() or writer.is_closing():
                    return None
        finally:                    # the client left, or the service stops: drop the op
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _answer(self, req: Request) -> Response:
        if req.op == "status":
            try:
                op_args(NoArgs, req)
                status = await self.swarm.status()
            except TimmyError as exc:
                return Response(req.id, False, error=error_info(exc))
            status["service"] = {"connections": self.connections,
                                 "handshakes": len(self._pending),
                                 "subscribers": self.subscribers, "runners": self.runners,
                                 "refused": self.refused, "requests": self.requests,
                                 "dropped": self.dropped,
                                 "mmap_threshold": self.mmap_threshold}
            return Response(req.id, True, status)
        op = OPS.get(req.op)
        try:
            if op is None:
                known = ", ".join(sorted([*OPS, "status", "subscribe", "runner"]))
                raise ProtocolError(f"unknown op {req.op!r}", hint=f"use one of: {known}")
            args_type, fn = op
            result = await fn(self.swarm, op_args(args_type, req))
        except TimmyError as exc:
            return Response(req.id, False, error=error_info(exc))
        except Exception as exc:
            log.exception("op %s failed", req.op)
            return Response(req.id, False, error=error_info(ServiceError(
                f"{req.op} failed inside the service: {type(exc).__name__}: {exc}",
                hint="see the service's log; the swarm is still running")))
        return Response(req.id, True, result)

    async def _stream(self, reader, writer, req_id: int, after: int | None) -> None:
        """Stored events after ``after``, then live ones, each sent once it is stored."""
        buf: deque[Event] = deque()
        wake = asyncio.Event()
        state = {"overflow": False, "eof": False}

        def on_event(event: Event) -> None:
            if len(buf) >= EVENT_BACKLOG:
                state["overflow"] = True            # caught up from the store instead
                buf.clear()
            elif not state["overflow"]:
                buf.append(event)
            wake.set()

        async def watch_eof() -> None:
            with contextlib.suppress(Exception):
                while await reader.read(4096):
                    pass                                # anything sent now is ignored
            state["eof"] = True
            wake.set()

        sock = writer.get_extra_info("socket")
        if sock is not None:     # bound what a reader that stops reading can pin in the kernel
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, STREAM_SNDBUF)
        swarm = self.swarm
        unsubscribe = swarm.subscribe(on_event)
        watcher = asyncio.create_task(watch_eof())
        self.subscribers += 1
        try:
            await swarm.engine.flush()
            if after is None:
                after = await asyncio.to_thread(swarm.store.next_event_id) - 1
            await self._send(writer, Response(req_id, True, {"after": after}))
            last = await self._catch_up(writer, after)
            while not state["eof"]:
                await wake.wait()
                wake.clear()
                if state["overflow"]:
                    state["overflow"] = False
                    last = await self._catch_up(writer, last)
                    continue
                if not buf:
                    continue
                # Send only what is stored: a flush writes every event emitted before it was
                # called, so events that arrive while it runs wait for the next round.
                upto = buf[-1].event_id
                await swarm.engine.flush()
                out = []
                while buf and buf[0].event_id <= upto:
                    event = buf.popleft()
                    if event.event_id > last:
                        out.append(encode(event))
                        last = event.event_id
                if buf:
                    wake.set()
                if out:
                    writer.write(b"".join(out))
                    await self._drain(writer)
        finally:
            self.subscribers -= 1
            unsubscribe()
            watcher.cancel()

    async def _runner(self, reader, writer, req: Request, role: str = "admin") -> None:
        """A remote runner dialled in: admit it, answer, then it speaks the runner protocol
        until the connection ends (`Runners.serve_remote`)."""
        peer = _peer(writer)

        async def answer(welcome: Welcome) -> None:
            key = secrets.token_urlsafe(24)      # a fresh one per connection
            self._rejoin_keys[welcome.agent_id] = key
            await self._send(writer, Response(
                req.id, True, msgspec.structs.replace(welcome, rejoin_key=key)))

        try:
            args = op_args(RunnerArgs, req)
            if role != "admin":
                self._check_takeover(args)
            self.runners += 1
            try:
                await self.swarm.engine.runners.serve_remote(
                    args.persona, args.agent_id, args.stats, reader, writer, peer, answer)
            finally:
                self.runners -= 1
        except TimmyError as exc:        # refused before the answer: say why, then close
            await self._refuse(writer, exc, req.id)
            return
        log.info("remote runner connection from %s ended", peer)

    def _check_takeover(self, args: RunnerArgs) -> None:
        """A runner token joins as a new agent, or as one whose runner is not connected (it
        is back after a crash, or after a service restart); it replaces a connection the
        service still holds only with the key that connection's welcome carried. So one
        runner cannot cut another off by taking its name (the admin token can, as ``kill``).
        No await here: the check and `Runners.serve_remote`'s connect are one step."""
        slots = self.swarm.engine.supervisor.slots
        slot = slots.get(args.agent_id) if args.agent_id else None
        if slot is None or not slot.remote or slot.link is None:
            return
        key = self._rejoin_keys.get(args.agent_id)
        if key is not None and args.key is not None \
                and hmac.compare_digest(args.key.encode(), key.encode()):
            return
        raise ServiceBusy(
            f"{args.agent_id} is connected (from {slot.link.peer}); only that runner can "
            "replace its connection",
            hint="a runner that lost its connection gets back in once the service drops the "
                 "old one (the ping timeout); or join with another --agent-id")

    async def _catch_up(self, writer, last: int) -> int:
        while True:
            events = await self.swarm.events(last, PAGE)
            if events:
                writer.write(b"".join(encode(e) for e in events))
                last = events[-1].event_id
                await self._drain(writer)
            if len(events) < PAGE:
                return last

    async def _drain(self, writer) -> None:
        try:
            await asyncio.wait_for(writer.drain(), self.send_timeout)
        except TimeoutError:
            self.dropped += 1
            log.warning("dropping a client that read nothing for %gs", self.send_timeout)
            raise

    async def _send(self, writer, response: Response) -> None:
        writer.write(encode(response))
        await self._drain(writer)

    async def _refuse(self, writer, exc: TimmyError, req_id: int | None = None) -> None:
        self.refused += 1
        with contextlib.suppress(Exception):
            await self._send(writer, Response(req_id, False, error=error_info(exc)))


def _peer(writer) -> str:
    where = writer.get_extra_info("peername")
    if not isinstance(where, tuple):
        return str(where or "?")
    return f"{url_host(where[0])}:{where[1]}"


async def _discard(reader, writer, seconds: float = 1.0, most: int = 64 * MAX_LINE) -> None:
    """Half-close, then read and drop what the client still sends (a while, a bounded
    amount): closing with unread input would reset the connection and the client could
    lose the error line just sent."""
    with contextlib.suppress(Exception):
        writer.write_eof()
        async with asyncio.timeout(seconds):
            while most > 0:
                chunk = await reader.read(256 * 1024)
                if not chunk:
                    return
                most -= len(chunk)


async def _close(writer) -> None:
    writer.close()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(writer.wait_closed(), 1.0)


