"""Chaos soak: a real ``timmy serve`` whose runners are SIGKILLed at random and which is itself
SIGKILLed and restarted (`soak`), then an `audit` of what the database says happened.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

LISTENING = re.compile(r"listening on (tcp://[\d.]+:(\d+))")
TERMINAL = ("completed", "failed", "cancelled")


@dataclass
class Audit:
    """What the store says: task counts by state, and every inconsistency found."""

    tasks: int
    by_status: dict[str, int]
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def audit(db: str | Path, posted: Sequence[str] | None = None,
          max_attempts: int = 3) -> Audit:
    """Check a swarm's SQLite file; ``posted``: the descriptions that were posted, in order.

    It checks that every task ended, none was lost or duplicated or completed twice, and
    that the ``bids`` and ``events`` tables agree with ``tasks``; it can be run on any
    database.
    """
    con = sqlite3.connect(f"{Path(db).absolute().as_uri()}?mode=ro", uri=True)
    try:
        tasks = con.execute("SELECT task_id, description, status, assigned_agent, price_sats,"
                            " attempts, reason FROM tasks ORDER BY task_id").fetchall()
        won = con.execute("SELECT task_id, auction_id, agent_id, attempt FROM bids"
                          " WHERE won").fetchall()
        events = con.execute("SELECT event_id, kind, task_id, agent_id, data FROM events"
                             " ORDER BY event_id").fetchall()
    finally:
        con.close()
    problems: list[str] = []
    by_status = collections.Counter(t[2] for t in tasks)
    if posted is not None:
        stored = collections.Counter(t[1] for t in tasks)
        wanted = collections.Counter(posted)
        lost, extra = wanted - stored, stored - wanted
        if lost:
            problems.append(f"{sum(lost.values())} posted tasks are missing: "
                            f"{list(lost)[:3]}")
        if extra:
            problems.append(f"{sum(extra.values())} tasks stored that were not posted (or "
                            f"stored twice): {list(extra)[:3]}")
    terminal_events = collections.defaultdict(list)
    for _eid, kind, tid, agent, data in events:
        if kind in ("task_completed", "task_failed", "task_cancelled"):
            terminal_events[tid].append((kind, agent, json.loads(data or "{}")))
    wins = collections.defaultdict(list)
    for tid, auction, agent, attempt in won:
        wins[tid].append((auction, agent, attempt))
    for tid, _desc, status, agent, price, attempts, reason in tasks:
        ends = terminal_events.get(tid, [])
        if status not in TERMINAL:
            problems.append(f"task {tid} never ended: {status}")
            continue
        if len(ends) != 1:
            problems.append(f"task {tid} ({status}) has {len(ends)} terminal events: "
                            f"{[k for k, _, _ in ends]}")
        elif ends[0][0] != f"task_{status}":
            problems.append(f"task {tid} is {status} but its event says {ends[0][0]}")
        if attempts > max_attempts:
            problems.append(f"task {tid} took {attempts} attempts (max {max_attempts})")
        auctions = collections.Counter(a for a, _, _ in wins.get(tid, []))
        if any(n > 1 for n in auctions.values()):
            problems.append(f"task {tid} has an auction with two winners")
        if status == "completed":
            if not agent or price is None:
                problems.append(f"task {tid} completed without a winner or a price")
            elif not any(a == agent and att == attempts for _, a, att in wins.get(tid, [])):
                problems.append(f"task {tid} completed by {agent} (attempt {attempts}) but "
                                "no bid of its says it won that auction")
            elif ends and ends[0][1] != agent:
                problems.append(f"task {tid}: completed by {agent}, event says {ends[0][1]}")
        if status == "failed" and not reason:
            problems.append(f"task {tid} failed without a reason")
    return Audit(len(tasks), dict(by_status), problems)


def marked_processes(marker: str) -> list[int]:
    """Pids of live processes whose environment carries ``TIMMY_SOAK=marker``."""
    needle = f"TIMMY_SOAK={marker}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                stat = (entry / "stat").read_text()
                if stat.split(") ", 1)[1][:1] != "Z":
                    found.append(int(entry.name))
        except OSError:
            continue
    return found


LOST = ("died", "lost its connection", "no result within")   # attempts spent on a runner


@dataclass
class StallAudit:
    """What a SIGSTOP of the service did, from the events stored between the stop and
    ``after`` seconds past the resume (the runner SIGKILLs paused meanwhile)."""

    stopped_s: float            # how long the service was stopped
    noticed_s: float            # the longest stall it reported (service_stalled), 0 if none
    hung: int                   # runners it deemed hung (agent_hung) in the window
    crashed: int                # runner processes that died in the window (agent_crashed)
    attempts_lost: int          # attempts spent on a runner lost in the window

    @property
    def ok(self) -> bool:
        return self.noticed_s > 0 and not (self.hung or self.crashed or self.attempts_lost)

    def line(self) -> str:
        return (f"service SIGSTOPped {self.stopped_s:.1f}s (it reported a stall of "
                f"{self.noticed_s:.1f}s): {self.hung} runners deemed hung, {self.crashed} "
                f"runner deaths and {self.attempts_lost} attempts spent on lost runners from "
                "the stop until 10 s after the resume")


def stall_audit(db: str | Path, stopped: float, resumed: float,
                after: float = 10.0) -> StallAudit:
    """Audit the events stored between wall-clock ``stopped`` and ``resumed + after``."""
    con = sqlite3.connect(f"{Path(db).absolute().as_uri()}?mode=ro", uri=True)
    try:
        rows = con.execute("SELECT kind, data FROM events WHERE ts >= ? AND ts <= ? AND kind IN"
                           " ('agent_hung', 'agent_crashed', 'task_requeued', 'task_failed',"
                           " 'service_stalled')", (stopped, resumed + after)).fetchall()
    finally:
        con.close()
    kinds = collections.Counter(k for k, _ in rows)
    lost = sum(1 for k, d in rows if k in ("task_requeued", "task_failed")
               and json.loads(d).get("attempts", 0) > 0
               and any(w in (json.loads(d).get("reason") or "") for w in LOST))
    noticed = max((json.loads(d)["stalled_s"] for k, d in rows if k == "service_stalled"),
                  default=0.0)
    return StallAudit(resumed - stopped, noticed, kinds["agent_hung"], kinds["agent_crashed"],
                      lost)


@dataclass
class SoakReport:
    tasks: int
    seconds: float
    runner_kills: int
    service_kills: int
    orphans: list[int]
    audit: Audit
    stall: StallAudit | None = None

    @property
    def ok(self) -> bool:
        return (self.audit.ok and not self.orphans and self.audit.tasks == self.tasks
                and (self.stall is None or self.stall.ok))

    def lines(self) -> list[str]:
        a = self.audit
        return [
            f"{self.tasks:,} tasks in {self.seconds:.1f}s ({self.tasks / self.seconds:,.0f} "
            f"tasks/s) with {self.runner_kills} runner SIGKILLs and {self.service_kills} "
            "service SIGKILLs",
            "ended: " + ", ".join(f"{k} {v:,}" for k, v in sorted(a.by_status.items())),
            f"stored {a.tasks:,} of {self.tasks:,}; lost or duplicated: "
            f"{sum('missing' in p or 'not posted' in p for p in a.problems)}; other "
            f"problems: {len(a.problems)}; orphan processes: {len(self.orphans)}",
        ] + ([self.stall.line()] if self.stall is not None else [])


class Service:
    """``timmy serve`` on ``db`` in a subprocess, with the soak's marker in its environment."""

    def __init__(self, db: Path, marker: str, args: Sequence[str] = ()) -> None:
        self.db, self.marker, self.args = db, marker, list(args)
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self.url = ""

    def start(self) -> None:
        env = {**os.environ, "TIMMY_SOAK": self.marker}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "timmy", "serve", "--db", str(self.db),
             "--port", str(self.port), *self.args],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
        for line in self.proc.stdout:
            if m := LISTENING.search(line):
                self.url, self.port = m.group(1), int(m.group(2))
                threading.Thread(target=self.proc.stdout.read, daemon=True).start()
                return
        raise RuntimeError(f"timmy serve did not start (code {self.proc.wait()})")

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.kill()

    def token(self) -> str:
        return Path(f"{self.db}.token").read_text().strip()


def soak(db: Path, descriptions: Sequence[str], *, kill_every: float = 0.2,
         service_kills: int = 2, task_seconds: float = 0.02, seed: int = 1,
         timeout: float = 600.0, progress: bool = False, stall: float = 0.0) -> SoakReport:
    """Run the chaos soak on a fresh SQLite file ``db``; returns what happened and the audit.

    ``stall``: SIGSTOP the service for this many seconds once half the tasks have ended
    (runner SIGKILLs pause from a second before until 10 s after), then SIGCONT it.

    It posts ``tasks`` tasks to a service on a SQLite file, kills a random live runner
    every ``kill_every`` seconds (the supervisor restarts it), SIGKILLs the whole service
    after each of ``service_kills`` shares of the work and starts a new one on the same
    database and port, waits until every task has ended, stops the service, looks for
    runner processes left behind, and audits the store; `stall_audit` checks that a stall
    cost no attempt and killed no runner. Runners are found by a marker in their
    environment (``TIMMY_SOAK``, inherited from the service), so orphans are found even
    among processes the soak never saw.
    """
    from timmy.engine.procid import signal_if
    from timmy.errors import TimmyError
    from timmy.service.client import AttachedSwarm

    marker = uuid.uuid4().hex
    # Runners die here every ~kill_every * 9 s each, far past the crash-loop guard (5 restarts
    # a minute, meant for runners that cannot start): lift it, or every agent ends "failed".
    service = Service(db, marker, ["--task-seconds", str(task_seconds), "--seed", str(seed),
                                   "--max-restarts", "1000000"])
    service.start()
    rng = random.Random(seed)
    n = len(descriptions)
    kills = {"runners": 0, "service": 0}
    done = threading.Event()
    killing = threading.Lock()     # held by the stall: no runner SIGKILL around it
    stalled: list[float] = []      # wall-clock times of the SIGSTOP and the SIGCONT
    swarm = AttachedSwarm(service.url, token=service.token())
    for start in range(0, n, 500):
        swarm.post_many(descriptions[start:start + 500])
    t0 = time.perf_counter()

    def killer() -> None:
        while not done.wait(kill_every * rng.uniform(0.5, 1.5)):
            with killing, contextlib.suppress(TimmyError, OSError):
                live = [a.pid for a in swarm.agents() if a.pid and a.status in ("idle", "busy")]
                # Only a runner of this soak (its marker in its environment): an agent's pid
                # may be stale, or a remote runner's on another machine.
                if live and signal_if(rng.choice(live), signal.SIGKILL, "TIMMY_SOAK", marker):
                    kills["runners"] += 1

    thread = threading.Thread(target=killer, daemon=True, name="timmy-chaos")
    thread.start()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n, desc="chaos soak", unit="task")
    shares = [(i + 1) * n // (service_kills + 1) for i in range(service_kills)]
    ended = 0
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                counts = swarm.status()["tasks"]
            except (TimmyError, OSError):
                time.sleep(0.1)
                continue
            ended = sum(counts.get(s, 0) for s in TERMINAL)
            if bar is not None:
                bar.update(ended - bar.n)
            if shares and ended >= shares[0]:
                shares.pop(0)
                service.kill()
                kills["service"] += 1
                service.start()
                continue
            if ended >= n:
                break
            if stall and not stalled and ended >= n // 2:
                with killing:
                    time.sleep(1.0)
                    stalled.append(time.time())
                    service.proc.send_signal(signal.SIGSTOP)
                    try:
                        time.sleep(stall)
                    finally:
                        service.proc.send_signal(signal.SIGCONT)
                        stalled.append(time.time())
                    time.sleep(10.0)
                continue
            time.sleep(0.1)
    finally:
        done.set()
        thread.join(5)
        seconds = time.perf_counter() - t0
        if bar is not None:
            bar.close()
        swarm.close()
        service.stop()
    orphans = marked_processes(marker)
    deadline = time.monotonic() + 15      # runners of a killed service finish their task
    while orphans and time.monotonic() < deadline:
        time.sleep(0.2)
        orphans = marked_processes(marker)
    return SoakReport(n, seconds, kills["runners"], kills["service"], orphans,
                      audit(db, descriptions),
                      stall_audit(db, *stalled) if len(stalled) == 2 else None)

