"""Prometheus metrics of a hosted swarm: ``timmy serve --metrics-port PORT`` serves
``/metrics`` (prometheus-client's text format; extra ``metrics``).

The hot path stays cheap: `SwarmMetrics` subscribes to the swarm's events and only bumps
plain integers and histogram buckets; everything else (tasks by state, runners, spend,
subscribers) is read from what the engine and the service already keep, at scrape time,
by a custom collector. `MetricsEndpoint` answers scrapes on the service's own event loop,
so a scrape never reads the engine from another thread. Labels are bounded: states,
rules, outcomes, never a task or agent id. docs/metrics.md lists every metric.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import socket
from collections.abc import Iterator
from typing import Any

from timmy.errors import ConfigError
from timmy.market.mechanisms import MECHANISM_FAILED

log = logging.getLogger("timmy")

#: Seconds from post to assignment, and from post to a final state.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0, 30.0, 60.0, 300.0)
#: Seconds one store transaction (a batch of changes) takes.
WRITE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)
#: Rows in one batch.
BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000)
_FINAL = {"task_completed": "completed", "task_failed": "failed",
          "task_cancelled": "cancelled"}
_RUNNER_EVENTS = {"agent_restarted": "restarted", "agent_reconnected": "reconnected",
                  "agent_crashed": "crashed", "agent_failed": "failed",
                  "agent_disconnected": "disconnected", "agent_hung": "hung"}


def _prometheus():
    try:
        import prometheus_client
    except ImportError as exc:
        raise ConfigError("--metrics-port needs prometheus-client, which is not installed",
                          hint="pip install 'timmy[metrics]' (or prometheus-client)") from exc
    return prometheus_client


class Histogram:
    """Cumulative-at-scrape histogram kept as plain bucket counts (no locks, no labels)."""

    __slots__ = ("bounds", "counts", "n", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0
        self.n = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value
        self.n += 1

    def buckets(self) -> list[tuple[str, int]]:
        out, running = [], 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += count
            out.append(("+Inf" if bound == float("inf") else repr(float(bound)), running))
        return out


class SwarmMetrics:
    """What a swarm's events tell, counted; `collect` is prometheus-client's collector.

    ``swarm`` is an `AsyncSwarm`; ``service`` (optional) the `Service` hosting it, for its
    connections, subscribers and dropped clients. Call `close` to stop counting.

    It is not an event subscriber: a subscriber makes the journal build an `Event` for
    every event (about 15 per task) and call it, which cost up to 9% of a swarm's
    throughput. What the engine counts anyway (events, by their ids; bids, by the
    auctions) is read at scrape time; only the few kinds it must see (one closed auction,
    one assignment, one final state per task; runner events) are tapped (`Journal.tap`:
    the raw fields, no `Event`).
    """

    def __init__(self, swarm: Any, service: Any = None) -> None:
        self.swarm, self.service = swarm, service
        self.engine = swarm.engine
        journal = self.engine.journal
        self.auctions: dict[tuple[str, str], int] = {}
        self.runner_events: dict[str, int] = dict.fromkeys(_RUNNER_EVENTS.values(), 0)
        self.finished: dict[str, int] = dict.fromkeys(_FINAL.values(), 0)
        self.paid_sats = 0
        self.post_to_assign = Histogram(LATENCY_BUCKETS)
        self.post_to_done = {state: Histogram(LATENCY_BUCKETS) for state in _FINAL.values()}
        self.store_write = Histogram(WRITE_BUCKETS)
        self.batch_rows = Histogram(BATCH_BUCKETS)
        # what the engine counts anyway, from now on (and until closed)
        self._first = self._engine_counts()
        self._last: tuple[int, int, int] | None = None
        taps = {"auction_closed": self._on_auction_closed,
                MECHANISM_FAILED: self._on_mechanism_failed,
                "task_assigned": self._on_assigned,
                **{kind: self._final(state) for kind, state in _FINAL.items()},
                **{kind: self._runner_event(name) for kind, name in _RUNNER_EVENTS.items()}}
        self._untap = [journal.tap(kind, hook) for kind, hook in taps.items()]
        journal.on_write = self._on_write

    def _engine_counts(self) -> tuple[int, int, int]:
        off_spec, on_spec = self.engine.auctions.accepted
        return self.engine.journal.next_event, off_spec, on_spec

    def _since_start(self) -> tuple[int, int, int]:
        now = self._last if self._last is not None else self._engine_counts()
        return tuple(b - a for a, b in zip(self._first, now, strict=True))

    @property
    def events(self) -> int:
        """Events recorded since these metrics started (each takes the next event id)."""
        return self._since_start()[0]

    @property
    def bids(self) -> dict[bool, int]:
        """Bids accepted since these metrics started, by on-spec (the auctions count them)."""
        _, off_spec, on_spec = self._since_start()
        return {True: on_spec, False: off_spec}

    def close(self) -> None:
        if self._last is None:
            self._last = self._engine_counts()
        for untap in self._untap:
            untap()
        self._untap = []
        if self.engine.journal.on_write == self._on_write:
            self.engine.journal.on_write = None

    # -- the hot path: one call per counted event, a few integer bumps ------------
    def _posted_at(self, task_id: int | None) -> float | None:
        task = self.engine.active.get(task_id) or self.engine.finished.get(task_id)
        return task.created_at if task is not None and task.created_at else None

    def _on_auction_closed(self, task_id, agent_id, ts, data) -> None:
        key = (str(data.get("rule")), "won" if agent_id is not None else "no_winner")
        self.auctions[key] = self.auctions.get(key, 0) + 1

    def _on_mechanism_failed(self, task_id, agent_id, ts, data) -> None:
        key = (str(data.get("rule")), "mechanism_failed")
        self.auctions[key] = self.auctions.get(key, 0) + 1

    def _on_assigned(self, task_id, agent_id, ts, data) -> None:
        posted = self._posted_at(task_id)
        if posted is not None:
            self.post_to_assign.observe(max(0.0, ts - posted))

    def _final(self, state: str):
        done = self.post_to_done[state]

        def hook(task_id, agent_id, ts, data) -> None:
            self.finished[state] += 1
            if state == "completed":
                self.paid_sats += data.get("price_sats") or 0
            posted = self._posted_at(task_id)
            if posted is not None:
                done.observe(max(0.0, ts - posted))
        return hook

    def _runner_event(self, name: str):
        def hook(task_id, agent_id, ts, data) -> None:
            self.runner_events[name] += 1
        return hook

    def _on_write(self, seconds: float, rows: int) -> None:
        self.store_write.observe(seconds)
        self.batch_rows.observe(rows)

    # -- at scrape time ----------------------------------------------------------
    def describe(self) -> list:
        return []   # no describe-time collection: the registry calls collect() when scraped

    def collect(self) -> Iterator:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        engine = self.engine
        status = engine.status(engine.task_counts())
        g = GaugeMetricFamily("timmy_tasks", "Tasks by state (unfinished live, finished counted "
                              "since the swarm started)", labels=["state"])
        for state, n in sorted(status["tasks"].items()):
            g.add_metric([state], n)
        yield g
        c = CounterMetricFamily("timmy_tasks_finished", "Tasks that reached a final state "
                                "while this service ran", labels=["state"])
        for state, n in self.finished.items():
            c.add_metric([state], n)
        yield c
        yield GaugeMetricFamily("timmy_queue_depth", "Tasks waiting in memory for an auction",
                                value=status["queued_in_memory"])
        yield GaugeMetricFamily("timmy_open_auctions", "Auctions open now",
                                value=status["open_auctions"])
        c = CounterMetricFamily("timmy_auctions", "Auctions closed, by clearing rule and "
                                "outcome (won, no_winner, mechanism_failed)",
                                labels=["rule", "outcome"])
        for (rule, outcome), n in sorted(self.auctions.items()):
            c.add_metric([rule, outcome], n)
        yield c
        c = CounterMetricFamily("timmy_bids", "Bids accepted into auctions", labels=["on_spec"])
        bids = self.bids
        c.add_metric(["true"], bids[True])
        c.add_metric(["false"], bids[False])
        yield c
        yield CounterMetricFamily("timmy_bids_refused", "Bids refused (outside the persona's "
                                  "range)", value=status["bids_refused"])
        yield _histogram(HistogramMetricFamily, "timmy_post_to_assign_seconds",
                         "Seconds from a task's post to its assignment", self.post_to_assign)
        h = HistogramMetricFamily("timmy_post_to_done_seconds", "Seconds from a task's post to "
                                  "its final state", labels=["state"])
        for state, hist in self.post_to_done.items():
            h.add_metric([state], hist.buckets(), hist.total)
        yield h
        g = GaugeMetricFamily("timmy_runners", "Runners by status", labels=["status"])
        for state, n in sorted(status["agents"].items()):
            g.add_metric([state], n)
        yield g
        yield GaugeMetricFamily("timmy_runners_live", "Runners alive", value=status["runners_live"])
        yield GaugeMetricFamily("timmy_runners_free", "Live runners holding no task",
                                value=status["runners_free"])
        c = CounterMetricFamily("timmy_runner_events", "Runner restarts, crashes, hangs, "
                                "reconnections, failures and disconnections", labels=["event"])
        for kind, n in self.runner_events.items():
            c.add_metric([kind], n)
        yield c
        yield CounterMetricFamily("timmy_runner_restarts", "Runner processes started again "
                                  "(after a crash or a hang)",
                                  value=self.runner_events["restarted"])
        yield CounterMetricFamily("timmy_runner_hangs", "Runners found silent past the ping "
                                  "timeout", value=self.runner_events["hung"])
        yield CounterMetricFamily("timmy_protocol_errors", "Lines from runners that broke the "
                                  "protocol", value=status["protocol_errors"])
        yield CounterMetricFamily("timmy_rows_quarantined", "Rows the database refused",
                                  value=status["rows_quarantined"])
        yield CounterMetricFamily("timmy_events", "Events recorded while this service ran",
                                  value=self.events)
        yield CounterMetricFamily("timmy_paid_sats", "Sats paid for tasks completed while this "
                                  "service ran", value=self.paid_sats)
        g = GaugeMetricFamily("timmy_spend_sats", "Sats spent against the budget: paid, and "
                              "held by tasks not yet done", labels=["kind"])
        g.add_metric(["paid"], status["paid_sats"])
        g.add_metric(["held"], status["held_sats"])
        yield g
        if status.get("budget") is not None:
            yield GaugeMetricFamily("timmy_budget_sats", "The swarm's budget",
                                    value=status["budget"])
            yield GaugeMetricFamily("timmy_budget_left_sats", "What is left of the budget",
                                    value=status["budget_left"])
        yield _histogram(HistogramMetricFamily, "timmy_store_write_seconds",
                         "Seconds per store transaction (one batch)", self.store_write)
        yield _histogram(HistogramMetricFamily, "timmy_store_batch_rows",
                         "Rows written per store transaction", self.batch_rows)
        service = self.service
        if service is not None:
            yield GaugeMetricFamily("timmy_service_subscribers", "Clients following the event "
                                    "stream", value=service.subscribers)
            yield GaugeMetricFamily("timmy_service_connections", "Authenticated connections",
                                    value=service.connections)
            yield CounterMetricFamily("timmy_service_requests", "Requests answered",
                                      value=service.requests)
            yield CounterMetricFamily("timmy_service_refused", "Connections refused",
                                      value=service.refused)
            yield CounterMetricFamily("timmy_events_dropped", "Subscribers (and the events "
                                      "queued for them) dropped for not reading",
                                      value=service.dropped)


def _histogram(family, name: str, doc: str, hist: Histogram):
    h = family(name, doc)
    h.add_metric([], hist.buckets(), hist.total)
    return h


MAX_OPEN_SCRAPES = 64     # scrapes waiting for the rest of a request or to read the answer


class MetricsEndpoint:
    """``GET /metrics`` on the service's event loop: a tiny HTTP/1.0 server (no thread, so
    the collector reads the engine between two of its steps).

    A scrape costs a busy loop as few turns as it can: the listening socket is watched
    with ``add_reader``, and the callback that accepts a connection reads the request
    (usually there already), answers it and closes, in that one turn. Each turn of a busy
    swarm's loop takes milliseconds, and asyncio's stream server needed a dozen or more for
    a scrape (the accept, the transport, the handler task, a ``wait_for`` task per header
    line, drain and close): 50 ms a scrape under load against 1 ms idle.
    """

    def __init__(self, metrics: SwarmMetrics) -> None:
        prometheus = _prometheus()
        self.metrics = metrics
        self.registry = prometheus.CollectorRegistry(auto_describe=False)
        self.registry.register(metrics)
        self._generate = prometheus.generate_latest
        self._content_type = prometheus.CONTENT_TYPE_LATEST.encode()
        self.listeners: list[socket.socket] = []
        self._open: set[_Scrape] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.url: str | None = None

    def render(self) -> bytes:
        return self._generate(self.registry)

    def respond(self, request_line: bytes) -> bytes:
        """The whole HTTP response to a request whose first line is ``request_line``."""
        parts = request_line.split()
        path = parts[1].split(b"?")[0] if len(parts) > 1 else b""
        if parts[:1] == [b"GET"] and path in (b"/metrics", b"/"):
            try:
                body, status, ctype = self.render(), b"200 OK", self._content_type
            except Exception:
                log.exception("metrics scrape failed")
                body, status, ctype = b"collecting metrics failed: see the service's log\n", \
                    b"500 Internal Server Error", b"text/plain"
        else:
            body, status, ctype = b"only GET /metrics here\n", b"404 Not Found", b"text/plain"
        return (b"HTTP/1.1 " + status + b"\r\nContent-Type: " + ctype +
                b"\r\nContent-Length: " + str(len(body)).encode() +
                b"\r\nConnection: close\r\n\r\n" + body)

    async def start(self, host: str, port: int) -> str:
        """Listen on every address ``host`` resolves to (as asyncio's servers do; port 0:
        one free port, the same for all); returns the URL of the first."""
        from timmy.service.wire import url_host

        loop = self._loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                           flags=socket.AI_PASSIVE)
            for family, kind, proto, _, addr in dict.fromkeys(infos):
                sock = socket.socket(family, kind, proto)
                self.listeners.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind((addr[0], port, *addr[2:]))
                port = port or sock.getsockname()[1]
                sock.listen(128)
                sock.setblocking(False)
        except OSError as exc:
            self._close_listeners()
            raise ConfigError(f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}",
                              hint="pick another --metrics-port (0: any free one)") from exc
        for sock in self.listeners:
            loop.add_reader(sock.fileno(), self._accept, sock)
        where = self.listeners[0].getsockname()
        self.url = f"http://{url_host(where[0])}:{where[1]}/metrics"
        return self.url

    def _accept(self, listener: socket.socket) -> None:
        for _ in range(64):   # what is waiting now, a bounded number per turn
            try:
                sock, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:   # out of file descriptors...: the next turn tries again
                log.warning("metrics: cannot accept a scrape: %s", exc)
                return
            if len(self._open) >= MAX_OPEN_SCRAPES:   # slow clients hold no more than this
                sock.close()
                continue
            sock.setblocking(False)
            _Scrape(self, sock).read()

    def _close_listeners(self) -> None:
        for sock in self.listeners:
            if self._loop is not None and sock.fileno() >= 0:
                self._loop.remove_reader(sock.fileno())
            sock.close()
        self.listeners = []

    async def close(self) -> None:
        self._close_listeners()
        for scrape in list(self._open):
            scrape.close()
        self.metrics.close()


class _Scrape:
    """One scrape connection: its request head read (in the turn it was accepted if it is
    there), answered and closed. One that sends no full head in 10 s (or more than 64 KiB
    of it), or reads no answer in 10 s, is dropped."""

    __slots__ = ("endpoint", "fd", "head", "out", "sock", "timer")

    def __init__(self, endpoint: MetricsEndpoint, sock: socket.socket) -> None:
        self.endpoint, self.sock, self.fd = endpoint, sock, sock.fileno()
        self.head, self.out = b"", b""
        self.timer: asyncio.TimerHandle | None = None

    def read(self) -> None:
        loop = self.endpoint._loop
        try:
            chunk = self.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            chunk = None
        except OSError:
            return self.close()
        if chunk == b"":            # the client went away before a whole request
            return self.close()
        if chunk:
            self.head += chunk
        if b"\r\n\r\n" not in self.head and b"\n\n" not in self.head:
            if len(self.head) > 65536:
                return self.close()
            if self.timer is None:  # wait for the rest
                self.endpoint._open.add(self)
                self.timer = loop.call_later(10, self.close)
                loop.add_reader(self.fd, self.read)
            return
        if self.timer is not None:
            loop.remove_reader(self.fd)
        self.out = self.endpoint.respond(self.head.split(b"\n", 1)[0])
        self.write()

    def write(self) -> None:
        try:
            sent = self.sock.send(self.out)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            return self.close()
        self.out = self.out[sent:]
        if not self.out:
            return self.close()
        if self.timer is None:      # a large answer to a slow reader: the rest when it can
            self.endpoint._open.add(self)
            self.timer = self.endpoint._loop.call_later(10, self.close)
        self.endpoint._loop.add_writer(self.fd, self.write)

    def close(self) -> None:
        if self.fd < 0:
            return
        if self.timer is not None:
            self.timer.cancel()
            loop = self.endpoint._loop
            loop.remove_reader(self.fd)
            loop.remove_writer(self.fd)
            self.endpoint._open.discard(self)
        self.fd = -1
        self.sock.close()
