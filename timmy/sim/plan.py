"""Capacity planning with a calibrated model: `plan` searches the runners per persona for the
cheapest mix that keeps post-to-done p95 under a target at a given arrival rate, simulating
each candidate (``simulate(..., model=)``) over replications, on Dask when given a scheduler.

"Cheapest" is the fewest runners in all (each runner costs the same to keep up); among mixes
of that size, the lower predicted p95. The search starts from the smallest mix the model's
capacity says keeps up with the rate (every persona's runners busy less than all the time),
adds one runner at a time where it cuts the p95 most (greedy), and once the target is met
takes runners away again while it stays met, so that every mix one runner smaller than the
result was simulated and missed the target (or cannot keep up). ``search="grid"`` simulates
every mix between that start and ``max_runners`` instead (exact, costlier).

numpy and scipy are imported when a plan runs.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from timmy.errors import TimmyError, require

#: The figures `plan` predicts per candidate (name -> unit): as ``SimRun.summary()``.
FIGURES = {"throughput": "tasks/s", "p50": "s", "p95": "s", "cost_per_task": "sats"}
SEARCHES = ("greedy", "grid")


class PlanError(TimmyError, ValueError):
    """A plan that cannot be made: a rate no allowed mix keeps up with, bad limits."""


@dataclass(frozen=True, slots=True)
class Estimate:
    """The mean of a figure over replications, with its confidence interval (Student t)."""

    mean: float
    low: float
    high: float
    n: int

    def __str__(self) -> str:
        return f"{self.mean:.4g} ({self.low:.4g}-{self.high:.4g})"


@dataclass
class Candidate:
    """One runner mix the search simulated: its figures, whether it met the target, and why
    it was tried (``step``: "start", "+forge", "-quill", "grid")."""

    mix: dict[str, int]
    capacity: float
    figures: dict[str, Estimate]
    meets: bool
    step: str

    @property
    def runners(self) -> int:
        return sum(self.mix.values())


@dataclass
class CapacityPlan:
    """What `plan` found. ``mix``: the cheapest mix that met the target (None when none
    within ``max_runners`` did; ``best`` is then the lowest p95 seen); ``predicted``: its
    figures with their confidence intervals; ``candidates``: every mix simulated, in order."""

    rate: float
    target_p95: float
    rule: str
    tasks: int
    replications: int
    confidence: float
    mix: dict[str, int] | None
    predicted: dict[str, Estimate]
    candidates: list[Candidate] = field(default_factory=list)
    confident: bool = False

    @property
    def met(self) -> bool:
        return self.mix is not None

    @property
    def runners(self) -> int | None:
        return sum(self.mix.values()) if self.mix is not None else None

    @property
    def best(self) -> Candidate:
        """The chosen candidate, or (none met) the one with the lowest p95."""
        if self.mix is not None:
            return next(c for c in self.candidates if c.mix == self.mix)
        return min(self.candidates, key=lambda c: c.figures["p95"].mean)

    def table(self):
        """The candidates as a pandas DataFrame: one row per mix, a column per persona, the
        runners, the modelled capacity, each figure's mean and CI, and whether it met."""
        pd = require("pandas", "analysis")
        personas = sorted({p for c in self.candidates for p in c.mix})
        rows = []
        for c in self.candidates:
            row: dict[str, Any] = {p: c.mix.get(p, 0) for p in personas}
            row.update(runners=c.runners, capacity=c.capacity, step=c.step)
            for name, est in c.figures.items():
                row[name] = est.mean
                row[f"{name}_low"], row[f"{name}_high"] = est.low, est.high
            row["meets"] = c.meets
            rows.append(row)
        return pd.DataFrame(rows)

    def summary(self) -> str:
        bound = "the CI's upper end of p95" if self.confident else "p95"
        lines = [f"plan: {self.rate:g} tasks/s, {bound} <= {self.target_p95:g} s, "
                 f"rule {self.rule}, {self.tasks} tasks x {self.replications} replications, "
                 f"{len(self.candidates)} mixes simulated"]
        if self.mix is None:
            best = self.best
            lines.append(f"  no mix met the target; lowest p95: {_mix(best.mix)} "
                         f"({best.runners} runners), p95 {best.figures['p95']} s")
        else:
            ci = f"{self.confidence:.0%} CI"
            lines.append(f"  cheapest: {_mix(self.mix)} ({self.runners} runners)")
            for name, unit in FIGURES.items():
                lines.append(f"    {name:<14} {self.predicted[name]} {unit}  ({ci})")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


def _mix(mix: Mapping[str, int]) -> str:
    return ", ".join(f"{p} {n}" for p, n in mix.items())


# -- the search --------------------------------------------------------------------------


def plan(model, *, rate: float, target_p95: float, personas: Sequence[str] | None = None,
         max_runners: int | Mapping[str, int] = 8, replications: int = 5, tasks: int = 500,
         rule: str = "specialist_first", search: str = "greedy", workload=None,
         scheduler: str | None = None, client=None, seed: int = 0,
         confidence: float = 0.95, confident: bool = False,
         progress: bool = False) -> CapacityPlan:
    """The cheapest runners per persona that keep post-to-done p95 at or under ``target_p95``
    seconds when ``rate`` tasks/s arrive; see the module docstring for the search.

    ``model``: a `timmy.sim.Model` or its file. ``personas``: the personas to give runners
    (default: every persona the model knows). ``max_runners``: the most runners per persona
    (an int for all, or {persona: n}). Each candidate is simulated ``replications`` times
    (``simulate(arrivals, model=model, runners=mix, rule=rule)``) with ``tasks`` Poisson
    arrivals at ``rate`` written in the model's persona mix (``model.arrivals.mix``) or
    ``workload``: a callable ``seed -> list of descriptions``; replication r of every
    candidate uses the same arrivals and seed (common random numbers). A candidate meets the
    target when its mean p95 over the replications does, or with ``confident=True`` when the
    upper end of that mean's confidence interval does. ``scheduler`` (an address, or
    "local") or ``client``: the simulations of each step run on Dask.

    A rate above what ``max_runners`` of every persona can keep up with (the model's
    `capacity`) is a `PlanError` that says by how much, and how many runners would.
    """
    from timmy.market.mechanisms import check_rule
    from timmy.sim.model import load_model

    model = load_model(model)
    rule = check_rule(rule)
    _check_number("rate", rate)
    _check_number("target_p95", target_p95)
    if isinstance(replications, bool) or not isinstance(replications, int) or replications < 2:
        raise PlanError(f"replications must be an integer >= 2, got {replications!r}",
                        hint="a confidence interval needs at least 2 replications; e.g. 5")
    if isinstance(tasks, bool) or not isinstance(tasks, int) or tasks < 20:
        raise PlanError(f"tasks must be an integer >= 20, got {tasks!r}",
                        hint="a p95 needs enough tasks per run; e.g. 500")
    if search not in SEARCHES:
        raise PlanError(f"unknown search {search!r}", hint=f"use one of: {', '.join(SEARCHES)}")
    if not 0 < confidence < 1:
        raise PlanError(f"confidence must be between 0 and 1, got {confidence!r}",
                        hint="e.g. 0.95")
    names = _personas(model, personas)
    limits = _limits(max_runners, names)
    start = _start(model, rate, names, limits)
    make = _workload(model, workload, tasks, rate)
    search_state = _Search(model, rate, target_p95, rule, make, replications, seed,
                           confidence, scheduler, client, progress, confident)
    try:
        if search == "grid":
            search_state.grid(start, limits)
        else:
            search_state.greedy(start, limits)
    finally:
        search_state.close()
    chosen = search_state.cheapest()
    return CapacityPlan(rate=rate, target_p95=target_p95, rule=rule, tasks=tasks,
                        replications=replications, confidence=confidence,
                        mix=None if chosen is None else dict(chosen.mix),
                        predicted={} if chosen is None else dict(chosen.figures),
                        candidates=list(search_state.candidates), confident=confident)


def _check_number(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0 \
            or not math.isfinite(value):
        raise PlanError(f"{name} must be a positive number, got {value!r}",
                        hint="rate in tasks per second, target_p95 in seconds, e.g. "
                             "rate=20, target_p95=0.5")


def _personas(model, personas: Sequence[str] | None) -> list[str]:
    known = list(model.personas)
    if personas is None:
        names = [p for p in known if model.personas[p].duration.mean > 0] or known
    else:
        names = list(dict.fromkeys(personas))
        unknown = [p for p in names if p not in model.personas]
        if unknown:
            raise PlanError(f"the model knows nothing of persona {unknown[0]!r}",
                            hint=f"plan for personas it was calibrated with: "
                                 f"{', '.join(known)}")
    if not names:
        raise PlanError("no personas to plan for", hint="calibrate from a run with tasks done")
    return names


def _limits(max_runners, names: list[str]) -> dict[str, int]:
    if isinstance(max_runners, Mapping):
        limits = {p: max_runners.get(p, 0) for p in names}
    else:
        limits = dict.fromkeys(names, max_runners)
    for p, n in limits.items():
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise PlanError(f"max_runners for {p} must be an integer >= 1, got {n!r}",
                            hint="e.g. max_runners=8 or {persona: 8, ...} for every persona")
    return limits


def _load(model, rate: float, names: list[str]) -> dict[str, float]:
    """Per persona, the runners its share of ``rate`` keeps busy all the time (the model's
    `capacity` rule: share x rate x mean run time x runs per task)."""
    total = sum(model.personas[p].share for p in names)
    runs = model.runs_per_task()
    if total <= 0:
        return {p: rate / len(names) * model.personas[p].duration.mean * runs for p in names}
    return {p: model.personas[p].share / total * rate * model.personas[p].duration.mean * runs
            for p in names}


def _start(model, rate: float, names: list[str], limits: dict[str, int]) -> dict[str, int]:
    """The smallest mix that keeps up: each persona's load plus a runner, rounded down (so no
    persona's runners are busy all the time); a `PlanError` when that passes a limit."""
    load = _load(model, rate, names)
    start = {p: max(1, math.floor(load[p]) + 1) for p in names}
    over = [p for p in names if start[p] > limits[p]]
    if over:
        top = {p: limits[p] for p in names}
        cap = model.capacity(top)
        p = max(over, key=lambda q: start[q] / limits[q])
        raise PlanError(
            f"{rate:g} tasks/s is more than any allowed mix keeps up with: {_mix(top)} "
            f"finish about {cap:.3g} tasks/s (the rate is {rate / cap - 1:.0%} over)",
            hint=f"{p} needs at least {start[p]} runners (allowed: {limits[p]}): raise "
                 f"max_runners, or plan for a rate under {cap:.3g} tasks/s")
    return start


def _workload(model, workload, tasks: int, rate: float):
    """``seed -> list of Arrival``: ``tasks`` Poisson arrivals at ``rate``."""
    from timmy.sim.workloads import PHRASES, keyword_mix, poisson_arrivals

    if workload is not None:
        if not callable(workload):
            raise PlanError("workload must be a callable seed -> list of descriptions",
                            hint="e.g. lambda seed: keyword_mix(500, seed, {'forge': 1})")
        return lambda s: poisson_arrivals(tasks, rate, s, descriptions=list(workload(s)))
    mix = {k: v for k, v in (model.arrivals.mix or {}).items()
           if (k in PHRASES or k == "generic") and v > 0}
    if not mix:
        raise PlanError("the model's arrivals name no built-in persona's tasks to write",
                        hint="pass workload=lambda seed: [descriptions...]")
    return lambda s: poisson_arrivals(tasks, rate, s, descriptions=keyword_mix(tasks, s, mix))


def simulate_point(model, mix: dict[str, int], rule: str, arrivals, seed: int) -> dict:
    """One replication of one mix: its figures (what a Dask worker runs)."""
    from timmy.sim.simulator import simulate

    run = simulate(arrivals, model=model, runners=dict(mix), rule=rule, seed=seed,
                   engine="python")
    return run_figures(run.tasks, run.ledger)


def run_figures(tasks, ledger) -> dict[str, float]:
    """Throughput, post-to-done p50/p95 and cost per task of a run's tables (the definitions
    of ``SimRun.summary()``: completed tasks over first post to last completion; quantiles of
    completed_at - created_at; sats paid per completed task)."""
    np = require("numpy", "analysis")
    done = tasks[tasks["status"] == "completed"]
    nan = float("nan")
    if len(done) == 0:
        return {"throughput": 0.0, "p50": nan, "p95": nan, "cost_per_task": nan}
    lat = (done["completed_at"] - done["created_at"]).to_numpy(dtype=float)
    span = float(done["completed_at"].max() - tasks["created_at"].min())
    return {"throughput": len(done) / span if span > 0 else nan,
            "p50": float(np.quantile(lat, 0.5)), "p95": float(np.quantile(lat, 0.95)),
            "cost_per_task": float(ledger["sats"].sum()) / len(done) if len(ledger) else 0.0}


def estimate(values: Sequence[float], confidence: float = 0.95) -> Estimate:
    """Mean and Student-t confidence interval of ``values`` (NaNs dropped)."""
    from scipy import stats

    from timmy.sim.experiments import _interval

    mean, low, high, n = _interval(stats, values, confidence)
    return Estimate(mean, low, high, n)


class _Search:
    """The candidates simulated so far (each mix once) and how to simulate more."""

    def __init__(self, model, rate, target, rule, make, replications, seed, confidence,
                 scheduler, client, progress, confident=False) -> None:
        from timmy.sim.experiments import replication_seed

        self.model, self.rate, self.target, self.rule = model, rate, target, rule
        self.confidence, self.confident = confidence, confident
        self.seeds = [replication_seed(seed, r) for r in range(replications)]
        self.work = [make(s) for s in self.seeds]
        self.candidates: list[Candidate] = []
        self.seen: dict[tuple, Candidate] = {}
        self.progress = progress
        self._dask = None
        if scheduler is not None or client is not None:
            from timmy.sim.sweeps import dask_client

            self._dask = dask_client(client, None if scheduler == "local" else scheduler)
            self.client = self._dask.__enter__()
            # sent once (a scatter per step would reuse the key while the last one is freed)
            self._model = self.client.scatter(model, broadcast=True, hash=False)

    def close(self) -> None:
        if self._dask is not None:
            self._dask.__exit__(None, None, None)
            self._dask = None

    def evaluate(self, mixes: list[tuple[dict[str, int], str]]) -> list[Candidate]:
        """Simulate the mixes not seen yet (every replication of every one at once on Dask)."""
        new = []
        for mix, step in mixes:
            key = tuple(sorted(mix.items()))
            if key not in self.seen and all(m != mix for m, _ in new):
                new.append((dict(mix), step))
        points = [(i, r) for i in range(len(new)) for r in range(len(self.seeds))]
        results: dict[tuple[int, int], dict] = {}
        if self._dask is not None and points:
            from timmy.sim.sweeps import _bar, gather

            futures = [self.client.submit(simulate_point, self._model, new[i][0], self.rule,
                                          self.work[r], self.seeds[r], pure=False)
                       for i, r in points]
            index = {f.key: p for f, p in zip(futures, points, strict=True)}
            with _bar(len(futures), self.progress) as bar:
                for future, figures in gather(self.client, futures, bar):
                    results[index[future.key]] = figures
        else:
            for i, r in points:
                results[(i, r)] = simulate_point(self.model, new[i][0], self.rule,
                                                 self.work[r], self.seeds[r])
        for i, (mix, step) in enumerate(new):
            runs = [results[(i, r)] for r in range(len(self.seeds))]
            figures = {k: estimate([f[k] for f in runs], self.confidence) for k in FIGURES}
            p95 = figures["p95"].high if self.confident else figures["p95"].mean
            cand = Candidate(mix, self.model.capacity(mix), figures,
                             meets=bool(p95 == p95 and p95 <= self.target), step=step)
            self.candidates.append(cand)
            self.seen[tuple(sorted(mix.items()))] = cand
        return [self.seen[tuple(sorted(m.items()))] for m, _ in mixes]

    def keeps_up(self, mix: dict[str, int]) -> bool:
        return all(n >= 1 for n in mix.values()) and self.model.capacity(mix) > self.rate

    def greedy(self, start: dict[str, int], limits: dict[str, int]) -> None:
        (current,) = self.evaluate([(start, "start")])
        while not current.meets:
            steps = [({**current.mix, p: n + 1}, f"+{p}") for p, n in current.mix.items()
                     if n < limits[p]]
            if not steps:
                return
            tried = self.evaluate(steps)
            current = min(tried, key=lambda c: (self.p95(c), c.figures["cost_per_task"].mean))
        while True:   # take runners away while the target stays met
            steps = [({**current.mix, p: n - 1}, f"-{p}") for p, n in current.mix.items()
                     if n > 1 and self.keeps_up({**current.mix, p: n - 1})]
            met = [c for c in self.evaluate(steps) if c.meets] if steps else []
            if not met:
                return
            current = min(met, key=self.p95)

    def grid(self, start: dict[str, int], limits: dict[str, int]) -> None:
        names = list(start)
        mixes = [dict(zip(names, counts, strict=True)) for counts in
                 itertools.product(*(range(start[p], limits[p] + 1) for p in names))]
        self.evaluate([(m, "grid") for m in sorted(mixes, key=lambda m: sum(m.values()))])

    def cheapest(self) -> Candidate | None:
        met = [c for c in self.candidates if c.meets]
        return min(met, key=lambda c: (c.runners, self.p95(c))) if met else None

    def p95(self, c: Candidate) -> float:
        """What the target is held against: the mean p95, or (confident) its CI's upper end."""
        est = c.figures["p95"]
        p95 = est.high if self.confident else est.mean
        return p95 if p95 == p95 else math.inf
