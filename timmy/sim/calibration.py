"""Calibrate a digital twin from what a run recorded: `calibrate` reads the tables of an
export directory, a database (URL or SQLite file) or a `SimRun`, and fits a
`timmy.sim.model.Model` from them alone (never from a seed or an executor's plan). `summarize`
gives the figures an operator asks about (throughput, post-to-done percentiles, queue, cost,
utilisation) for a live or a simulated run alike.

Runs are rebuilt from the events: a ``task_assigned`` starts one on its agent, which begins it
when the runner is free (runners work their queue first in, first out) and ends it at the
task's next ``task_completed`` or ``verification_failed`` (a result), ``task_requeued`` or
``task_failed`` (a failure), or at its agent's ``agent_crashed`` (a crash).
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path

from timmy.errors import ConfigError, TimmyError, require
from timmy.sim.model import (
    QUANTILES,
    ArrivalModel,
    Model,
    OverheadModel,
    PersonaModel,
    fit_durations,
    round_sig,
)

#: Completed tasks a calibration needs by default.
MIN_TASKS = 50
#: Runs with a result a persona needs for its own duration fit (fewer: the pooled one).
MIN_RUNS = 5
#: Runs of each kind (idle start, back to back) the dispatch estimate needs.
MIN_DISPATCH = 20
#: Restart time assumed when no restart was recorded (the simulator's default).
DEFAULT_RESTART = 0.5
#: The most (time, queue length) samples `summarize` returns.
QUEUE_SAMPLES = 200


class CalibrationError(TimmyError, ValueError):
    """Recorded tables that a model cannot be fitted from (too few tasks, none finished)."""


@dataclass(slots=True)
class Run:
    """One run of a task on a runner, rebuilt from the events."""

    task_id: int
    agent_id: str
    assigned: float
    start: float
    end: float
    outcome: str          # "ok", "failed", "crashed", "timeout", "cancelled"
    on_spec: bool | None

    @property
    def seconds(self) -> float:
        return self.end - self.start


# -- reading ---------------------------------------------------------------------------


def read_tables(source) -> dict:
    """The tasks, bids, agents, events and ledger of ``source`` as pandas DataFrames.

    ``source``: an export directory, a database URL or SQLite file (read in one snapshot),
    or an object with those tables as attributes (a `SimRun`)."""
    require("pandas", "analysis")
    from timmy.analysis.connection import connect

    names = ("tasks", "bids", "agents", "events", "ledger")
    if not isinstance(source, str | Path) and all(hasattr(source, n) for n in names):
        return {n: getattr(source, n) for n in names}
    con = connect(source)
    try:
        # via Arrow, as a SimRun's: missing numbers are NaN, not pandas.NA
        return {n: _arrow(con.sql(f"SELECT * FROM {n}")).to_pandas() for n in names}
    finally:
        con.close()


def _arrow(relation):
    """A DuckDB relation as an Arrow table (the method's name changed in DuckDB 2)."""
    fetch = getattr(relation, "to_arrow_table", None) or relation.arrow
    return fetch()


def rebuild_runs(tables: dict) -> list[Run]:
    """Every run the events record, in the order they ended (see the module docstring)."""
    events = tables["events"].sort_values("event_id", kind="stable")
    won = tables["bids"]
    won = won[won["won"].astype(bool)]
    spec: dict[tuple[int, str], list[tuple[int, bool]]] = {}
    for tid, aid, auction, on in zip(won["task_id"], won["agent_id"], won["auction_id"],
                                     won["on_spec"], strict=True):
        spec.setdefault((int(tid), str(aid)), []).append((int(auction), bool(on)))
    for v in spec.values():
        v.sort()

    def on_spec(tid: int, aid: str, event_id: int) -> bool | None:
        found = None
        for auction, on in spec.get((tid, aid), ()):
            if auction < event_id:
                found = on
        return found

    held: dict[int, dict[str, tuple[float, int]]] = {}   # task -> agent -> (assigned, id)
    by_agent: dict[str, list[int]] = {}                  # agent -> tasks held, in order
    free_at: dict[str, float] = {}                       # agent -> when its last run ended
    runs: list[Run] = []

    def end(tid: int, aid: str, ts: float, outcome: str) -> None:
        assigned, event_id = held[tid].pop(aid)
        if not held[tid]:
            del held[tid]
        queue = by_agent.get(aid, [])
        if tid in queue:
            queue.remove(tid)
        start = min(max(assigned, free_at.get(aid, assigned)), ts)
        if outcome in ("ok", "failed", "crashed", "timeout"):
            free_at[aid] = ts
        runs.append(Run(tid, aid, assigned, start, ts, outcome, on_spec(tid, aid, event_id)))

    for event_id, ts, kind, tid, aid, data in zip(
            events["event_id"], events["ts"], events["kind"], events["task_id"],
            events["agent_id"], events["data"], strict=True):
        ts = float(ts)
        tid = None if tid is None or tid != tid else int(tid)
        aid = None if aid is None or aid != aid else str(aid)
        if kind == "task_assigned" and tid is not None and aid is not None:
            held.setdefault(tid, {})[aid] = (ts, int(event_id))
            by_agent.setdefault(aid, []).append(tid)
        elif kind == "task_completed" and tid in held:
            for other in list(held[tid]):
                end(tid, other, ts, "ok" if other == aid or len(held[tid]) == 1 else "cancelled")
        elif kind == "verification_failed" and tid in held and aid in held[tid]:
            end(tid, aid, ts, "ok")
        elif kind == "task_timed_out" and tid in held and aid in held[tid]:
            end(tid, aid, ts, "timeout")
        elif kind in ("task_requeued", "task_failed") and tid in held:
            exited = _runner_exit(data)   # live: a runner's end requeues before it is told
            for other in list(held[tid]):
                if exited is None or exited[0] != other:
                    end(tid, other, ts, "failed")
                else:   # its head task was running: a crash; the ones behind it: no run
                    head = by_agent.get(other, [tid])[0] == tid
                    end(tid, other, ts, "crashed" if head and exited[1] else "cancelled")
        elif kind == "task_cancelled" and tid in held:
            for other in list(held[tid]):
                end(tid, other, ts, "cancelled")
        elif kind in ("agent_crashed", "agent_failed", "agent_hung", "agent_disconnected",
                      "agent_left") and aid is not None:
            for i, other in enumerate(list(by_agent.get(aid, []))):
                if other in held and aid in held[other]:
                    end(other, aid, ts, "crashed" if i == 0 and kind == "agent_crashed"
                        else "cancelled")
        elif kind in ("agent_restarted", "agent_reconnected") and aid is not None:
            free_at[aid] = ts
    return runs


def _runner_exit(data) -> tuple[str, bool] | None:
    """(agent_id, crashed) when an event's reason says a runner ended
    (`timmy.market.lifecycle.after_runner_exit`: "runner forge-1 died (exit code -9) ...")."""
    if not isinstance(data, str) or '"reason"' not in data:
        return None
    try:
        reason = json.loads(data).get("reason") or ""
    except (ValueError, AttributeError):
        return None
    words = reason.split(" ", 2)
    if len(words) < 3 or words[0] != "runner":
        return None
    how = words[2]
    if how.startswith(("died", "lost its connection")):
        return words[1], True
    if how.startswith("stopped"):
        return words[1], False
    return None


# -- calibrating -----------------------------------------------------------------------


def calibrate(source, *, min_tasks: int = MIN_TASKS) -> Model:
    """A `Model` fitted from the tables ``source`` recorded (see `read_tables`).

    Per persona: the execution time of its runs with a result (the best of
    `timmy.sim.model.FAMILIES` by KS statistic, and the empirical quantiles), their success
    on and off its speciality (the bid that won says which), crashes per run and the time
    to restart; the arrivals of the posts (rate, CV of the gaps, persona mix); the
    coordinator's post-to-assignment time against the tasks waiting for an auction when it
    was posted (least squares). At least ``min_tasks`` completed tasks are needed, else
    `CalibrationError` saying how many there are.
    """
    np = require("numpy", "analysis")
    if isinstance(min_tasks, bool) or not isinstance(min_tasks, int) or min_tasks < 2:
        raise ConfigError(f"min_tasks must be an integer of at least 2, got {min_tasks!r}",
                          hint="use the default (50) or more")
    tables = read_tables(source)
    tasks, events = tables["tasks"], tables["events"]
    completed = int((tasks["status"] == "completed").sum())
    if completed < min_tasks:
        raise CalibrationError(
            f"{_name(source)} has {completed} completed tasks; a calibration needs at least "
            f"{min_tasks}",
            hint=f"record a longer run (post {min_tasks - completed} or more further tasks) "
                 "or pass a smaller min_tasks=")
    runs = rebuild_runs(tables)
    persona_of = _personas(tables["agents"])
    runners: dict[str, int] = {}
    for persona in persona_of.values():
        runners[persona] = runners.get(persona, 0) + 1
    done = [r for r in runs if r.outcome in ("ok", "failed")]
    if len(done) < 2:
        raise CalibrationError(f"{_name(source)} records too few runs to fit ({len(done)})",
                               hint="record a run with the events table (swarm.export)")
    dispatch = _dispatch(done, persona_of)
    pooled = fit_durations([_execution(r, dispatch) for r in done])
    restarts = _restart_gaps(events, persona_of)
    personas: dict[str, PersonaModel] = {}
    total = sum(1 for r in runs if r.outcome in ("ok", "failed", "crashed"))
    for persona in sorted(set(runners) | {persona_of.get(r.agent_id, _guess(r.agent_id))
                                          for r in runs}):
        mine = [r for r in runs if persona_of.get(r.agent_id, _guess(r.agent_id)) == persona]
        results = [r for r in mine if r.outcome in ("ok", "failed")]
        crashes = sum(1 for r in mine if r.outcome == "crashed")
        on = [r for r in results if r.on_spec]
        off = [r for r in results if r.on_spec is False]
        gaps = restarts.get(persona, [])
        fit = fit_durations([_execution(r, dispatch) for r in results]) \
            if len(results) >= MIN_RUNS \
            else pooled
        personas[persona] = PersonaModel(
            name=persona, tasks=len(results), duration=fit,
            success_on_spec=_share(on), success_off_spec=_share(off),
            on_spec_runs=len(on), off_spec_runs=len(off),
            crash_rate=crashes / (len(results) + crashes) if results or crashes else 0.0,
            crashes=crashes,
            restart_seconds=float(np.mean(gaps)) if gaps else DEFAULT_RESTART,
            runners=runners.get(persona, 0),
            share=(len(results) + crashes) / total if total else 0.0)
    rules = tables["bids"]["rule"]
    overhead = _overhead(tasks, events)
    overhead.dispatch = dispatch
    return Model(personas=personas, arrivals=_arrivals(tasks),
                 overhead=overhead, source=_name(source), tasks=len(tasks),
                 rule=str(rules.mode().iloc[0]) if len(rules) else "")


def _dispatch(runs: list[Run], persona_of: dict[str, str]) -> float:
    """What a run that starts on an idle runner takes longer than one its runner goes
    straight on to (live: the task's message to the runner and its wake-up): per persona, the
    mean of its idle-start runs less the mean of its back-to-back ones, combined with inverse
    variance weights; 0 unless that is more than twice its standard error (and each kind has
    `MIN_DISPATCH` runs), so that noise is not taken for a delay."""
    kinds: dict[str, tuple[list[float], list[float]]] = {}
    for r in runs:
        idle, busy = kinds.setdefault(persona_of.get(r.agent_id, _guess(r.agent_id)), ([], []))
        (idle if r.start <= r.assigned else busy).append(r.seconds)
    weighted = precision = 0.0
    for idle, busy in kinds.values():
        if min(len(idle), len(busy)) < 2:
            continue
        variance = statistics.variance(idle) / len(idle) + statistics.variance(busy) / len(busy)
        if variance <= 0:
            continue
        weighted += (statistics.fmean(idle) - statistics.fmean(busy)) / variance
        precision += 1 / variance
    if not precision or sum(min(len(i), len(b)) for i, b in kinds.values()) < MIN_DISPATCH:
        return 0.0
    estimate, error = weighted / precision, precision ** -0.5
    return estimate if estimate > 2 * error else 0.0


def _execution(run: Run, dispatch: float) -> float:
    """A run's execution time without the dispatch of an idle start."""
    if run.start <= run.assigned:
        return max(run.seconds - dispatch, 0.0)
    return run.seconds


def _arrivals(tasks) -> ArrivalModel:
    np = require("numpy", "analysis")
    from timmy.market.personas import PERSONAS

    posted = np.sort(tasks["created_at"].to_numpy(dtype=float))
    gaps = np.diff(posted)
    span = float(posted[-1] - posted[0]) if len(posted) > 1 else 0.0
    rate = (len(posted) - 1) / span if span > 0 else math.inf
    cv = float(gaps.std() / gaps.mean()) if len(gaps) > 1 and gaps.mean() > 0 else 0.0
    counts: dict[str, int] = {}
    for text, n in tasks["description"].value_counts().items():   # templates repeat
        owner = next((pid for pid, p in PERSONAS.items() if p.matched_keywords(str(text))),
                     "generic")
        counts[owner] = counts.get(owner, 0) + int(n)
    n = sum(counts.values())
    mix = {k: v / n for k, v in sorted(counts.items())} if n else {}
    return ArrivalModel(rate=rate, burstiness=cv, n=len(posted), mix=mix)


def _overhead(tasks, events) -> OverheadModel:
    """Post (the task's ``created_at``) to its first assignment, against the tasks posted
    before it and not yet assigned (nor ended) when it was posted."""
    np = require("numpy", "analysis")
    ev = events[events["kind"].isin(("task_assigned", "task_cancelled", "task_failed"))]
    first = ev.groupby("task_id")["ts"].min()
    assigned = set(events.loc[events["kind"] == "task_assigned", "task_id"].dropna()
                   .astype(int))
    ids = tasks["task_id"].to_numpy(dtype=int)
    created = tasks["created_at"].to_numpy(dtype=float)
    left = first.reindex(ids).to_numpy(dtype=float)   # NaN: never assigned nor ended
    order = np.argsort(created, kind="stable")
    left_sorted = np.sort(np.where(np.isnan(left), np.inf, left))
    # posted before it (its rank) minus those already gone when it was posted
    queued = order.argsort(kind="stable") - np.searchsorted(left_sorted, created, "right")
    keep = np.array([int(t) in assigned for t in ids]) & ~np.isnan(left)
    x = np.maximum(queued[keep], 0).astype(float)
    y = left[keep] - created[keep]
    if not len(y):
        return OverheadModel()
    slope = max(float(np.polyfit(x, y, 1)[0]), 0.0) if len(y) > 2 and x.std() > 0 else 0.0
    base = float(np.mean(y - slope * x))
    residuals = y - (base + slope * x)
    return OverheadModel(base=base, per_queued=slope, n=len(y),
                         residuals=[round_sig(v) for v in np.quantile(residuals, QUANTILES)],
                         requeue=_requeue_gap(events), max_queued=int(x.max()))


def _requeue_gap(events) -> float:
    """The mean time from a task's ``task_requeued`` to its next ``task_assigned``."""
    ev = events[events["kind"].isin(("task_requeued", "task_assigned"))].sort_values(
        "event_id", kind="stable")
    since: dict[int, float] = {}
    gaps = []
    for ts, kind, tid in zip(ev["ts"], ev["kind"], ev["task_id"], strict=True):
        if tid != tid or tid is None:
            continue
        if kind == "task_requeued":
            since[int(tid)] = float(ts)
        elif int(tid) in since:
            gaps.append(float(ts) - since.pop(int(tid)))
    return sum(gaps) / len(gaps) if gaps else 0.0


def _restart_gaps(events, persona_of: dict[str, str]) -> dict[str, list[float]]:
    crashed: dict[str, float] = {}
    gaps: dict[str, list[float]] = {}
    for ts, kind, aid in zip(events["ts"], events["kind"], events["agent_id"], strict=True):
        if aid is None or aid != aid:
            continue
        if kind == "agent_crashed":
            crashed[aid] = float(ts)
        elif kind == "agent_restarted" and aid in crashed:
            gaps.setdefault(persona_of.get(aid, _guess(aid)), []).append(
                float(ts) - crashed.pop(aid))
    return gaps


def _personas(agents) -> dict[str, str]:
    return {str(a): str(p) for a, p in zip(agents["agent_id"], agents["persona"], strict=True)}


def _guess(agent_id: str) -> str:
    return agent_id.rsplit("-", 1)[0]


def _share(runs: list[Run]) -> float | None:
    return sum(1 for r in runs if r.outcome == "ok") / len(runs) if runs else None


def _name(source) -> str:
    if isinstance(source, str | Path):
        from timmy.storage.address import safe_url

        return safe_url(str(source))   # no password in a model file
    return type(source).__name__


# -- the figures of a run --------------------------------------------------------------


def summarize(source) -> dict:
    """A run's figures (a live export, a database or a `SimRun`): ``tasks``, ``completed``,
    ``throughput`` (completed tasks/s from the first post to the last completion), ``p50``,
    ``p95``, ``p99`` (post to done, seconds, of completed tasks), ``cost_per_task`` (sats
    paid per completed task), ``utilisation`` (runner -> share of that span it was running
    a task) and ``queue``: up to `QUEUE_SAMPLES` (time from the first post, tasks posted
    and not finished) pairs."""
    return summarize_tables(read_tables(source))


def summarize_tables(tables: dict) -> dict:
    np = require("numpy", "analysis")
    tasks, ledger = tables["tasks"], tables["ledger"]
    done = tasks[tasks["status"] == "completed"]
    nan = float("nan")
    latency = (done["completed_at"] - done["created_at"]).to_numpy(dtype=float)
    first = float(tasks["created_at"].min()) if len(tasks) else nan
    last = float(done["completed_at"].max()) if len(done) else nan
    span = last - first if len(done) else nan
    pct = (lambda q: float(np.quantile(latency, q))) if len(latency) else (lambda q: nan)
    busy: dict[str, float] = {str(a): 0.0 for a in tables["agents"]["agent_id"]}
    for r in rebuild_runs(tables):
        if r.outcome in ("ok", "failed", "crashed", "timeout"):
            busy[r.agent_id] = busy.get(r.agent_id, 0.0) + r.seconds
    return {
        "tasks": len(tasks),
        "completed": len(done),
        "throughput": len(done) / span if len(done) and span > 0 else nan,
        "p50": pct(0.5), "p95": pct(0.95), "p99": pct(0.99),
        "cost_per_task": float(ledger["sats"].sum()) / len(done) if len(done) else nan,
        "utilisation": {a: (b / span if span and span > 0 else nan)
                        for a, b in sorted(busy.items())},
        "queue": _queue(tables["events"], first),
    }


def _queue(events, first: float) -> list[tuple[float, int]]:
    ev = events.sort_values("event_id", kind="stable")
    points: list[tuple[float, int]] = []
    n = 0
    for ts, kind in zip(ev["ts"], ev["kind"], strict=True):
        if kind == "task_posted":
            n += 1
        elif kind in ("task_completed", "task_failed", "task_cancelled"):
            n -= 1
        else:
            continue
        points.append((float(ts) - first, n))
    if len(points) > QUEUE_SAMPLES:
        step = len(points) / QUEUE_SAMPLES
        points = [points[int(i * step)] for i in range(QUEUE_SAMPLES - 1)] + [points[-1]]
    return points
