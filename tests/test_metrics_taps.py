"""The Prometheus counters come from journal taps, not an event subscription (a subscriber
makes every emit build an `Event`): on a live swarm they agree with the stored events, no
subscriber is added, and closing them removes every tap. The /metrics endpoint answers a
request that arrives in pieces, and drops one that never finishes its head."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import anyio
import pytest

from timmy import AsyncSwarm

pytest.importorskip("prometheus_client")

from timmy.service.metrics import MetricsEndpoint, SwarmMetrics

FINAL = {"task_completed": "completed", "task_failed": "failed", "task_cancelled": "cancelled"}
RUNNER = {"agent_restarted": "restarted", "agent_crashed": "crashed", "agent_hung": "hung",
          "agent_reconnected": "reconnected", "agent_failed": "failed",
          "agent_disconnected": "disconnected"}


@pytest.mark.timeout(120)
def test_tapped_counts_match_the_stored_events_and_nothing_subscribes(db_url):
    async def main():
        async with AsyncSwarm(db_url, seed=1, task_seconds=0) as swarm:
            await swarm.spawn_all()
            await swarm.run(["warm up the runners"], timeout=30)
            journal = swarm.engine.journal
            subscribers = list(journal.subscribers)
            metrics = SwarmMetrics(swarm)
            assert journal.subscribers == subscribers, "metrics must not subscribe"
            first = journal.next_event
            done = await swarm.run([f"write the docs for module {i}" for i in range(15)]
                                   + ["fix the bug in the api client"] * 5, timeout=60)
            victim = (await swarm.agents())[0].agent_id
            await swarm.kill(victim)
            deadline = time.monotonic() + 30
            while metrics.runner_events["restarted"] < 1 and time.monotonic() < deadline:
                await anyio.sleep(0.05)
            events = [e for e in await swarm.events(after=first - 1, limit=10_000)
                      if e.event_id < journal.next_event]
            counted = {
                "events": metrics.events, "bids": dict(metrics.bids),
                "auctions": dict(metrics.auctions), "finished": dict(metrics.finished),
                "paid": metrics.paid_sats, "assigned": metrics.post_to_assign.n,
                "done": {s: h.n for s, h in metrics.post_to_done.items()},
                "runner": dict(metrics.runner_events),
            }
            text = MetricsEndpoint(metrics).render().decode()
            metrics.close()
            assert journal.taps == {} and journal.on_write is None
            await swarm.run(["write a blog article"], timeout=30)
            after_close = (metrics.bids[True] + metrics.bids[False],
                           metrics.finished["completed"], metrics.events)
            return done, events, counted, text, after_close

    done, events, counted, text, after_close = anyio.run(main)
    assert [t.status for t in done] == ["completed"] * 20
    kinds = Counter(e.kind for e in events)
    assert counted["events"] == len(events) > 0
    bids = Counter(bool(e.data["on_spec"]) for e in events if e.kind == "bid")
    assert counted["bids"] == {True: bids[True], False: bids[False]}
    assert bids[True] > 0 and bids[False] > 0
    auctions = Counter((e.data["rule"], "won" if e.agent_id else "no_winner")
                       for e in events if e.kind == "auction_closed")
    assert counted["auctions"] == dict(auctions)
    assert counted["finished"] == {s: kinds[k] for k, s in FINAL.items()}
    assert counted["finished"]["completed"] == 20
    assert counted["paid"] == sum(e.data["price_sats"] for e in events
                                  if e.kind == "task_completed") > 0
    assert counted["assigned"] == kinds["task_assigned"] >= 20
    assert counted["done"] == {s: kinds[k] for k, s in FINAL.items()}
    assert counted["runner"] == {name: kinds[k] for k, name in RUNNER.items()}
    assert counted["runner"]["crashed"] == counted["runner"]["restarted"] == 1
    assert 'timmy_runner_restarts_total 1.0' in text
    assert f'timmy_events_total {float(len(events))}' in text
    assert after_close == (bids[True] + bids[False], 20, len(events)), \
        "a closed collector still counts"


def _request(port: int, pieces: list[bytes], pause: float = 0.05) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        for piece in pieces:
            s.sendall(piece)
            time.sleep(pause)
        s.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out


def _against_an_endpoint(db_path, client):
    """``client(port)``, on a thread, against the metrics endpoint of a fresh local swarm."""
    async def main():
        async with AsyncSwarm(str(db_path), seed=1, task_seconds=0) as swarm:
            endpoint = MetricsEndpoint(SwarmMetrics(swarm))
            url = await endpoint.start("127.0.0.1", 0)
            port = int(url.rsplit(":", 1)[1].split("/")[0])
            try:
                return await anyio.to_thread.run_sync(client, port)
            finally:
                await endpoint.close()

    return anyio.run(main)


@pytest.mark.timeout(60)
def test_endpoint_answers_a_request_in_pieces_and_404s_the_rest(db_path):
    def client(port: int) -> tuple[bytes, ...]:
        return (_request(port, [b"GET /metr", b"ics?x=1 HTTP/1.1\r\nHost: a\r\n",
                                b"Accept: */*\r\n\r\n"]),
                _request(port, [b"GET /nope HTTP/1.0\r\n\r\n"]),
                _request(port, [b"POST /metrics HTTP/1.0\r\n\r\n"]),
                _request(port, [b"GET /metrics HTTP/1.0"]))

    split, other, post, half = _against_an_endpoint(db_path, client)
    head, _, body = split.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK")
    assert int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0]) == len(body)
    assert b"\ntimmy_runners_live 0.0\n" in body
    assert other.startswith(b"HTTP/1.1 404") and post.startswith(b"HTTP/1.1 404")
    assert half == b"", "a head cut short is not answered"


@pytest.mark.timeout(60)
def test_clients_that_send_nothing_cannot_hold_more_than_the_cap(db_path):
    """Slow clients hold at most MAX_OPEN_SCRAPES connections (each for 10 s at most); one
    more is closed at once, and a scrape works again as soon as one of them goes."""
    from timmy.service.metrics import MAX_OPEN_SCRAPES

    def crowd(port: int) -> tuple[bytes, bytes]:
        idle = [socket.create_connection(("127.0.0.1", port), timeout=10)
                for _ in range(MAX_OPEN_SCRAPES)]
        try:
            for s in idle:
                s.sendall(b"GET /metrics HTTP/1.0\r\n")   # never the blank line
            time.sleep(0.3)
            with socket.create_connection(("127.0.0.1", port), timeout=10) as extra:
                extra.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
                try:
                    refused = extra.recv(100)
                except ConnectionResetError:
                    refused = b""
            idle.pop().close()
            time.sleep(0.3)
            return refused, _request(port, [b"GET /metrics HTTP/1.0\r\n\r\n"])
        finally:
            for s in idle:
                s.close()

    refused, served = _against_an_endpoint(db_path, crowd)
    assert refused == b"", "over the cap: closed without an answer"
    assert served.startswith(b"HTTP/1.1 200 OK")


@pytest.mark.timeout(150)
def test_metrics_benchmark_prints_its_figures():
    script = Path(__file__).resolve().parent.parent / "benchmarks" / "metrics.py"
    out = subprocess.run([sys.executable, str(script), "--tasks", "40", "--runs", "1",
                          "--scrape-every", "0.001", "--engine-rounds", "3"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    for mode in ("A no metrics", "B --metrics-port, not scraped", "C --metrics-port, scraped"):
        assert mode in out.stdout
    assert out.stdout.count("us/task") == 3 and "one scrape of /metrics: median" in out.stdout
    assert "on the engine's thread, one task's 15 events" in out.stdout
