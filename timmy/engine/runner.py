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
from timmy.market.personas import Persona, get_persona, persona_from_dict
from timmy.market.strategies import record_auction

READ_SIZE = 1 << 16


class Runner:
    """One persona's bidding, execution and learning, over any byte stream.

    It bids on every announced task, executes the tasks it wins one after another (the
    coordinator decides how many it may hold) and learns from every clearing price.
    Replies are batched: everything read in one ``os.read`` is answered with one
    ``os.write``, which is what lets a swarm clear thousands of auctions a second.
    """

    spec: p.RunnerSpec | None = None   # what it was started from (`from_spec`)

    def __init__(self, persona, agent_id: str, seed: int, executor, out_fd: int = 1,
                 stats: BidStats | None = None) -> None:
        self.persona, self.agent_id, self.seed = persona, agent_id, seed
        self.executor = executor
        self.stats = stats or BidStats()
        # task -> (on_spec, keywords, sats): what it bid, until the task is done or lost
        self.quotes: dict[int, tuple[bool, tuple[str, ...], int]] = {}
        self._out_fd = out_fd
        # Bumped when a remote runner's connection is replaced: work and answers meant for
        # a lost connection are dropped, never written to the next one.
        self.generation = 0
        self.shutdown: p.Shutdown | None = None   # the coordinator's shutdown, once received
        self._lock = threading.Lock()
        self._work: queue.SimpleQueue = queue.SimpleQueue()
        if not executor.instant:
            threading.Thread(target=self._worker, daemon=True).start()

    @classmethod
    def from_spec(cls, spec: p.RunnerSpec, out_fd: int = 1,
                  where: tuple[str, str] = ("--spec persona", "--spec stats")) -> Runner:
        """The runner ``spec`` describes, or the `TimmyError` saying which setting is wrong;
        ``where`` names the persona's and the counters' source in that error."""
        persona = load_persona(spec.persona, where[0])
        executor = make_executor(
            spec.executor, seed=spec.seed, agent_id=spec.agent_id,
            task_seconds=spec.task_seconds, persona=persona, model=spec.model,
            host=spec.ollama_host or None, timeout=spec.ollama_timeout)
        stats = None if spec.stats is None else BidStats.from_dict(spec.stats, where[1])
        runner = cls(persona, spec.agent_id, spec.seed, executor, out_fd=out_fd, stats=stats)
        runner.spec = spec
        return runner

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
                self.quotes[tid] = (q.on_spec, q.keywords, q.sats)
                out.append(p.encode(p.Bid(task_id=tid, sats=q.sats, on_spec=q.on_spec)))
            case p.AuctionClosed(task_id=tid, winner=winner, price_sats=price):
                won = winner == self.agent_id
                bid = self.quotes.get(tid)
                if bid is None:   # no bid of ours in memory: only the counters learn
                    self.stats.record_auction(won)
                else:             # the strategy learns too (a bandit from its wins)
                    record_auction(self.persona, self.stats, won, bid[2], bid[0], price)
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
        on_spec, keywords, _ = self.quotes.pop(tid, (None, (), 0))
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


def load_persona(value: str | dict, where: str) -> Persona:
    """A spec's persona: a built-in id, or the fields of one (`PersonaError` otherwise)."""
    if isinstance(value, dict):
        return persona_from_dict(value, where=where)
    return get_persona(value)


# The flags that build a spec by hand, each a `RunnerSpec` field of the same name.
FLAGS = ("agent_id", "persona", "seed", "executor", "task_seconds", "model", "ollama_host",
         "ollama_timeout", "stats")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m timmy.engine.runner", description=__doc__.split("\n")[0],
        epilog="The coordinator starts a runner with --spec; the other flags build the same "
               "settings by hand (--agent-id and --persona at least).")
    ap.add_argument("--spec", metavar="JSON",
                    help="every setting at once: a RunnerSpec (timmy.engine.protocol) as JSON")
    ap.add_argument("--agent-id")
    ap.add_argument("--persona", help="a built-in persona id, or JSON of one")
    ap.add_argument("--seed", type=int, help="seeds the bids and simulated runs (default: 0)")
    ap.add_argument("--executor", help="simulated (default), echo or ollama")
    ap.add_argument("--task-seconds", type=float,
                    help="mean simulated task duration (default: 0.05)")
    ap.add_argument("--model", default=None,
                    help="ollama: the model to ask (default: TIMMY_OLLAMA_MODEL, else llama3.2)")
    ap.add_argument("--ollama-host", default=None,
                    help="ollama: the server (default: OLLAMA_HOST, else http://127.0.0.1:11434)")
    ap.add_argument("--ollama-timeout", type=float, default=None,
                    help="ollama: seconds the server may stay silent before the task fails")
    ap.add_argument("--stats", default=None,
                    help="learned counters to start from (JSON; given to a replacement runner)")
    args = ap.parse_args(argv)
    given = [f for f in FLAGS if getattr(args, f) is not None]
    if args.spec is not None and given:
        ap.error("--spec carries every setting: give it alone, or "
                 + ", ".join("--" + f.replace("_", "-") for f in given) + " without it")
    if args.spec is None and (args.agent_id is None or args.persona is None):
        ap.error("the following arguments are required: --agent-id, --persona (or --spec)")
    return args


def spec_from_args(args: argparse.Namespace) -> p.RunnerSpec:
    """The `RunnerSpec` the command line gives: ``--spec``, or one built from the flags;
    `ConfigError` (`PersonaError` for a persona that is not JSON) saying what is wrong."""
    if args.spec is not None:
        return p.decode_spec(args.spec)
    fields = {f: getattr(args, f) for f in FLAGS if getattr(args, f) is not None}
    if args.persona.startswith("{"):
        try:
            fields["persona"] = json.loads(args.persona)
        except ValueError as exc:
            raise PersonaError(f"--persona is not valid JSON: {exc}",
                               hint="pass a persona id or a JSON object") from None
    if args.stats is not None:
        try:
            fields["stats"] = json.loads(args.stats)
        except ValueError as exc:
            raise ConfigError(f"--stats is not a set of learned counters: {exc}",
                              hint='e.g. {"auctions": 5, "wins": 1, "won_ok": 1, '
                                   '"won_failed": 0}') from None
        if not isinstance(fields["stats"], dict):   # BidStats.from_dict names the flag
            BidStats.from_dict(fields["stats"], "--stats")
    return p.convert_spec(fields, "the command line")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Ctrl-C in a terminal reaches the whole process group; the coordinator stops us cleanly.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        spec = spec_from_args(args)
        by_hand = args.spec is None
        runner = Runner.from_spec(spec, where=("--persona", "--stats") if by_hand
                                  else ("--spec persona", "--spec stats"))
    except TimmyError as exc:
        print(f"timmy.engine.runner: {exc}", file=sys.stderr)
        return 2
    try:
        return runner.serve()
    except (BrokenPipeError, KeyboardInterrupt):
        return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush = lambda: None  # stdout may be a closed pipe; nothing is buffered there
    os._exit(code)
