"""Optional OpenTelemetry traces of a swarm (extra ``otel``; ``timmy serve --otel``): one
span per task, from its post to its final state, with one child span per auction it went
through (a re-queued task has several). Built from the kinds of events it needs, tapped
from the journal (`Journal.tap`: the raw fields, no `Event` built, nothing for a bid),
with the events' own timestamps.

``TaskTracer(swarm, tracer_provider)`` attaches to a local swarm (`AsyncSwarm` or
`timmy.Swarm`); `close` ends what is still open. Attributes carry no result text: the task
id, the rule, the bid count, the price and the winner (span attributes are not metric
labels: ids are fine here).
"""

from __future__ import annotations

from typing import Any

from timmy.errors import ConfigError

_FINAL = {"task_completed": "completed", "task_failed": "failed",
          "task_cancelled": "cancelled"}
_KINDS = ("task_posted", "auction_opened", "auction_closed", "task_assigned", "task_started",
          "task_requeued", *_FINAL)


def _ns(ts: float) -> int:
    return int(ts * 1e9)


class TaskTracer:
    """Spans from events: ``task`` (root) and ``auction`` (its children)."""

    def __init__(self, swarm: Any, tracer_provider: Any = None) -> None:
        try:
            from opentelemetry import trace
        except ImportError as exc:
            raise ConfigError("--otel needs opentelemetry-sdk, which is not installed",
                              hint="pip install 'timmy[otel]'") from exc
        self._trace = trace
        provider = tracer_provider or trace.get_tracer_provider()
        self.tracer = provider.get_tracer("timmy")
        self.tasks: dict[int, Any] = {}
        self.auctions: dict[int, Any] = {}
        local = getattr(swarm, "_async", swarm)          # a `timmy.Swarm` wraps its engine
        journal = local.engine.journal
        self._untap = [journal.tap(kind, self._hook(kind)) for kind in _KINDS]

    def _hook(self, kind: str):
        def hook(task_id, agent_id, ts, data) -> None:
            self._on_event(kind, task_id, agent_id, ts, data)

        return hook

    def _task_span(self, task_id: int, ts: float, description: str | None = None):
        span = self.tasks.get(task_id)
        if span is None:
            span = self.tracer.start_span("task", start_time=_ns(ts),
                                          attributes={"timmy.task_id": task_id})
            if description is not None:
                span.set_attribute("timmy.description", description[:200])
            self.tasks[task_id] = span
        return span

    def _on_event(self, kind: str, tid: int | None, agent_id: str | None, ts: float,
                  data: dict) -> None:
        if tid is None:
            return
        if kind == "task_posted":
            self._task_span(tid, ts, data.get("description"))
        elif kind == "auction_opened":
            parent = self._task_span(tid, ts)
            ctx = self._trace.set_span_in_context(parent)
            old = self.auctions.pop(tid, None)
            if old is not None:
                old.end(end_time=_ns(ts))
            self.auctions[tid] = self.tracer.start_span(
                "auction", context=ctx, start_time=_ns(ts),
                attributes={"timmy.task_id": tid, "timmy.attempt": data.get("attempt") or 0})
        elif kind == "auction_closed":
            span = self.auctions.pop(tid, None)
            if span is not None:
                span.set_attribute("timmy.rule", str(data.get("rule")))
                span.set_attribute("timmy.bids", int(data.get("bids") or 0))
                span.set_attribute("timmy.outcome",
                                   "won" if agent_id is not None else "no_winner")
                if agent_id is not None:
                    span.set_attribute("timmy.winner", agent_id)
                if data.get("price_sats") is not None:
                    span.set_attribute("timmy.price_sats", int(data["price_sats"]))
                span.end(end_time=_ns(ts))
        elif kind in ("task_assigned", "task_started", "task_requeued"):
            span = self.tasks.get(tid)
            if span is not None:
                span.add_event(kind, timestamp=_ns(ts))
        elif kind in _FINAL:
            auction = self.auctions.pop(tid, None)
            if auction is not None:
                auction.end(end_time=_ns(ts))
            span = self.tasks.pop(tid, None)
            if span is not None:
                span.set_attribute("timmy.status", _FINAL[kind])
                if agent_id is not None:
                    span.set_attribute("timmy.agent_id", agent_id)
                if data.get("price_sats") is not None:
                    span.set_attribute("timmy.price_sats", int(data["price_sats"]))
                if kind != "task_completed":
                    from opentelemetry.trace import Status, StatusCode

                    span.set_status(Status(StatusCode.ERROR, str(data.get("reason"))[:200]))
                span.end(end_time=_ns(ts))

    def close(self) -> None:
        """Untap and end the spans still open (tasks unfinished at shutdown)."""
        for untap in self._untap:
            untap()
        self._untap = []
        for span in [*self.auctions.values(), *self.tasks.values()]:
            span.end()
        self.auctions.clear()
        self.tasks.clear()


def default_provider():
    """The tracer provider ``timmy serve --otel`` uses: OTLP (``OTEL_EXPORTER_OTLP_*``) when
    opentelemetry-exporter-otlp is installed, else spans printed as JSON on stderr."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    provider = TracerProvider()
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        exporter = OTLPSpanExporter()
    except ImportError:
        import sys

        exporter = ConsoleSpanExporter(out=sys.stderr)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider
