"""A digital twin's model of a swarm (`Model`), fitted by `timmy.sim.calibration.calibrate` from
what a run recorded and used by ``simulate(..., model=)``: per persona the distribution of
execution time (a scipy family and the empirical quantiles), success on and off its speciality,
crashes and restarts; the arrivals of the recorded posts; the coordinator's own overhead from
post to assignment as a function of the queue. Saved to and loaded from TOML or JSON.

scipy is imported when a fit is made or a gamma duration drawn, matplotlib by `Model.plot`.
"""

from __future__ import annotations

import json
import math
import statistics
import warnings
from bisect import bisect_right
from dataclasses import asdict, dataclass, field
from pathlib import Path

from timmy.errors import ConfigError, TimmyError, require

#: The version of the model file format; a file of another version is refused.
MODEL_VERSION = 1
#: The parametric families a duration is fitted with (scipy.stats names).
FAMILIES = ("expon", "gamma", "lognorm", "weibull_min")
#: A parametric fit is used to draw durations when its KS test does not reject it at this
#: level; else the empirical quantiles are.
KS_LEVEL = 0.05
#: The empirical quantiles kept: 0, 0.5, 1, ..., 100 percent.
QUANTILES = tuple(i / 200 for i in range(201))


class ModelError(TimmyError, ValueError):
    """A model file that cannot be used: another version, a bad field, unreadable."""


@dataclass
class DurationFit:
    """Execution time (seconds) of one persona's runs.

    ``family`` and ``params`` (scipy.stats order: shapes, loc, scale) are the best parametric
    fit by the Kolmogorov-Smirnov statistic; ``stats`` has, per family tried, ``ks`` (the
    statistic), ``p`` (its p-value) and ``aic``. ``quantiles`` are the empirical ones at
    `QUANTILES`. ``sampler`` is what draws use: "parametric" when the best family's KS test
    does not reject it at `KS_LEVEL`, else "empirical" (which always matches the recorded
    sample better, being made of it).
    """

    n: int
    mean: float
    family: str = "expon"
    params: list[float] = field(default_factory=list)
    quantiles: list[float] = field(default_factory=list)
    stats: dict[str, dict[str, float]] = field(default_factory=dict)
    sampler: str = "empirical"

    def __repr__(self) -> str:   # short: the quantiles are 201 numbers
        return (f"DurationFit({self.family}, n={self.n}, mean={self.mean:.4g} s, "
                f"draws: {self.sampler})")

    @property
    def better(self) -> str:
        """Which fits the recorded durations better: the family's name or "empirical"."""
        return self.family if self.sampler == "parametric" else "empirical"

    def ppf(self, u: float) -> float:
        """The duration at quantile ``u`` (0 <= u < 1) of the distribution draws use."""
        if self.sampler == "parametric" and self.params:
            return max(0.0, _ppf(self.family, self.params, u))
        return _interpolate(self.quantiles, u)

    def scaled(self, factor: float) -> DurationFit:
        """The same fit with every duration ``factor`` times as long."""
        params = list(self.params)
        if params:
            params[-2] *= factor   # loc
            params[-1] *= factor   # scale
        return DurationFit(self.n, self.mean * factor, self.family, params,
                           [q * factor for q in self.quantiles], dict(self.stats), self.sampler)

    def sample(self, rng, n: int) -> list[float]:
        """``n`` durations drawn with ``rng`` (anything with ``random()``)."""
        return [self.ppf(rng.random()) for _ in range(n)]

    def pdf(self, xs):
        """The parametric family's density at ``xs`` (numpy array) - for plots."""
        stats = require("scipy.stats", "analysis")
        return getattr(stats, self.family).pdf(xs, *self.params)


@dataclass
class PersonaModel:
    """What one persona's runners did: ``tasks`` runs with a result (its share of all runs in
    ``share``), their ``duration``, success on and off its speciality (``None``: no such run
    recorded; the other rate is used), ``crash_rate`` per run and ``restart_seconds`` from a
    crash to the runner's return."""

    name: str
    tasks: int
    duration: DurationFit
    success_on_spec: float | None = None
    success_off_spec: float | None = None
    on_spec_runs: int = 0
    off_spec_runs: int = 0
    crash_rate: float = 0.0
    crashes: int = 0
    restart_seconds: float = 0.5
    runners: int = 1
    share: float = 0.0

    def success(self, on_spec: bool) -> float:
        """The chance a run succeeds (on- or off-spec; the other rate when one is unknown)."""
        rate = self.success_on_spec if on_spec else self.success_off_spec
        if rate is None:
            rate = self.success_off_spec if on_spec else self.success_on_spec
        return 1.0 if rate is None else rate


@dataclass
class ArrivalModel:
    """The recorded posts: ``rate`` (tasks/s), ``burstiness`` (coefficient of variation of
    the gaps between posts: 1 for Poisson, more for bursts), ``n`` posts, and ``mix``: the
    share of tasks per persona whose keywords the description matches ("generic": none)."""

    rate: float
    burstiness: float = 1.0
    n: int = 0
    mix: dict[str, float] = field(default_factory=dict)


@dataclass
class OverheadModel:
    """The coordinator's time from a task's post to its first assignment (seconds):
    ``base + per_queued * queued``, ``queued`` the tasks posted before it and not yet
    assigned, fitted by least squares over ``n`` tasks; ``residuals`` the empirical
    quantiles (at `QUANTILES`) of what the line does not explain, added to draws;
    ``requeue``: the mean time from a task's requeue to its next assignment. ``queued``
    is capped at ``max_queued``, the most seen in the recorded run (no extrapolation: a
    line fitted at light load must not compound into a runaway queue at heavy load).
    ``dispatch``: what a run that starts on an idle runner takes longer than one its runner
    goes straight on to (the message to the runner, its wake-up); durations exclude it."""

    base: float = 0.0
    per_queued: float = 0.0
    n: int = 0
    residuals: list[float] = field(default_factory=list)
    requeue: float = 0.0
    max_queued: int = 0
    dispatch: float = 0.0

    def mean(self, queued: int) -> float:
        return max(0.0, self.base + self.per_queued * min(queued, self.max_queued))

    def draw(self, queued: int, u: float) -> float:
        noise = _interpolate(self.residuals, u) if self.residuals else 0.0
        return max(0.0, self.base + self.per_queued * min(queued, self.max_queued) + noise)


@dataclass
class Model:
    """A fitted model of a swarm: see the module docstring. ``runners``: the runners per
    persona in the recorded run (what ``simulate(model=)`` uses when given no ``runners``);
    ``rule``: the mechanism it cleared with; ``tasks``: the tasks it was fitted from."""

    personas: dict[str, PersonaModel]
    arrivals: ArrivalModel
    overhead: OverheadModel = field(default_factory=OverheadModel)
    source: str = ""
    tasks: int = 0
    rule: str = ""
    version: int = MODEL_VERSION

    def __repr__(self) -> str:   # short; str() / summary() is the readable whole
        return (f"Model(v{self.version}, {len(self.personas)} personas, {self.tasks} tasks "
                f"from {self.source or '?'}, {self.arrivals.rate:.4g} tasks/s)")

    # -- use ------------------------------------------------------------------------
    @property
    def runners(self) -> dict[str, int]:
        return {name: p.runners for name, p in self.personas.items()}

    def capacity(self, runners: dict[str, int] | int | None = None) -> float:
        """Roughly how many tasks a second ``runners`` (default: the recorded mix) finish.

        Each persona gets its recorded share of the runs (renormalised over the personas
        that have runners) and is saturated when share x rate x mean run time x runs per
        task reaches its runner count: the capacity is the smallest such rate. Rough: a
        mechanism that moves work to idle runners does better, a lopsided workload worse.
        """
        counts = self._counts(runners)
        present = {p: m for p, m in self.personas.items() if counts.get(p, 0) > 0}
        total = sum(m.share for m in present.values())
        if not present or total <= 0:
            return 0.0
        runs = self.runs_per_task()
        limits = [counts[p] / (m.share / total * m.duration.mean * runs)
                  for p, m in present.items() if m.share > 0 and m.duration.mean > 0]
        return min(limits) if limits else math.inf

    def runs_per_task(self) -> float:
        """Runs per task: 1 / the run-weighted success rate (failed runs are repeated)."""
        runs = sum(m.tasks for m in self.personas.values())
        ok = sum(m.tasks * _mean_success(m) for m in self.personas.values())
        return runs / ok if ok > 0 else 1.0

    def check_rate(self, rate: float, runners: dict[str, int] | int | None = None) -> None:
        """`ConfigError` when ``rate`` (tasks/s) is above `capacity`: it will not keep up."""
        cap = self.capacity(runners)
        if rate > cap:
            raise ConfigError(
                f"{rate:g} tasks/s is above the modelled capacity of {cap:.3g} tasks/s "
                f"({rate / cap - 1:.0%} over): the runners will not keep up",
                hint="add runners (runners={persona: count}, --runners quill=3,...) or lower "
                     "the rate; to simulate the overload anyway: simulate(model=) runs it "
                     "(timmy simulate --overload)")

    def scaled(self, factor: float) -> Model:
        """The same model with every persona's durations ``factor`` times as long."""
        personas = {n: PersonaModel(**{**_shallow(p), "duration": p.duration.scaled(factor)})
                    for n, p in self.personas.items()}
        return Model(personas, self.arrivals, self.overhead, self.source, self.tasks,
                     self.rule, self.version)

    def _counts(self, runners) -> dict[str, int]:
        if runners is None:
            return self.runners
        if isinstance(runners, int):
            return {p: runners for p in self.personas}
        return dict(runners)

    # -- files ----------------------------------------------------------------------
    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict, where: str = "the model") -> Model:
        version = data.get("version")
        if version != MODEL_VERSION:
            raise ModelError(f"{where} is a model of version {version!r}; this timmy reads "
                             f"version {MODEL_VERSION}",
                             hint="calibrate it again with this timmy: "
                                  "`timmy calibrate SOURCE -o FILE`")
        try:
            personas = {}
            for name, p in data["personas"].items():
                fields = dict(p)
                fields["duration"] = DurationFit(**fields["duration"])
                personas[name] = PersonaModel(**fields)
            return cls(personas=personas, arrivals=ArrivalModel(**data["arrivals"]),
                       overhead=OverheadModel(**data.get("overhead", {})),
                       source=data.get("source", ""), tasks=data.get("tasks", 0),
                       rule=data.get("rule", ""), version=version)
        except (KeyError, TypeError) as exc:
            raise ModelError(f"{where} is not a timmy model: bad or missing field ({exc})",
                             hint="calibrate it again: `timmy calibrate SOURCE -o FILE`") \
                from None

    def save(self, path: str | Path) -> Path:
        """Write the model to ``path``: TOML for ``.toml``, else JSON."""
        path = Path(path)
        data = self.to_dict()
        text = to_toml(data) if path.suffix == ".toml" else json.dumps(data, indent=1) + "\n"
        path.write_text(text, encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> Model:
        """A model saved by `save` (TOML or JSON, by suffix)."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ModelError(f"cannot read the model file {path}: {exc.strerror or exc}",
                             hint="pass a file written by Model.save or `timmy calibrate`") \
                from None
        try:
            if path.suffix == ".toml":
                import tomllib

                data = tomllib.loads(text)
            else:
                data = json.loads(text)
        except ValueError as exc:
            raise ModelError(f"{path} is not a readable model file ({exc})",
                             hint="pass a .toml or .json file written by Model.save") from None
        if not isinstance(data, dict):
            raise ModelError(f"{path} is not a timmy model", hint="pass a file written by "
                             "Model.save or `timmy calibrate`")
        return cls.from_dict(data, where=str(path))

    # -- showing --------------------------------------------------------------------
    def summary(self) -> str:
        """The model as readable text."""
        a, o = self.arrivals, self.overhead
        lines = [f"timmy model v{self.version}: {self.tasks} tasks from {self.source or '?'}"
                 + (f", rule {self.rule}" if self.rule else ""),
                 f"arrivals: {a.rate:.4g} tasks/s, burstiness (CV of gaps) {a.burstiness:.3g}"
                 f", {a.n} posts",
                 f"overhead post->assign: {o.base * 1000:.3g} ms + {o.per_queued * 1000:.3g} ms"
                 f" per queued task ({o.n} tasks); requeue->assign {o.requeue * 1000:.3g} ms;"
                 f" dispatch to an idle runner {o.dispatch * 1000:.3g} ms",
                 f"capacity of the recorded runners: {self.capacity():.4g} tasks/s",
                 "persona   runners  runs  mean s   p50 s    p95 s    best fit        "
                 "ok on   ok off  crash/run"]
        for name, p in sorted(self.personas.items()):
            d = p.duration
            fit = d.family + ("" if d.sampler == "parametric" else " (empirical)")
            lines.append(
                f"{name:<9} {p.runners:>7} {p.tasks:>5}  {d.mean:<8.4g} "
                f"{_interpolate(d.quantiles, 0.5):<8.4g} {_interpolate(d.quantiles, 0.95):<8.4g}"
                f" {fit:<15} {_rate(p.success_on_spec):>6} {_rate(p.success_off_spec):>7} "
                f"{p.crash_rate:>9.3g}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()

    def plot(self, personas: list[str] | None = None, *, ncols: int = 3):
        """A matplotlib Figure, one panel per persona: the histogram of recorded durations
        (reconstructed from the empirical quantiles) with the fitted density, and the
        empirical CDF (right axis)."""
        require("matplotlib", "analysis")
        np = require("numpy", "analysis")
        from matplotlib.figure import Figure

        names = sorted(self.personas) if personas is None else list(personas)
        unknown = [n for n in names if n not in self.personas]
        if unknown or not names:
            raise ConfigError(f"the model has no persona {unknown[0]!r}" if unknown else
                              "the model has no personas to plot",
                              hint=f"choose from: {', '.join(sorted(self.personas)) or '-'}")
        ncols = max(1, min(ncols, len(names)))
        nrows = math.ceil(len(names) / ncols)
        fig = Figure(figsize=(4.2 * ncols, 3.2 * nrows), layout="constrained")
        axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
        for ax, name in zip(axes, names, strict=False):
            d = self.personas[name].duration
            q = np.asarray(d.quantiles, dtype=float)
            # the quantiles as a sample of equal weights: a histogram of the recorded shape
            sample = np.interp(np.linspace(0, 1, 400), np.asarray(QUANTILES), q)
            top = float(q[-1]) if len(q) else 1.0
            ax.hist(sample, bins=30, density=True, color="C0", alpha=0.45,
                    label=f"recorded ({d.n} runs)")
            if d.params:
                xs = np.linspace(0, top * 1.05 or 1.0, 200)
                ax.plot(xs, d.pdf(xs), color="C1", label=f"{d.family} fit")
            ax.set_xlabel("execution time (s)")
            ax.set_ylabel("density (1/s)")
            ax.set_title(f"{name}: best {d.better}", fontsize=10)
            cdf = ax.twinx()
            cdf.plot(q, QUANTILES[:len(q)], color="C2", lw=1, label="empirical CDF")
            cdf.set_ylim(0, 1.02)
            cdf.set_ylabel("cumulative share", fontsize=8)
            lines = ax.get_legend_handles_labels()
            more = cdf.get_legend_handles_labels()
            ax.legend(lines[0] + more[0], lines[1] + more[1], fontsize=7)
        for ax in axes[len(names):]:
            ax.set_visible(False)
        return fig


def load_model(model) -> Model:
    """A `Model`, or one loaded from a path."""
    if isinstance(model, Model):
        return model
    if isinstance(model, str | Path):
        return Model.load(model)
    raise ConfigError(f"model= takes a timmy.sim.Model or a model file, not "
                      f"{type(model).__name__}",
                      hint="pass timmy.sim.calibrate(source) or the path of a saved model")


# -- fitting ---------------------------------------------------------------------------


def fit_durations(values) -> DurationFit:
    """Fit `FAMILIES` to ``values`` (seconds, at least 2); see `DurationFit`."""
    np = require("numpy", "analysis")
    stats = require("scipy.stats", "analysis")
    x = np.sort(np.asarray(values, dtype=float))
    x = x[np.isfinite(x)]
    quantiles = [round_sig(v) for v in np.quantile(x, QUANTILES)]
    fit = DurationFit(n=len(x), mean=float(x.mean()), quantiles=quantiles)
    if len(x) > 5000:   # the fit on an even subsample: as good, much faster
        x = x[np.linspace(0, len(x) - 1, 5000).astype(int)]
    positive = x[x > 0]
    best = None
    distinct = len(np.unique(positive)) > 2   # else no family to fit: the quantiles draw
    for family in FAMILIES if distinct else ():
        dist = getattr(stats, family)
        try:
            with np.errstate(all="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore")   # scipy's notes on a poor optimisation
                params = dist.fit(positive, floc=0.0)
                if not all(map(math.isfinite, params)):
                    continue
                ks = stats.kstest(x, dist.cdf, args=params)
                loglik = float(np.sum(dist.logpdf(positive, *params)))
        except (ValueError, RuntimeError, FloatingPointError):
            continue
        k = len(params) - 1   # loc is fixed
        fit.stats[family] = {"ks": float(ks.statistic), "p": float(ks.pvalue),
                             "aic": 2 * k - 2 * loglik if math.isfinite(loglik) else math.inf}
        if best is None or ks.statistic < fit.stats[best[0]]["ks"]:
            best = (family, [float(p) for p in params])
    if best is not None:
        fit.family, fit.params = best
        fit.sampler = "parametric" if fit.stats[best[0]]["p"] >= KS_LEVEL else "empirical"
    return fit


# -- TOML ------------------------------------------------------------------------------


def to_toml(data: dict) -> str:
    """``data`` (str keys; values numbers, strings, bools, lists of those, dicts, None
    left out) as TOML text that `tomllib` reads back."""
    out: list[str] = []
    _toml_table(data, [], out)
    return "\n".join(out).lstrip("\n") + "\n"


def _toml_table(data: dict, path: list[str], out: list[str]) -> None:
    scalars = [(k, v) for k, v in data.items() if not isinstance(v, dict) and v is not None]
    tables = [(k, v) for k, v in data.items() if isinstance(v, dict)]
    if path and (scalars or not tables):
        out.append("")
        out.append("[" + ".".join(_toml_key(p) for p in path) + "]")
    for key, value in scalars:
        out.append(f"{_toml_key(key)} = {_toml_value(value)}")
    for key, value in tables:
        _toml_table(value, [*path, key], out)


def _toml_key(key: str) -> str:
    key = str(key)
    if key and all(c.isascii() and (c.isalnum() or c in "-_") for c in key):
        return key
    return json.dumps(key)


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise ModelError(f"cannot write {type(value).__name__} to TOML", hint="save as .json")


# -- helpers ---------------------------------------------------------------------------


def _ppf(family: str, params: list[float], u: float) -> float:
    """The inverse CDF of a scipy family, in closed form where there is one (fast: a draw
    per task)."""
    *shape, loc, scale = params
    if family == "expon":
        return loc - scale * math.log1p(-u)
    if family == "weibull_min":
        return loc + scale * (-math.log1p(-u)) ** (1.0 / shape[0])
    if family == "lognorm":
        z = statistics.NormalDist().inv_cdf(min(max(u, 1e-12), 1 - 1e-12))
        return loc + scale * math.exp(shape[0] * z)
    if family == "gamma":
        special = require("scipy.special", "analysis")
        return loc + scale * float(special.gammaincinv(shape[0], u))
    stats = require("scipy.stats", "analysis")
    return float(getattr(stats, family).ppf(u, *params))


def _interpolate(quantiles: list[float], u: float) -> float:
    """The value at ``u`` of quantiles taken at `QUANTILES` (linear between them)."""
    if not quantiles:
        return 0.0
    levels = QUANTILES if len(quantiles) == len(QUANTILES) else \
        [i / (len(quantiles) - 1) for i in range(len(quantiles))] if len(quantiles) > 1 else [0]
    if len(quantiles) == 1:
        return quantiles[0]
    i = min(max(bisect_right(levels, u) - 1, 0), len(levels) - 2)
    lo, hi = levels[i], levels[i + 1]
    w = (u - lo) / (hi - lo) if hi > lo else 0.0
    return quantiles[i] + (quantiles[i + 1] - quantiles[i]) * min(max(w, 0.0), 1.0)


def _mean_success(p: PersonaModel) -> float:
    runs = p.on_spec_runs + p.off_spec_runs
    if runs <= 0:
        return p.success(True)
    return (p.on_spec_runs * p.success(True) + p.off_spec_runs * p.success(False)) / runs


def round_sig(value) -> float:
    """``value`` to 6 significant digits: what a model file keeps of a quantile."""
    return float(f"{float(value):.6g}")


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _shallow(obj) -> dict:
    return {f: getattr(obj, f) for f in obj.__dataclass_fields__}
