"""What the real executors cost on top of the work they wait for. Prints figures, asserts nothing.

Section ``ollama``, against the Ollama look-alike of tests/ollama_server.py run in a
process of its own (no model runs, and the server reports its own time per request):

- overhead per task: `timmy.engine.ollama.OllamaExecutor.run` called directly, the server waiting
  ``--delay`` seconds before each answer. Overhead = the executor's elapsed time minus
  the server's own duration for that request (what Ollama reports as
  ``total_duration``): building the request, the client, HTTP on loopback, parsing the
  streamed pieces. Median and p90 over ``--tasks`` tasks, for a short answer and a long
  one (``--long-words`` pieces), and from the two a fixed cost plus a cost per piece.
- end to end: tasks/s through a live swarm (``--runners`` runner processes, a SQLite
  file) with ``executor="ollama"`` (server delay 0) against ``executor="simulated"``
  (task_seconds 0), ``--swarm-tasks`` tasks posted at once. The server is Python on the
  same cores, so part of the gap is its cost, not timmy's.

    python benchmarks/executors.py [--section ollama] [--tasks 200] [--delay 0.05]

Section ``voice`` runs ``benchmarks/voice.py``: swarm throughput with no subscriber, a
no-op subscriber, an announcer saving WAVs and ``voice=True`` (the announcer's effect on
auctions should be nil), and the announcer's cost per event on the engine's thread.
A section is a name, a function that adds its options to the parser, and a function
that runs it with the parsed arguments (`SECTIONS`).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import timmy
from timmy.engine.ollama import OllamaExecutor
from timmy.market.personas import PERSONAS
from timmy.sim.workloads import demo_descriptions

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Section:
    name: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], None]


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


# -- ollama ----------------------------------------------------------------------------------


def ollama_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--tasks", type=int, default=200, help="executor calls per answer length")
    ap.add_argument("--delay", type=float, default=0.05,
                    help="seconds the server waits before answering (its 'model time')")
    ap.add_argument("--long-words", type=int, default=300,
                    help="pieces in the long answer (one streamed line each)")
    ap.add_argument("--swarm-tasks", type=int, default=300)
    ap.add_argument("--runners", type=int, default=9, help="personas in the swarm (<= 9)")


@contextlib.contextmanager
def loopback_server(delay: float = 0.0, *args: str):
    """The Ollama look-alike (tests/ollama_server.py, with its command-line ``args``) in a
    process of its own, so it takes no CPU from ours; yields its URL."""
    proc = subprocess.Popen([sys.executable, str(HERE.parent / "tests" / "ollama_server.py"),
                             "--delay", repr(delay), *args], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        url = proc.stdout.readline().strip()
        if not url:
            raise SystemExit("the loopback Ollama server did not start")
        yield url
    finally:
        proc.stdin.close()    # it serves until its stdin closes
        proc.wait(10)


def executor_overhead(url: str, n: int, words: int) -> tuple[int, list[float], list[float]]:
    """(pieces per answer, elapsed per task, overhead per task) over ``n`` tasks."""
    executor = OllamaExecutor(PERSONAS["forge"], host=url, timeout=30)
    description = " ".join(["fix"] * max(1, words - 3))   # answer: "<model> says: ..." pieces
    executor.run(0, description, 1, True)                   # warm: the connection is kept
    elapsed, overhead = [], []
    for task_id in range(1, n + 1):
        outcome = executor.run(task_id, description, 1, True)
        assert outcome.ok, outcome.output
        elapsed.append(outcome.elapsed_s)
        overhead.append(outcome.elapsed_s - outcome.usage.server_s)
    return outcome.usage.output_tokens, elapsed, overhead


def swarm_rate(db: str, executor: str, n: int, personas: list[str], host: str) -> float:
    with timmy.Swarm(db, seed=1, executor=executor, task_seconds=0, ollama_host=host) as swarm:
        swarm.spawn_all(personas)
        swarm.run(demo_descriptions(max(n // 10, len(personas)), 1000), timeout=300)  # warm up
        work = demo_descriptions(n, 1)
        t0 = time.perf_counter()
        done = swarm.run(work, timeout=600)
        rate = n / (time.perf_counter() - t0)
        failed = sum(t.status != "completed" for t in done)
    if executor == "ollama" and failed:
        print(f"  warning: {failed} of {n} tasks did not complete through the server")
    return rate


def ollama_section(args: argparse.Namespace) -> None:
    print(f"ollama executor: {args.tasks} tasks per answer length, loopback server waiting "
          f"{args.delay * 1e3:.0f} ms before each answer")
    with loopback_server(args.delay) as url:
        rows = []
        for label, words in (("short answer", 8), ("long answer", args.long_words)):
            pieces, elapsed, overhead = executor_overhead(url, args.tasks, words)
            rows.append((pieces, statistics.median(overhead)))
            print(f"  {label:<13} {pieces:>5} pieces: per task median "
                  f"{statistics.median(elapsed) * 1e3:7.2f} ms; overhead per task (timmy, "
                  f"client, HTTP) median {rows[-1][1] * 1e3:.2f} ms, p90 "
                  f"{pct(overhead, 0.9) * 1e3:.2f} ms")
        (p1, o1), (p2, o2) = rows
        if p2 > p1:
            per_piece = (o2 - o1) / (p2 - p1)
            print(f"  i.e. about {(o1 - per_piece * p1) * 1e3:.2f} ms per task plus "
                  f"{per_piece * 1e6:.1f} us per streamed piece")
    personas = list(PERSONAS)[: max(1, min(args.runners, len(PERSONAS)))]
    print(f"end to end: {args.swarm_tasks} tasks posted at once, {len(personas)} runners, "
          "server delay 0 / task_seconds 0")
    with loopback_server(0.0) as url, tempfile.TemporaryDirectory() as tmp:
        rates = {}
        for executor in ("simulated", "ollama"):
            db = f"sqlite:///{Path(tmp) / f'{executor}.db'}"
            rates[executor] = swarm_rate(db, executor, args.swarm_tasks, personas, url)
            print(f"  executor={executor:<9} {rates[executor]:8,.0f} tasks/s")
    print(f"  ollama / simulated: {rates['ollama'] / rates['simulated']:.2f}x "
          "(the server is Python on the same cores: part of the gap is its cost)")


# -- voice -----------------------------------------------------------------------------------


def voice_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--voice-tasks", type=int, default=1000, help="tasks per voice run")
    ap.add_argument("--voice-runs", type=int, default=3)


def voice_section(args: argparse.Namespace) -> None:
    """The voice announcer's effect on auction throughput: benchmarks/voice.py, run here."""
    print("== voice: the announcer's effect on auction throughput (benchmarks/voice.py)",
          flush=True)
    subprocess.run([sys.executable, str(HERE / "voice.py"), "--tasks", str(args.voice_tasks),
                    "--runs", str(args.voice_runs)], check=True)


SECTIONS: list[Section] = [Section("ollama", ollama_arguments, ollama_section),
                           Section("voice", voice_arguments, voice_section)]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    names = [s.name for s in SECTIONS]
    ap.add_argument("--section", action="append", choices=names,
                    help=f"run only this section (repeatable; default: all of {', '.join(names)})")
    for section in SECTIONS:
        section.add_arguments(ap)
    args = ap.parse_args(argv)
    for section in SECTIONS:
        if args.section is None or section.name in args.section:
            section.run(args)


if __name__ == "__main__":
    main()
