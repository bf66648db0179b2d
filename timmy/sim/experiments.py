"""Experiments: simulate several variants of a swarm (each a set of `simulate` keyword
arguments) over replications with common random numbers, and compare them with confidence
intervals and Holm-corrected paired tests (scipy, statsmodels). On Dask when given a
scheduler or a client. pandas, scipy and statsmodels are imported only inside `experiment`.
"""

from __future__ import annotations

import inspect
import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from timmy.errors import ConfigError, require

#: The metrics an experiment measures per replication: name -> (unit, what it is).
METRICS: dict[str, tuple[str, str]] = {
    "cost_per_task": ("sats", "mean price of the completed tasks"),
    "specialist_share": ("share", "share of the winning bids that were on-spec"),
    "completion_rate": ("share", "completed tasks / tasks posted"),
    "latency_p50_s": ("s", "median post-to-done time of completed tasks (virtual clock)"),
    "latency_p95_s": ("s", "95th percentile post-to-done time of completed tasks"),
    "spend": ("sats", "sum of the prices paid (completed tasks)"),
}

#: Paired tests `experiment` can run between two variants.
TESTS = ("t", "wilcoxon")

#: `simulate` arguments a variant may not set: the experiment gives them.
RESERVED = {
    "workload": "the experiment's workload is shared by every variant",
    "seed": "each replication's seed comes from the experiment's seed (common random numbers)",
    "progress": "the experiment shows one progress bar (progress=)",
    "out": "an experiment keeps its runs' figures, not their tables",
}


def replication_seed(seed: int, replication: int) -> int:
    """The seed replication ``replication`` of every variant uses (a 32-bit int).

    Derived from the experiment's ``seed`` by numpy's ``SeedSequence``, so the
    replications of one experiment, and those of experiments with other seeds, do not
    share streams.
    """
    np = require("numpy", "analysis")
    return int(np.random.SeedSequence(seed, spawn_key=(replication,)).generate_state(1)[0])


def variant_keys() -> dict[str, inspect.Parameter]:
    """The keyword arguments of `simulate` a variant may set (all but `RESERVED`)."""
    from timmy.sim.simulator import simulate

    params = inspect.signature(simulate).parameters
    return {name: p for name, p in params.items()
            if name not in RESERVED and p.kind is not inspect.Parameter.VAR_KEYWORD}


def _check_variants(variants: object) -> dict[str, dict[str, Any]]:
    hint_keys = ", ".join(variant_keys())
    example = ('e.g. variants={"lowest": {"rule": "lowest"}, '
               '"specialist": {"rule": "specialist_first"}}')
    if not isinstance(variants, Mapping) or not variants:
        got = "none" if isinstance(variants, Mapping) else type(variants).__name__
        raise ConfigError(f"an experiment needs variants (a dict of name -> simulate "
                          f"arguments), got {got}", hint=example)
    from timmy.sim.simulator import simulate

    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD
                    for p in inspect.signature(simulate).parameters.values())
    allowed = variant_keys()
    out = {}
    for name, spec in variants.items():
        if not isinstance(name, str) or not name:
            raise ConfigError(f"variant name {name!r} is not a non-empty string", hint=example)
        if not isinstance(spec, Mapping):
            raise ConfigError(f"variant {name!r} is {type(spec).__name__}, not a dict of "
                              "simulate arguments", hint=example)
        for key in spec:
            if key in RESERVED:
                raise ConfigError(f"variant {name!r} sets {key!r}: {RESERVED[key]}",
                                  hint=f"leave {key!r} out of the variant; a variant sets "
                                  f"some of: {hint_keys}")
            if key not in allowed and not takes_any:
                raise ConfigError(f"variant {name!r} sets {key!r}, which simulate does not "
                                  "take", hint=f"a variant sets some of: {hint_keys}")
        out[name] = dict(spec)
    return out


def _check_workload(workload: object) -> Callable[[int], list]:
    """A function seed -> workload items (descriptions or Arrival items)."""
    from timmy.sim.workloads import Arrival, demo_descriptions

    hint = ("give a list of descriptions, a list of Arrival items, a number of demo tasks, "
            "or a function seed -> workload (e.g. lambda s: poisson_arrivals(1000, 50, s))")
    if isinstance(workload, bool):
        raise ConfigError(f"an experiment's workload cannot be {workload!r}", hint=hint)
    if isinstance(workload, int):
        if workload < 1:
            raise ConfigError(f"an experiment needs at least one task, got {workload}",
                              hint=hint)
        return lambda s: demo_descriptions(workload, s)
    if callable(workload):
        return workload
    if isinstance(workload, str) or not isinstance(workload, Sequence):
        raise ConfigError(f"an experiment's workload cannot be a {type(workload).__name__}",
                          hint=hint)
    items = list(workload)
    if not items or not (all(isinstance(i, str) for i in items)
                         or all(isinstance(i, Arrival) for i in items)):
        raise ConfigError("an experiment's workload is empty or mixes descriptions and "
                          "other things", hint=hint)
    return lambda s: items


def _draw(make: Callable[[int], list], seed: int) -> list:
    from timmy.sim.workloads import Arrival

    got = make(seed)
    items = list(got) if isinstance(got, Sequence) and not isinstance(got, str) else None
    if not items or not (all(isinstance(i, str) for i in items)
                         or all(isinstance(i, Arrival) for i in items)):
        what = f"{len(items)} items" if items is not None else type(got).__name__
        raise ConfigError(f"the workload function gave {what} for seed {seed}, not a "
                          "non-empty list of descriptions or of Arrival items",
                          hint="return e.g. demo_descriptions(n, seed) or "
                          "poisson_arrivals(n, rate, seed)")
    return items


def measure(run, metrics: Sequence[str] = tuple(METRICS)) -> dict[str, float]:
    """The `METRICS` of one `SimRun` (NaN where no task completed, e.g. its cost per task)."""
    tasks, bids = run.tasks, run.bids
    done = tasks[tasks["status"] == "completed"]
    won = bids[bids["won"]]
    latency = done["completed_at"] - done["created_at"]
    n, nan = len(tasks), float("nan")
    every = {
        "cost_per_task": lambda: float(done["price_sats"].mean()) if len(done) else nan,
        "specialist_share": lambda: float(won["on_spec"].mean()) if len(won) else nan,
        "completion_rate": lambda: len(done) / n if n else nan,
        "latency_p50_s": lambda: float(latency.quantile(0.5)) if len(done) else nan,
        "latency_p95_s": lambda: float(latency.quantile(0.95)) if len(done) else nan,
        "spend": lambda: float(done["price_sats"].sum()),
    }
    return {m: every[m]() for m in metrics}


def run_replication(workload: list, variant: Mapping[str, Any], seed: int,
                    metrics: Sequence[str], plugins: tuple[str, ...] = ()) -> dict[str, float]:
    """Simulate one variant on one replication's workload and seed; its metrics.

    A plain top-level function, so Dask can send it to any worker; ``plugins``: modules
    imported first (`timmy.sim.plugins.import_plugins`).
    """
    from timmy.sim.plugins import import_plugins
    from timmy.sim.simulator import simulate

    import_plugins(plugins)

    return measure(simulate(workload, seed=seed, **variant), metrics)


@dataclass
class Experiment:
    """What `experiment` found. Tidy pandas DataFrames:

    ``summary``: a row per variant and metric: ``variant, metric, mean, ci_low, ci_high,
    n`` (the confidence interval of the mean, Student's t over the replications).
    ``comparisons``: a row per pair of variants and metric: ``a, b, metric, diff`` (the
    mean of a - b over paired replications), ``ci_low, ci_high`` (of that difference),
    ``p`` (paired t-test or Wilcoxon signed-rank), ``p_holm`` (Holm-corrected over the
    whole table), ``significant`` (p_holm < alpha), ``n``.
    ``runs``: a row per variant, replication and metric: ``variant, replication, seed,
    metric, value``.
    """

    summary: Any
    comparisons: Any
    runs: Any
    variants: dict[str, dict[str, Any]]
    replications: int
    seed: int
    seeds: list[int]
    metrics: tuple[str, ...]
    test: str = "t"
    confidence: float = 0.95
    alpha: float = 0.05
    settings: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        return (f"Experiment({len(self.variants)} variants x {self.replications} replications, "
                f"seed={self.seed}, metrics={list(self.metrics)})")

    def table(self, metric: str | None = None):
        """The summary as a wide table: a row per variant, mean and CI per metric."""
        s = self.summary if metric is None else self.summary[self.summary["metric"] == metric]
        wide = s.pivot(index="variant", columns="metric", values=["mean", "ci_low", "ci_high"])
        return wide.reindex(list(self.variants))

    def plot(self, metrics: Sequence[str] | None = None, *, ncols: int = 3):
        """A matplotlib Figure: per metric, each variant's mean with its CI as error bars.

        One panel per metric (its unit on the y axis), a colour per variant (the legend).
        """
        require("matplotlib", "analysis")
        from matplotlib.figure import Figure

        chosen = list(self.metrics if metrics is None else metrics)
        _check_metrics(chosen, allowed=self.metrics)
        ncols = max(1, min(ncols, len(chosen)))
        nrows = math.ceil(len(chosen) / ncols)
        fig = Figure(figsize=(4.2 * ncols, 3.4 * nrows + 0.6), layout="constrained")
        axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
        names = list(self.variants)
        level = round(self.confidence * 100)
        for ax, metric in zip(axes, chosen, strict=False):
            rows = self.summary[self.summary["metric"] == metric].set_index("variant")
            for i, name in enumerate(names):
                r = rows.loc[name]
                low = r["mean"] - r["ci_low"] if math.isfinite(r["ci_low"]) else 0.0
                high = r["ci_high"] - r["mean"] if math.isfinite(r["ci_high"]) else 0.0
                ax.errorbar([i], [r["mean"]], yerr=[[low], [high]], fmt="o", capsize=5,
                            color=f"C{i % 10}", label=name)
            unit = METRICS[metric][0]
            ax.set_title(metric, fontsize=10)
            ax.set_ylabel(f"{metric} ({unit})", fontsize=8)
            ax.set_xticks(range(len(names)), names, rotation=20, fontsize=8)
            ax.set_xlim(-0.6, len(names) - 0.4)
            ax.set_xlabel("variant")
            ax.grid(axis="y", alpha=0.3)
        for ax in axes[len(chosen):]:
            ax.set_visible(False)
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncols=min(len(names), 6),
                   title=f"mean and {level}% CI over {self.replications} replications")
        return fig


def _check_metrics(metrics: Sequence[str], allowed: Sequence[str] = tuple(METRICS)) -> None:
    if isinstance(metrics, str):
        metrics = [metrics]
    if not metrics:
        raise ConfigError("an experiment needs at least one metric",
                          hint=f"choose from: {', '.join(allowed)}")
    for m in metrics:
        if m not in allowed:
            raise ConfigError(f"unknown metric {m!r}", hint=f"choose from: {', '.join(allowed)}")


def experiment(workload, variants: Mapping[str, Mapping[str, Any]], *, replications: int = 10,
               seed: int = 0, metrics: Sequence[str] | None = None, test: str = "t",
               confidence: float = 0.95, alpha: float = 0.05, scheduler: str | None = None,
               client=None, progress: bool = True, plugins=()) -> Experiment:
    """Run every variant ``replications`` times with common random numbers; an `Experiment`.

    ``workload``: a list of descriptions or of `Arrival` items (the same in every
    replication), a function ``seed -> workload`` (called once per replication: each
    replication draws its own workload, the same for every variant), or a number of
    demo tasks (``demo_descriptions(n, seed)`` per replication). ``variants``: name ->
    keyword arguments of `simulate` (``rule``, ``runners``, ``task_seconds``,
    ``max_attempts``, ``crash_rate``, ``personas``, ``engine``...; any argument
    `simulate` takes but ``seed``, ``out`` and ``progress``).

    Replication r of every variant uses the same seed (`replication_seed` of ``seed``
    and r) and the same workload, so the variants' differences are paired: a comparison
    sees only what the variants change. ``metrics``: some of `METRICS` (all by default).
    ``test``: the paired test, ``"t"`` (scipy's ``ttest_rel``) or ``"wilcoxon"``;
    p-values are Holm-corrected over the whole comparisons table (statsmodels'
    ``multipletests``). A pair whose replications are all equal has p = 1.

    Where the runs go: ``client=`` a ``dask.distributed.Client``; ``scheduler=`` the
    address of a Dask scheduler, or ``"local"`` for `local_cluster()` started for this
    call; else serially in this process. Each run is a pure function of its variant,
    workload and seed, so the numbers are the same on Dask and serially. ``plugins``:
    modules imported here and on each worker before its runs (ones that register
    mechanisms or verifiers, see `timmy.sim.plugins`); a registered rule or verifier
    defined in ``__main__`` (a notebook) is a `ConfigError` before anything runs on Dask.

        exp = experiment(lambda s: demo_descriptions(1000, s),
                         {"lowest": {"rule": "lowest"}, "specialist": {}},
                         replications=30, seed=1)
        exp.summary; exp.comparisons; exp.plot()
    """
    from timmy.sim.plugins import check_plugins, import_plugins, worker_plugins

    pd = require("pandas", "analysis")
    plugins = check_plugins(plugins)
    import_plugins(plugins)
    stats = require("scipy.stats", "analysis")
    multitest = require("statsmodels.stats.multitest", "analysis")
    chosen = _check_variants(variants)
    make = _check_workload(workload)
    if isinstance(replications, bool) or not isinstance(replications, int) or replications < 2:
        raise ConfigError(f"an experiment needs at least 2 replications, got {replications!r}",
                          hint="a confidence interval needs 2 or more; use e.g. "
                          "replications=30")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"an experiment's seed is a whole number >= 0, got {seed!r}",
                          hint="e.g. seed=1")
    names = tuple(METRICS) if metrics is None else ((metrics,) if isinstance(metrics, str)
                                                    else tuple(metrics))
    _check_metrics(names)
    if test not in TESTS:
        raise ConfigError(f"unknown paired test {test!r}", hint=f"use one of: {', '.join(TESTS)}")
    for what, v in (("confidence", confidence), ("alpha", alpha)):
        if not (isinstance(v, int | float) and 0 < v < 1):
            raise ConfigError(f"{what} must be between 0 and 1, got {v!r}",
                              hint="e.g. confidence=0.95, alpha=0.05")
    for name, spec in chosen.items():   # a bad rule, persona... fails here, not on a worker
        try:
            run_replication([], {**spec, "engine": "python"}, 0, names)
        except ConfigError as exc:
            raise ConfigError(f"variant {name!r}: {exc.message}", hint=exc.hint) from None

    seeds = [replication_seed(seed, r) for r in range(replications)]
    if client is not None or scheduler is not None:
        plugins = _worker_plugins(worker_plugins, plugins, chosen)
    bar = _bar(len(chosen) * replications, progress)
    try:
        if client is None and scheduler is None:
            values = _run_serial(make, chosen, seeds, names, bar)
        else:
            values = _run_on_dask(make, chosen, seeds, names, bar, client, scheduler, plugins)
    finally:
        bar.close()

    runs = pd.DataFrame(
        [(v, r, seeds[r], m, values[v, r][m]) for v in chosen for r in range(replications)
         for m in names], columns=["variant", "replication", "seed", "metric", "value"])
    summary = _summarise(pd, stats, runs, confidence)
    comparisons = _compare(pd, stats, multitest, runs, list(chosen), names, test,
                           confidence, alpha)
    return Experiment(summary=summary, comparisons=comparisons, runs=runs, variants=chosen,
                      replications=replications, seed=seed, seeds=seeds, metrics=names,
                      test=test, confidence=confidence, alpha=alpha)


def _bar(total: int, show: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="experiment", unit="run", disable=not show)


def _run_serial(make, variants, seeds, metrics, bar) -> dict:
    values = {}
    for r, s in enumerate(seeds):
        items = _draw(make, s)   # drawn once: every variant runs this very list
        for name, spec in variants.items():
            values[name, r] = run_replication(items, spec, s, metrics)
            bar.update(1)
    return values


def _worker_plugins(worker_plugins, plugins, variants) -> tuple[str, ...]:
    """The modules each run on a worker imports: the variants' rules and verifiers'."""
    rules, specs = [], []
    for spec in variants.values():
        rules.append(spec.get("rule", "specialist_first"))
        verify = spec.get("verify")
        specs.extend([verify] if verify is None or isinstance(verify, str) else verify)
    return worker_plugins(plugins, rules=rules, verifiers=specs)


def _run_on_dask(make, variants, seeds, metrics, bar, client, scheduler,
                 plugins: tuple[str, ...] = ()) -> dict:
    from timmy.sim.sweeps import dask_client, gather

    with dask_client(client, scheduler) as client:
        futures, where = [], {}
        for r, s in enumerate(seeds):
            # drawn once here and sent once: every variant's run gets the very same list
            [items] = client.scatter([_draw(make, s)], broadcast=False)
            for name, spec in variants.items():
                f = client.submit(run_replication, items, spec, s, metrics, plugins,
                                  pure=False)
                futures.append(f)
                where[f.key] = (name, r)
        return {where[f.key]: value for f, value in gather(client, futures, bar)}


def _interval(stats, values, confidence: float) -> tuple[float, float, float, int]:
    """Mean, CI low, CI high and n of ``values`` (NaNs dropped)."""
    import numpy as np

    x = np.asarray(values, dtype=float)
    x = x[~np.isnan(x)]
    n, nan = len(x), float("nan")
    if n == 0:
        return nan, nan, nan, 0
    mean = float(x.mean())
    if n < 2:
        return mean, nan, nan, n
    sem = float(stats.sem(x))
    if sem == 0:
        return mean, mean, mean, n
    low, high = stats.t.interval(confidence, n - 1, loc=mean, scale=sem)
    return mean, float(low), float(high), n


def _summarise(pd, stats, runs, confidence: float):
    rows = []
    for (variant, metric), g in runs.groupby(["variant", "metric"], sort=False):
        mean, low, high, n = _interval(stats, g["value"], confidence)
        rows.append((variant, metric, mean, low, high, n))
    return pd.DataFrame(rows, columns=["variant", "metric", "mean", "ci_low", "ci_high", "n"])


def _paired_p(stats, a, b, test: str) -> float:
    d = a - b
    if len(d) < 2:
        return float("nan")
    if (d == 0).all():
        return 1.0   # no difference at all: nothing to reject
    if test == "wilcoxon":
        return float(stats.wilcoxon(a, b).pvalue)
    return float(stats.ttest_rel(a, b).pvalue)


def _compare(pd, stats, multitest, runs, variants, metrics, test, confidence, alpha):
    import numpy as np

    wide = runs.pivot_table(index=["metric", "replication"], columns="variant", values="value",
                            dropna=False)
    rows = []
    for a, b in itertools.combinations(variants, 2):
        for metric in metrics:
            pair = wide.loc[metric, [a, b]].dropna()
            x, y = pair[a].to_numpy(), pair[b].to_numpy()
            diff, low, high, n = _interval(stats, x - y, confidence)
            rows.append((a, b, metric, diff, low, high, _paired_p(stats, x, y, test), n))
    df = pd.DataFrame(rows, columns=["a", "b", "metric", "diff", "ci_low", "ci_high", "p", "n"])
    df = df.astype({"diff": float, "ci_low": float, "ci_high": float, "p": float, "n": int})
    p = df["p"].to_numpy()
    ok = ~np.isnan(p)
    holm = np.full(len(p), np.nan)
    if ok.any():
        holm[ok] = multitest.multipletests(p[ok], alpha=alpha, method="holm")[1]
    df.insert(7, "p_holm", holm)
    df.insert(8, "significant", np.where(ok, holm < alpha, False).astype(bool))
    return df
