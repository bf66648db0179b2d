"""The benchmark scripts still run (tiny sizes; their figures are not checked here)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def run(script: str, *args: str, timeout: float = 120) -> str:
    out = subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True,
                         text=True, timeout=timeout)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


@pytest.mark.timeout(150)
def test_throughput_benchmark_prints_its_figures():
    out = run("throughput.py", "--tasks", "60", "--runs", "1", "--latency-tasks", "20")
    assert "tasks/s" in out and "post->assign latency" in out and "p99" in out


@pytest.mark.timeout(150)
def test_scale_benchmark_prints_its_figures():
    out = run("scale.py", "--tasks", "60", "--history", "0,2000", "--runners", "9")
    assert "history     2,000 bids" in out
    assert "runner start-up" in out and "RSS" in out


@pytest.mark.timeout(150)
def test_analytics_benchmark_prints_its_figures():
    out = run("analytics.py", "--tasks", "2000", "--runs", "1", "--sqlite")
    assert "2,000 tasks" in out and "connect()" in out and "slowest query" in out
    assert "connect(sqlite file)" in out
    for name in ("win_rate_by_persona", "price_by_keyword", "latency_percentiles",
                 "price_over_time"):
        assert name in out


@pytest.mark.timeout(150)
def test_simulate_benchmark_prints_its_figures():
    out = run("simulate.py", "--tasks", "5000", "--reference-tasks", "300")
    assert "compiled: 5,000 tasks" in out and "auctions/s" in out
    assert "peak RSS growth" in out and "python reference: 300 tasks" in out


@pytest.mark.timeout(150)
def test_sweep_benchmark_prints_its_figures():
    out = run("sweep.py", "--tasks", "50", "--seeds", "1")
    assert "serial" in out and "speed-up" in out


@pytest.mark.timeout(150)
def test_service_benchmark_prints_its_figures():
    out = run("service.py", "--posts", "40", "--tasks", "40", "--starts", "1")
    assert "requests/s" in out and "p99" in out and "events/s" in out


def need_browser() -> None:
    """Playwright and Chromium, as tests/test_dashboards.py: a skip, but a failure under CI."""
    from timmy.errors import MissingDependency
    from timmy.ops.browser import chromium_path

    try:
        import playwright.sync_api  # noqa: F401
        chromium_path()
    except (ImportError, MissingDependency) as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"playwright and chromium are required under CI=true: {exc}")
        pytest.skip(f"playwright or chromium missing: {exc}")


FIGURE = r"request -> {what}: median ([0-9.]+)s \(min ([0-9.]+)s, max ([0-9.]+)s, 1 loads\)"


@pytest.mark.timeout(300)
def test_dashboard_benchmark_prints_its_figures():
    need_browser()
    out = run("dashboard.py", "--loads", "1", "--tasks", "5", "--modes", "preheated",
              timeout=280)
    for kind in ("desktop", "mobile"):
        trivial = re.search(r"preheated trivial  " + FIGURE.format(
            what=re.escape(f"its table ({kind} size)")), out)
        assert trivial, out
        assert all(float(t) > 0 for t in trivial.groups())
        for what in ("first swarm table", "first chart"):
            found = re.search(f"preheated {kind:8} " + FIGURE.format(what=what)
                              + r"; ([0-9.]+)x the trivial page", out)
            assert found, (kind, what, out)
            median, *_, ratio = map(float, found.groups())
            assert median > 0 and ratio > 0
            assert ratio == pytest.approx(median / float(trivial.group(1)), abs=0.03)  # rounding


@pytest.mark.timeout(150)
def test_voice_benchmark_prints_its_figures():
    out = run("voice.py", "--tasks", "30", "--runs", "1", "--warmup", "10")
    assert "speech:" in out and "voice=True" in out and "us" in out.splitlines()[-1]
    assert "announcer run 1: heard" in out


@pytest.mark.timeout(150)
def test_soak_benchmark_prints_its_figures():
    out = run("soak.py", "--tasks", "200", "--minutes", "0.15", "--sample", "1")
    assert "lost or duplicated: 0" in out and "orphan processes: 0" in out
    assert "MB/hour" in out and "problems 0" in out and "RSS over the run: 0 min" in out


@pytest.mark.timeout(150)
def test_experiment_benchmark_prints_its_figures():
    out = run("experiment.py", "--tasks", "40", "--replications", "2", "--workers", "1")
    assert "4 variants x 2 replications x 40 tasks" in out
    assert "serial" in out and "speed-up" in out
    assert "same tables serial and on Dask: True" in out


@pytest.mark.timeout(150)
def test_mechanisms_benchmark_prints_simulated_auctions_per_second_per_mechanism():
    out = run("mechanisms.py", "--tasks", "2000", "--reference-tasks", "200")
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines()[2:]}
    assert set(rows) == {"specialist_first", "lowest", "second_price", "first_price",
                         "reputation", "score", "redundant"}
    assert all(cells[0].replace(",", "").isdigit() for cells in rows.values())
    assert rows["lowest"][1].replace(",", "").isdigit()   # compiled where it clears the rule
    assert rows["score"][1:] == ["-", "(rule:", "python", "only)"]
    out = run("mechanisms.py", "--reference-tasks", "100", "--strategy", "shade:0.2",
              "--rule", "score:w_price=0.7,w_quality=0.3")
    assert "strategy shade:0.2" in out and "score:w_price=0.7,w_quality=0.3" in out
