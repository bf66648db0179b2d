"""``python -m timmy.engine.runner``: one persona agent in one OS process, speaking JSON lines
on stdin/stdout. It bids, executes what it wins and learns from every clearing price; it
exits when stdin closes, and imports nothing heavy.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import signal
import sys
import threading

from timmy.engine import protocol as p
from timmy.engine.executors import Outcome, make_executor
from timmy.errors import ConfigError, PersonaError, TimmyError
from timmy.market.bidding import BidStats, bid_rng, quote
from timmy.market.personas import get_persona, persona_from_dict

READ_SIZE = 1 << 16


class Runner:
    """One persona's bidding, execution and learning, over any byte stream.

    It bids on every announced task, executes the tasks it wins one after another (the
    coordinator decides how many it may hold) and learns from every clearing price.
    Replies are batched: everything read in one ``os.read`` is answered with one
    ``os.write``, which is what lets a swarm clear thousands of auctions a second.
    """

    def __init__(self, persona, agent_id: str, seed: int, executor, out_fd: int = 1,
                 stats: BidStats | None = None) -> None:
        self.persona, self.agent_id, self.seed = persona, agent_id, seed
        self.executor = executor
        self.stats = stats or BidStats()
        self.quotes: dict[int, tuple[bool, tuple[str, ...]]] = {}  # task -> (on_spec, keywords)
        self._out_fd = out_fd
        # Bumped when a remote runner's connection is replaced: work and answers meant for
        # a lost connection are dropped, never written to the next one.
        self.generation = 0
        self.shutdown: p.Shutdown | None = None   # the coordinator's shutdown, once received
        self._lock = threading.Lock()
        self._work: queue.SimpleQueue = queue.SimpleQueue()
        if not executor.instant:
            threading.Thread(target=self._worker, daemon=True).start()

    # -- output -------------------------------------------------------------
    def write(self, data: bytes, generation: int | None = None) -> None:
        """Write all of ``data``; dropped if it answers a connection that is gone."""
        with self._lock:
            if generation is not None and generation != self.generation:
                return
            view = memoryview(data)
            while view:
                view = view[os.write(self._out_fd, view):]

    # -- handling -----------------------------------------------------------
    def handle(self, msg, out: list[bytes]) -> bool:
        """Handle one message, appending replies to ``out``. False means: exit."""
        match msg:
            case p.Announce(task_id=tid, description=desc, attempt=attempt):
                rng = bid_rng(self.seed, self.agent_id, tid, attempt)
                q = quote(self.persona, desc, rng, self.stats)
                if len(self.quotes) > 10_000:  # forget auctions whose close never came
                    self.quotes.clear()
                self.quotes[tid] = (q.on_spec, q.keywords)
                out.append(p.encode(p.Bid(task_id=tid, sats=q.sats, on_spec=q.on_spec)))
            case p.AuctionClosed(task_id=tid, winner=winner):
                won = winner == self.agent_id
                self.stats.record_auction(won)
                if not won:
                    self.quotes.pop(tid, None)
            case p.Assign(task_id=tid, description=desc, attempt=attempt):
                if self.executor.instant:
                    out.append(p.encode(p.Started(task_id=tid)))
                    out.append(self._execute(tid, desc, attempt))
                else:
                    self._work.put((tid, desc, attempt, self.generation))
            case p.Ping(seq=seq):
                out.append(p.encode(p.Pong(seq=seq)))
            case p.Shutdown():
                self.shutdown = msg
                return False
        return True

    def _execute(self, tid: int, desc: str, attempt: int) -> bytes:
        on_spec, keywords = self.quotes.pop(tid, (None, ()))
        if on_spec is None:  # assigned without our bid in memory (e.g. after a restart)
            on_spec = self.persona.is_on_spec(desc)
            keywords = tuple(self.persona.matched_keywords(desc))
        try:
            outcome = self.executor.run(tid, desc, attempt, on_spec)
        except Exception as exc:  # an executor bug fails the task, never the runner
            outcome = Outcome(False, f"executor error: {type(exc).__name__}: {exc}", 0.0)
        self.stats.record_result(outcome.ok, keywords)
        return p.encode(p.Result(task_id=tid, ok=outcome.ok, output=outcome.output[: p.MAX_OUTPUT],
                                 elapsed_s=max(outcome.elapsed_s, 0.0), usage=outcome.usage,
                                 permanent=outcome.permanent))

    def _worker(self) -> None:
        try:
            while True:
                tid, desc, attempt, generation = self._work.get()
                if generation != self.generation:
                    continue          # won over a connection that has since been lost
                self.write(p.encode(p.Started(task_id=tid)), generation)
                self.write(self._execute(tid, desc, attempt), generation)
        finally:  # a dead worker would leave every queued task hanging: die loudly instead
            os._exit(1)

    # -- main loop ----------------------------------------------------------
    def serve(self, in_fd: int = 0, pending: bytes = b"") -> int:
        """Say hello, then answer what arrives on ``in_fd`` (after ``pending``, bytes already
        read from it) until it closes or a shutdown comes."""
        self.write(p.encode(p.Hello(agent_id=self.agent_id, persona=self.persona.id,
                                    pid=os.getpid())))
        discarding = False  # inside a line longer than MAX_LINE: drop up to its newline
        while True:
            chunk = os.read(in_fd, READ_SIZE)
            if not chunk:
                return 0  # stdin closed: our coordinator is gone
            lines = (pending + chunk).split(b"\n")
            pending = lines.pop()
            if discarding and lines:
                lines[0] = b""
                discarding = False
            if len(pending) > p.MAX_LINE:
                pending = b""
                discarding = True
            out: list[bytes] = []
            for line in lines:
                if not line.strip():
                    continue
                try:
                    msg = p.decode_coordinator(line)
                except p.ProtocolError as exc:
                    print(f"timmy.engine.runner {self.agent_id}: {exc.message}", file=sys.stderr)
                    continue
                if not self.handle(msg, out):
                    if out:
                        self.write(b"".join(out))
                    return 0
            if out:
                self.write(b"".join(out))


def stats_from_json(text: str) -> BidStats:
    """Learned counters from ``--stats``, or `ConfigError` saying what is wrong."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"--stats is not a set of learned counters: {exc}",
                          hint='e.g. {"auctions": 5, "wins": 1, "won_ok": 1, "won_failed": 0}'
                          ) from None
    return stats_from_dict(data)


def stats_from_dict(data: object, where: str = "--stats") -> BidStats:
    """Learned counters from their `BidStats.to_dict` form, or `ConfigError`."""
    try:
        counts = {k: int(data.get(k, 0)) for k in ("auctions", "wins", "won_ok", "won_failed")}
        keywords = {str(k): int(v) for k, v in data.get("keyword_successes", {}).items()}
        if min([*counts.values(), *keywords.values(), 0]) < 0 or counts["wins"] > counts[
                "auctions"]:
            raise ValueError("counts must be >= 0 and wins <= auctions")
    except (ValueError, TypeError, AttributeError) as exc:
        raise ConfigError(f"{where} is not a set of learned counters: {exc}",
                          hint='e.g. {"auctions": 5, "wins": 1, "won_ok": 1, "won_failed": 0}'
                          ) from None
    return BidStats(**counts, keyword_successes=keywords)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m timmy.engine.runner",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--agent-id", required=True)
    ap.add_argument("--persona", required=True, help="a built-in persona id, or JSON of one")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--executor", default="simulated")
    ap.add_argument("--task-seconds", type=float, default=0.05)
    ap.add_argument("--model", default=None,
                    help="ollama: the model to ask (default: TIMMY_OLLAMA_MODEL, else llama3.2)")
    ap.add_argument("--ollama-host", default=None,
                    help="ollama: the server (default: OLLAMA_HOST, else http://127.0.0.1:11434)")
    ap.add_argument("--ollama-timeout", type=float, default=None,
                    help="ollama: seconds the server may stay silent before the task fails")
    ap.add_argument("--stats", default=None,
                    help="learned counters to start from (JSON; given to a replacement runner)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Ctrl-C in a terminal reaches the whole process group; the coordinator stops us cleanly.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        if args.persona.startswith("{"):
            try:
                data = json.loads(args.persona)
            except ValueError as exc:
                raise PersonaError(f"--persona is not valid JSON: {exc}",
                                   hint="pass a persona id or a JSON object") from None
            persona = persona_from_dict(data, where="--persona")
        else:
            persona = get_persona(args.persona)
        executor = make_executor(
            args.executor, seed=args.seed, agent_id=args.agent_id, task_seconds=args.task_seconds,
            persona=persona, model=args.model, host=args.ollama_host, timeout=args.ollama_timeout,
        )
        stats = None if args.stats is None else stats_from_json(args.stats)
    except TimmyError as exc:
        print(f"timmy.engine.runner: {exc}", file=sys.stderr)
        return 2
    try:
        return Runner(persona, args.agent_id, args.seed, executor, stats=stats).serve()
    except (BrokenPipeError, KeyboardInterrupt):
        return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush = lambda: None  # stdout may be a closed pipe; nothing is buffered there
    os._exit(code)
