"""Prometheus metrics for real: a live ``timmy serve --metrics-port`` scraped over HTTP and
by a real Prometheus server (Debian's ``prometheus``; skipped without it, failed under
``CI=true``), the Grafana dashboard's queries checked against what /metrics serves, and
the optional OpenTelemetry spans read back from the SDK's in-memory exporter."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

import timmy

pytest.importorskip("prometheus_client")

ROOT = Path(__file__).resolve().parent.parent
LISTENING = re.compile(r"listening on (tcp://[\d.]+:\d+)")
METRICS_AT = re.compile(r"metrics at (http://\S+/metrics)")
SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$")
ALLOWED_LABELS = {"state", "rule", "outcome", "on_spec", "status", "event", "kind", "le"}


class MetricsService:
    """``timmy serve --metrics-port 0`` in a subprocess, with its two addresses."""

    def __init__(self, db: Path, *extra: str) -> None:
        self.db = db
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "timmy", "serve", "--db", str(db), "--port", "0",
             "--metrics-port", "0", "--task-seconds", "0", "--seed", "1", *extra],
            cwd=db.parent, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.url = self.metrics_url = None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and self.url is None:
            line = self.proc.stdout.readline()
            if not line:
                raise AssertionError(f"timmy serve ended: {self.proc.stderr.read()}")
            if m := METRICS_AT.search(line):
                self.metrics_url = m.group(1)
            if m := LISTENING.search(line):
                self.url = m.group(1)
        assert self.url and self.metrics_url, "timmy serve did not say where it listens"
        self.token = Path(f"{db}.token").read_text().strip()

    def attach(self):
        return timmy.Swarm.attach(self.url, token=self.token)

    def scrape(self) -> str:
        with urllib.request.urlopen(self.metrics_url, timeout=10) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/plain")
            return resp.read().decode()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        self.proc.communicate(timeout=30)


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    svc = MetricsService(tmp_path_factory.mktemp("metrics") / "swarm.db", "--budget", "1000000")
    yield svc
    svc.stop()


def samples(text: str) -> dict[tuple[str, str], float]:
    """(name, labels) -> value of every sample in an exposition."""
    out = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        m = SAMPLE.match(line)
        assert m, f"not a sample line: {line!r}"
        out[(m.group(1), m.group(2) or "")] = float(m.group(3))
    return out


def value(text: str, name: str, labels: str = "") -> float:
    return samples(text).get((name, labels), 0.0)


def test_metrics_move_when_tasks_run_and_labels_stay_bounded(service):
    before = service.scrape()
    with service.attach() as swarm:
        results = swarm.run([f"write the docs for module {i}" for i in range(12)], timeout=60)
        agent_ids = {a.agent_id for a in swarm.agents()}
    assert all(t.status == "completed" for t in results)
    after = service.scrape()
    done = '{state="completed"}'
    assert value(after, "timmy_tasks", done) >= value(before, "timmy_tasks", done) + 12
    assert value(after, "timmy_tasks_finished_total", done) >= \
        value(before, "timmy_tasks_finished_total", done) + 12
    assert value(after, "timmy_post_to_done_seconds_count", done) >= 12
    assert value(after, "timmy_post_to_assign_seconds_count") >= 12
    won = sum(v for (n, lab), v in samples(after).items()
              if n == "timmy_auctions_total" and 'outcome="won"' in lab)
    assert won >= 12
    bids = sum(v for (n, _), v in samples(after).items() if n == "timmy_bids_total")
    assert bids >= 12
    assert value(after, "timmy_store_write_seconds_count") > 0
    assert value(after, "timmy_store_batch_rows_sum") > 0
    assert value(after, "timmy_runners_live") == 9
    assert value(after, 'timmy_spend_sats', '{kind="paid"}') > 0
    assert value(after, "timmy_budget_sats") == 1_000_000
    # no task or agent id in any label: only the bounded label names, no id in any value
    for (name, labels) in samples(after):
        for key, val in re.findall(r'(\w+)="([^"]*)"', labels):
            assert key in ALLOWED_LABELS, (name, labels)
            assert val not in agent_ids, (name, labels)


def test_other_paths_are_404(service):
    base = service.metrics_url.rsplit("/", 1)[0]
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(base + "/nope", timeout=10)
    assert err.value.code == 404


# -- a real Prometheus server ------------------------------------------------------------


def _prometheus_binary() -> str:
    path = shutil.which("prometheus") or ("/usr/bin/prometheus"
                                          if os.path.exists("/usr/bin/prometheus") else None)
    if path is None:
        why = ("no prometheus binary: install Debian's prometheus package "
               "(make system-deps does, as root)")
        if os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
            pytest.fail(why + " (CI is set: not skipping)", pytrace=False)
        pytest.skip(why)
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_real_prometheus_scrapes_the_service_and_sees_completions_move(service, tmp_path):
    binary = _prometheus_binary()
    target = urllib.parse.urlsplit(service.metrics_url).netloc
    config = tmp_path / "prometheus.yml"
    config.write_text("global:\n  scrape_interval: 200ms\n  scrape_timeout: 150ms\n"
                      "scrape_configs:\n  - job_name: timmy\n"
                      f"    static_configs:\n      - targets: ['{target}']\n")
    port = _free_port()
    with open(tmp_path / "prometheus.log", "w") as log:
        proc = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=subprocess.DEVNULL, stderr=log)
    api = f"http://127.0.0.1:{port}/api/v1/query?query="

    def query(expr: str) -> float | None:
        try:
            with urllib.request.urlopen(api + urllib.parse.quote(expr), timeout=5) as resp:
                body = json.load(resp)
        except (OSError, ValueError):
            return None
        result = body.get("data", {}).get("result", [])
        return float(result[0]["value"][1]) if result else None

    try:
        def seen(expr: str, at_least: float, timeout: float = 60):
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                got = query(expr)
                if got is not None and got >= at_least:
                    return got
                assert proc.poll() is None, (tmp_path / "prometheus.log").read_text()
                time.sleep(0.2)
            pytest.fail(f"Prometheus never saw {expr} >= {at_least} (last {query(expr)}); "
                        f"log: {(tmp_path / 'prometheus.log').read_text()[-2000:]}")

        assert seen('up{job="timmy"}', 1) == 1
        start = seen('timmy_tasks_finished_total{state="completed"}', 0)
        with service.attach() as swarm:
            swarm.run([f"draft release note {i}" for i in range(5)], timeout=60)
        assert seen('timmy_tasks_finished_total{state="completed"}', start + 5) >= start + 5
        assert seen("timmy_runners_live", 9) == 9
    finally:
        proc.terminate()
        proc.wait(timeout=30)


# -- the Grafana dashboard ------------------------------------------------------------


def test_grafana_dashboard_queries_only_metrics_that_exist(service):
    dashboard = json.loads((ROOT / "docs" / "grafana-timmy.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 10
    names = {name for name, _ in samples(service.scrape())}
    queried = {m for e in exprs for m in re.findall(r"\btimmy_[a-z_]+", e)}
    assert queried, "the dashboard queries no timmy metric"
    missing = sorted(queried - names)
    assert not missing, f"the dashboard queries metrics /metrics does not serve: {missing}"


# -- OpenTelemetry ---------------------------------------------------------------------


def test_otel_one_span_per_task_with_its_auction_as_child(db_url):
    pytest.importorskip("opentelemetry.sdk")
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from timmy.service.tracing import TaskTracer

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with timmy.Swarm(db_url, seed=3, task_seconds=0) as swarm:
        swarm.spawn_all()
        journal = swarm._async.engine.journal
        subscribers = len(journal.subscribers)
        tracer = TaskTracer(swarm, provider)
        assert len(journal.subscribers) == subscribers, "tapped: no Event built per emit"
        results = swarm.run([f"write the docs for module {i}" for i in range(4)], timeout=60)
        tracer.close()
    spans = exporter.get_finished_spans()
    tasks = {s.attributes["timmy.task_id"]: s for s in spans if s.name == "task"}
    auctions = [s for s in spans if s.name == "auction"]
    assert set(tasks) == {t.task_id for t in results}
    for t in results:
        root = tasks[t.task_id]
        assert root.parent is None
        assert root.attributes["timmy.status"] == "completed"
        assert root.attributes["timmy.price_sats"] == t.price_sats
        mine = [a for a in auctions if a.attributes["timmy.task_id"] == t.task_id]
        assert mine, f"task {t.task_id} has no auction span"
        for a in mine:
            assert a.parent.span_id == root.context.span_id
            assert a.context.trace_id == root.context.trace_id
            assert root.start_time <= a.start_time <= a.end_time <= root.end_time
        assert mine[-1].attributes["timmy.winner"] == t.assigned_agent
        assert mine[-1].attributes["timmy.bids"] >= 1
