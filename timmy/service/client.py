"""`AttachedSwarm`: the swarm of a running ``timmy serve`` (``timmy.Swarm.attach(url)``), with
the methods and model types of `timmy.Swarm`, one request per call over the service's control
endpoint; the service's errors are raised here as the same `TimmyError` subclasses.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import select
import socket
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import msgspec

from timmy import errors as _errors
from timmy.errors import ProtocolError, TimmyError, WaitTimeout
from timmy.market.models import AgentInfo, Event, Task
from timmy.paging import (
    DEFAULT_LIMIT,
    agent_key,
    bid_key,
    event_key,
    ledger_key,
    task_key,
    walk,
)
from timmy.service.tokens import default_token
from timmy.service.wire import (
    DEFAULT_URL,
    AuthenticationError,
    Request,
    Response,
    ServiceBusy,
    ServiceError,
    ServiceUnavailable,
    encode,
    parse_url,
)

log = logging.getLogger(__name__)

MAX_ANSWER = 512 * 1024 * 1024    # bytes in one answer line
#: Seconds a call waits for its answer (a stopped or wedged service is then an error, not a
#: hang); `wait` and `run` get their own timeout on top, and `export`, whose work grows with
#: the history, waits as long as it takes.
REQUEST_TIMEOUT = 60.0
UNBOUNDED_OPS = frozenset({"export"})
BACKOFF = (0.05, 2.0)             # first and longest pause between reconnects

ERRORS: dict[str, type[TimmyError]] = {
    name: cls for name, cls in vars(_errors).items()
    if isinstance(cls, type) and issubclass(cls, TimmyError)
}
ERRORS.update({c.__name__: c for c in (WaitTimeout, ServiceError, ServiceUnavailable,
                                       AuthenticationError, ServiceBusy)})


def raise_error(info) -> None:
    """Raise the `TimmyError` the service reported (`ServiceError` for an unknown type)."""
    cls = ERRORS.get(info.type)
    message = info.message if cls is not None else f"{info.type}: {info.message}"
    raise (cls or ServiceError)(message, hint=info.hint)


class _Conn:
    """One blocking connection speaking JSON lines."""

    def __init__(self, host: str, port: int, timeout: float) -> None:
        self.where = f"tcp://{host}:{port}"
        try:
            self.sock = socket.create_connection((host, port), timeout=timeout)
        except OSError as exc:
            raise ServiceUnavailable(
                f"no swarm service answers at {self.where}: {exc.strerror or exc}",
                hint="start one with `timmy serve`, or pass the right url (--url / url=...)",
            ) from exc
        self.sock.settimeout(None)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.file = self.sock.makefile("rb")

    def stale(self) -> bool:
        """True when the peer closed (or sent something unasked) while we were idle."""
        try:
            readable, _, _ = select.select([self.sock], [], [], 0)
        except (OSError, ValueError):
            return True
        return bool(readable)

    def send(self, req: Request) -> None:
        self.sock.sendall(encode(req))

    def line(self) -> bytes:
        try:
            line = self.file.readline(MAX_ANSWER)
        except TimeoutError as exc:
            limit = self.sock.gettimeout()
            raise ServiceUnavailable(
                f"no answer from {self.where} within {limit:g}s",
                hint="the service may be stopped, suspended or overloaded: check it with "
                     "`timmy status`; to wait longer, attach with request_timeout=SECONDS "
                     "(None: no limit)") from exc
        except OSError as exc:
            raise ServiceUnavailable(f"lost the connection to {self.where}: {exc}",
                                     hint="is the service still running? `timmy status`") \
                from exc
        if not line:
            raise ServiceUnavailable(f"the service at {self.where} closed the connection",
                                     hint="it may have stopped or restarted; retry, or check "
                                          "it with `timmy status`")
        if not line.endswith(b"\n"):
            raise ProtocolError(f"an answer from {self.where} is over {MAX_ANSWER} bytes",
                                hint="ask for less (tasks(limit=...), events(limit=...))")
        return line

    def answer(self, req_id: int) -> Any:
        resp = _decode_response(self.line())
        if not resp.ok:
            raise_error(resp.error)
        if resp.id != req_id:
            raise ProtocolError(f"answer to request {resp.id} while waiting for {req_id}",
                                hint="this is a bug: please report it")
        return resp.result

    def close(self) -> None:
        for part in (self.file, self.sock):
            with contextlib.suppress(OSError):
                part.close()

    def abort(self) -> None:
        """Unblock a thread reading this connection."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)


def _decode_response(line: bytes) -> Response:
    try:
        return msgspec.json.decode(line, type=Response)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ProtocolError(f"bad answer from the service: {exc}",
                            hint="is that address a timmy service?") from None


class AttachedSwarm:
    """A running swarm service, with the same synchronous methods as `timmy.Swarm`.

    ``voice=True`` speaks the service's auction winners and completions here, in this
    process, with a `timmy.voice.announcer` subscribed to its event stream.

    Sockets are blocking, one request at a time per connection; connections are pooled,
    so several threads can call one client at once.
    """

    def __init__(self, url: str = DEFAULT_URL, token: str | None = None, *,
                 connect_timeout: float = 5.0, request_timeout: float | None = REQUEST_TIMEOUT,
                 voice: bool = False) -> None:
        self.url = url
        self._host, self._port = parse_url(url)
        self._token = token if token is not None else default_token()
        self._timeout = connect_timeout
        self.request_timeout = request_timeout
        self._ids = itertools.count(1)
        self._pool: list[_Conn] = []
        self._lock = threading.Lock()
        self._subscriptions: set[Subscription] = set()
        self._closed = False
        # voice=True: this process speaks the service's events, as Swarm(voice=True) does
        self.announcer = None
        if voice:
            from timmy.voice import announcer

            self.announcer = announcer()
            self.subscribe(self.announcer)

    def __repr__(self) -> str:
        return f"<AttachedSwarm {self.url}>"

    # -- plumbing -------------------------------------------------------------
    def _connect(self) -> _Conn:
        return _Conn(self._host, self._port, self._timeout)

    def _request(self, op: str, **args: Any) -> Request:
        return Request(id=next(self._ids), token=self._token, op=op, args=args)

    def _call(self, op: str, **args: Any) -> Any:
        if self._closed:
            raise _errors.SwarmClosed("this attached swarm was closed",
                                      hint="attach again: timmy.Swarm.attach(url)")
        req = self._request(op, **{k: v for k, v in args.items() if v is not None})
        conn = None
        with self._lock:
            while self._pool:
                conn = self._pool.pop()
                if not conn.stale():
                    break
                conn.close()
                conn = None
        if conn is None:
            conn = self._connect()
        limit = self._deadline(op, args.get("timeout"))
        try:
            try:
                conn.sock.settimeout(limit)
                conn.send(req)
            except OSError:
                conn.close()             # went away before reading anything: safe to resend
                conn = self._connect()
                conn.sock.settimeout(limit)
                conn.send(req)
            result = conn.answer(req.id)
        except AuthenticationError:
            conn.close()
            raise
        except (TimmyError, msgspec.ValidationError) as exc:
            if isinstance(exc, (ServiceUnavailable, ProtocolError)):
                conn.close()
            else:
                self._give_back(conn)
            raise
        except BaseException:
            conn.close()                 # interrupted mid-answer: the stream is out of step
            raise
        self._give_back(conn)
        return result

    def _deadline(self, op: str, timeout: float | None) -> float | None:
        """How long a call may wait for its answer: ``request_timeout``; for `wait` and
        `run` their own timeout on top (none: as long as they take); `export` unbounded."""
        if self.request_timeout is None or op in UNBOUNDED_OPS:
            return None
        if op in ("wait", "run"):
            return None if timeout is None else timeout + self.request_timeout
        return self.request_timeout

    def _give_back(self, conn: _Conn) -> None:
        with self._lock:
            if self._closed or len(self._pool) >= 8:
                conn.close()
            else:
                self._pool.append(conn)

    def close(self) -> None:
        """Stop every subscription and close the connections (the service keeps running)."""
        self._closed = True
        for sub in list(self._subscriptions):
            sub.unsubscribe()
        if self.announcer is not None:
            self.announcer.close()   # what is pending is still said, off this thread
        with self._lock:
            pool, self._pool = self._pool, []
        for conn in pool:
            conn.close()

    def __enter__(self) -> AttachedSwarm:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def start(self) -> AttachedSwarm:
        """Check that the service answers (the service, not the client, runs the swarm)."""
        self.ping()
        return self

    def ping(self) -> str:
        return self._call("ping")

    # -- the API of timmy.Swarm -------------------------------------------------
    def spawn(self, persona: str) -> AgentInfo:
        return msgspec.convert(self._call("spawn", persona=persona), AgentInfo)

    def spawn_all(self, personas: Iterable[str] | None = None) -> list[AgentInfo]:
        personas = list(personas) if personas is not None else None
        return msgspec.convert(self._call("spawn_all", personas=personas), list[AgentInfo])

    def stop(self, agent_id: str) -> AgentInfo:
        return msgspec.convert(self._call("stop", agent_id=agent_id), AgentInfo)

    def kill(self, agent_id: str) -> None:
        self._call("kill", agent_id=agent_id)

    def agents(self, limit: int | None = None, after: str | None = None) -> list[AgentInfo]:
        """One page of agents by agent_id (see `timmy.paging`)."""
        return msgspec.convert(self._call("agents", limit=limit, after=after), list[AgentInfo])

    def iter_agents(self, *, page: int = DEFAULT_LIMIT) -> Iterator[AgentInfo]:
        """Every agent, by agent_id, a request per page."""
        return walk(lambda c, n: self.agents(n, c), agent_key, None, page)

    def post(self, description: str, task_timeout: float | None = None, *,
             verify: str | None = None, max_price: int | None = None) -> Task:
        # max_price is sent only when given: a service of an older timmy refuses the field
        extra = {} if max_price is None else {"max_price": max_price}
        return msgspec.convert(self._call("post", description=description,
                                          task_timeout=task_timeout, verify=verify, **extra),
                               Task)

    def post_many(self, descriptions: Sequence[str],
                  task_timeout: float | None = None, *, verify: str | None = None,
                  max_price: int | None = None) -> list[Task]:
        extra = {} if max_price is None else {"max_price": max_price}
        return msgspec.convert(self._call("post_many", descriptions=list(descriptions),
                                          task_timeout=task_timeout, verify=verify, **extra),
                               list[Task])

    def approve(self, task_id: int) -> Task:
        """Assign a task awaiting approval at its held price (`timmy.market.budgets`)."""
        return msgspec.convert(self._call("approve", task_id=task_id), Task)

    def reject(self, task_id: int) -> Task:
        """Cancel a task awaiting approval."""
        return msgspec.convert(self._call("reject", task_id=task_id), Task)

    def ledger(self, agent_id: str | None = None, limit: int | None = None, *,
               after: int | None = None, before: int | None = None) -> list[dict]:
        """One page of the ledger (all, or one agent's), oldest first by entry_id."""
        return self._call("ledger", agent_id=agent_id, limit=limit, after=after, before=before)

    def iter_ledger(self, agent_id: str | None = None, *, after: int = 0,
                    page: int = DEFAULT_LIMIT) -> Iterator[dict]:
        """Every ledger entry (or one agent's) after ``after``, a request per page."""
        return walk(lambda c, n: self.ledger(agent_id, n, after=c), ledger_key, after, page)

    def balances(self) -> dict[str, dict[str, int]]:
        """Per agent the ledger paid: sats, tasks, verified."""
        return self._call("balances")

    def reputation(self) -> dict[str, dict]:
        """Per agent: outcomes, reliability and timeliness (`timmy.market.reputation`)."""
        return self._call("reputation")

    def wait(self, task_id: int, timeout: float | None = None) -> Task:
        return msgspec.convert(self._call("wait", task_id=task_id, timeout=timeout), Task)

    def run(self, descriptions: Sequence[str], timeout: float | None = None,
            progress: bool = False, sequential: bool = False) -> list[Task]:
        """Post many tasks and wait for all (``progress=True``: a tqdm bar drawn here)."""
        if not progress:
            return msgspec.convert(self._call("run", descriptions=list(descriptions),
                                              timeout=timeout, sequential=sequential),
                                   list[Task])
        import time

        from timmy.progress import progress_bar

        bar = progress_bar(len(descriptions)) if progress is True else progress
        deadline = None if timeout is None else time.monotonic() + timeout
        left = lambda: None if deadline is None else max(deadline - time.monotonic(), 0.0)  # noqa: E731
        try:
            done = []
            if sequential:
                for d in descriptions:
                    done.extend(self.run([d], timeout=left(), sequential=True))
                    bar.update(1)
                return done
            for task in self.post_many(descriptions):
                done.append(self.wait(task.task_id, left()))
                bar.update(1)
            return done
        finally:
            if progress is True:
                bar.close()

    def cancel(self, task_id: int) -> Task:
        return msgspec.convert(self._call("cancel", task_id=task_id), Task)

    def tasks(self, status: str | None = None, limit: int | None = None, *,
              after: int | None = None, before: int | None = None) -> list[Task]:
        """One page of tasks, oldest first: the newest ``limit`` (the service's default
        page, at most `timmy.paging.MAX_LIMIT`), or past ``after``/``before`` (a task_id)."""
        return msgspec.convert(self._call("tasks", status=status, limit=limit, after=after,
                                          before=before), list[Task])

    def iter_tasks(self, status: str | None = None, *, after: int = 0,
                   page: int = DEFAULT_LIMIT) -> Iterator[Task]:
        """Every task (in ``status``) after ``after``, oldest first, a request per page."""
        return walk(lambda c, n: self.tasks(status, n, after=c), task_key, after, page)

    def task(self, task_id: int) -> Task:
        return msgspec.convert(self._call("task", task_id=task_id), Task)

    def bids(self, task_id: int | None = None, limit: int | None = None, *,
             after: int | None = None, before: int | None = None) -> list[dict]:
        """One page of bids (all, or one task's), oldest first by bid_id; paged as `tasks`."""
        return self._call("bids", task_id=task_id, limit=limit, after=after, before=before)

    def iter_bids(self, task_id: int | None = None, *, after: int = 0,
                  page: int = DEFAULT_LIMIT) -> Iterator[dict]:
        """Every bid (or one task's) after bid ``after``, oldest first, a request per page."""
        return walk(lambda c, n: self.bids(task_id, n, after=c), bid_key, after, page)

    def events(self, after: int | None = None, limit: int | None = None, *,
               before: int | None = None) -> list[Event]:
        """One page of stored events, oldest first: the newest, or past ``after``/``before``."""
        return msgspec.convert(self._call("events", after=after, limit=limit, before=before),
                               list[Event])

    def iter_events(self, after: int = 0, *, page: int = DEFAULT_LIMIT) -> Iterator[Event]:
        """Every stored event after ``after``, oldest first, a request per page."""
        return walk(lambda c, n: self.events(c, n), event_key, after, page)

    def status(self) -> dict:
        """What `timmy.Swarm.status` says, plus ``service``: connections, subscribers..."""
        return self._call("status")

    def export(self, out_dir: str | Path, fmt: str = "parquet") -> dict[str, Path]:
        """Write the tables into ``out_dir`` ON THE SERVICE'S MACHINE; returns their paths."""
        written = self._call("export", out_dir=str(Path(out_dir).absolute()), fmt=fmt)
        return {name: Path(p) for name, p in written.items()}

    def subscribe(self, callback: Callable[[Event], None], after: int | None = None,
                  on_connection: Callable[[bool], None] | None = None) -> Callable[[], None]:
        """Call ``callback(event)`` for every event from now on (or after event ``after``:
        ``after=0`` replays the whole history first); returns unsubscribe().

        The callback runs on a background thread, one event at a time, in order. A lost
        connection is retried with backoff and resumed after the last event seen;
        ``on_connection(False)`` is called when it is lost and ``on_connection(True)``
        when it is back (a dashboard shows "reconnecting…" meanwhile).
        """
        sub = Subscription(self, callback, after, on_connection)
        self._subscriptions.add(sub)
        return sub.unsubscribe


class Subscription:
    """A background reader of the service's event stream (see `AttachedSwarm.subscribe`)."""

    def __init__(self, swarm: AttachedSwarm, callback: Callable[[Event], None],
                 after: int | None,
                 on_connection: Callable[[bool], None] | None = None) -> None:
        self._swarm, self._callback = swarm, callback
        self._on_connection = on_connection
        self.connected = False
        self.last = after
        self.reconnects = 0
        self._stop = threading.Event()
        self._conn: _Conn | None = None
        conn = self._open()                     # the first connection fails loudly, here
        self._thread = threading.Thread(target=self._loop, args=(conn,), daemon=True,
                                        name=f"timmy-subscribe-{swarm.url}")
        self._thread.start()

    def _open(self) -> _Conn:
        conn = self._swarm._connect()
        try:
            req = self._swarm._request("subscribe", after=self.last)
            conn.send(req)
            started = conn.answer(req.id)
        except BaseException:
            conn.close()
            raise
        if self.last is None:
            self.last = started["after"]
        self._conn = conn
        self._connection(True)
        return conn

    def _connection(self, up: bool) -> None:
        if up == self.connected:
            return
        self.connected = up
        if self._on_connection is not None:
            try:
                self._on_connection(up)
            except Exception:
                log.exception("on_connection callback failed")

    def _loop(self, conn: _Conn | None) -> None:
        delay = BACKOFF[0]
        decode_event = msgspec.json.Decoder(Event).decode
        while not self._stop.is_set():
            try:
                if conn is None:
                    conn = self._open()
                    self.reconnects += 1
                    delay = BACKOFF[0]
                if self._stop.is_set():
                    break
                while True:
                    line = conn.line()
                    try:
                        event = decode_event(line)
                    except msgspec.ValidationError:
                        raise_error(_decode_response(line).error)
                    if event.event_id <= self.last:
                        continue
                    self.last = event.event_id
                    try:
                        self._callback(event)
                    except Exception:
                        log.exception("subscriber callback failed on event %d", event.event_id)
            except AuthenticationError as exc:
                log.error("event stream refused, not retrying: %s", exc)
                break
            except (TimmyError, OSError, msgspec.DecodeError) as exc:
                if not self._stop.is_set():
                    log.info("event stream lost (%s); retrying in %.2fs", exc, delay)
                    self._connection(False)
            finally:
                if conn is not None:
                    conn.close()
                conn = self._conn = None
            self._stop.wait(delay)
            delay = min(delay * 2, BACKOFF[1])

    def unsubscribe(self) -> None:
        self._stop.set()
        conn = self._conn
        if conn is not None:
            conn.abort()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=5)
        self._swarm._subscriptions.discard(self)
