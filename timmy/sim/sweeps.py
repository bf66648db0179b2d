"""Parameter sweeps: `sweep` simulates every combination of a grid of `GRID_PARAMETERS` (rule,
jitter, load, runners, seed), in parallel on Dask, and returns one DataFrame, a row a point.
Dask is imported only inside `sweep`.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
from collections.abc import Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from timmy.errors import ConfigError, TimmyError, require
from timmy.market.auction import RULES, check_rule

#: The grid's dimensions, each with the value a point takes when the grid leaves it out.
#: ``rule``: a clearing rule; ``jitter``: a factor on every persona's ``bid_jitter``
#: (0 = fixed prices, 1 = the catalog's, 2 = twice as noisy); ``load``: arrivals per
#: second (Poisson); ``runners``: runners per persona; ``seed``: workload and bids.
GRID_PARAMETERS: dict[str, Any] = {
    "rule": "specialist_first",
    "jitter": 1.0,
    "load": 50.0,
    "runners": 1,
    "seed": 0,
}

#: Settings shared by every point of a sweep (keyword arguments of `sweep`, or the
#: ``[settings]`` table of a grid file), with their defaults.
SETTINGS: dict[str, Any] = {
    "tasks": 2000,          # tasks per point
    "task_seconds": 0.05,   # mean simulated execution time of a task
    "max_attempts": 3,      # a task fails after this many failed attempts
    "runner_queue": 32,     # tasks a runner holds before it stops bidding
}

#: The columns `run_point` adds after the point's parameters.
METRICS = ("mean_price", "specialist_share", "success_rate", "failed", "reauction_rate",
           "latency_p50_s", "latency_p95_s", "makespan_s")

#: The environment variable naming a Dask scheduler, e.g. ``tcp://10.0.0.5:8786``.
SCHEDULER_ENV = "TIMMY_DASK_SCHEDULER"

#: Seconds to wait for a scheduler before giving up on it.
CONNECT_TIMEOUT = 5.0

_MAX_JITTER = 200     # personas.py's limit on bid_jitter
_GRID_HINT = (f"a grid names some of: {', '.join(GRID_PARAMETERS)}; each a list of values, "
              "or for numbers a {start=, stop=, step=} range; fixed settings "
              f"({', '.join(SETTINGS)}) go in [settings]")


class Grid(dict):
    """A checked grid: parameter -> list of values, plus the ``settings`` of its file."""

    def __init__(self, values: Mapping[str, list], settings: Mapping[str, Any] | None = None,
                 source: str = "grid") -> None:
        super().__init__(values)
        self.settings = dict(settings or {})
        self.source = source

    def __reduce__(self):
        return (Grid, (dict(self), self.settings, self.source))

    @property
    def size(self) -> int:
        """The number of points (the product of the lists' lengths)."""
        return math.prod(len(v) for v in self.values())


# -- grids -------------------------------------------------------------------------------

def _bad(where: str, name: str, why: str, hint: str = _GRID_HINT) -> ConfigError:
    return ConfigError(f"{where}: grid parameter {name!r} {why}", hint=hint)


def _is_number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _expand_range(where: str, name: str, spec: Mapping) -> list:
    """The values of a ``{start=, stop=, step=}`` table: like range(), ``stop`` excluded."""
    hint = (f"write e.g. {name} = {{start = 1, stop = 5, step = 1}} (stop is excluded, "
            f"step defaults to 1), or a list like {name} = [1, 2, 4]")
    if name == "rule":
        raise _bad(where, name, "takes a list of rule names, not a range",
                   hint=f"e.g. rule = [{', '.join(repr(r) for r in RULES)}]".replace("'", '"'))
    unknown = sorted(set(spec) - {"start", "stop", "step"})
    if unknown:
        raise _bad(where, name, f"has a range with unknown key {unknown[0]!r}", hint)
    missing = [k for k in ("start", "stop") if k not in spec]
    if missing:
        raise _bad(where, name, f"has a range without {missing[0]!r}", hint)
    start, stop, step = spec["start"], spec["stop"], spec.get("step", 1)
    for key, v in (("start", start), ("stop", stop), ("step", step)):
        if not _is_number(v):
            raise _bad(where, name, f"has a range whose {key} is not a number: {v!r}", hint)
    if step <= 0:
        raise _bad(where, name, f"has a range with step {step!r}; it must be above 0", hint)
    count = math.ceil((stop - start) / step - 1e-9)
    if count <= 0:
        raise _bad(where, name, f"has an empty range: no value from {start!r} up to {stop!r} "
                   "(stop is excluded)", hint)
    if count > 100_000:
        raise _bad(where, name, f"has a range of {count:,} values", hint)
    if all(isinstance(v, int) for v in (start, step)):
        return [start + i * step for i in range(count)]
    return [round(start + i * step, 10) for i in range(count)]


def _check_value(where: str, name: str, v: object) -> object:
    """One grid value, normalised (numbers to float where fractions make sense)."""
    if name == "rule":
        try:
            return check_rule(v)   # any registered mechanism (timmy.register_mechanism)
        except TimmyError as e:
            why = (f"has unknown rule {v!r}" if e.message.startswith("unknown clearing rule")
                   else f"has a bad rule: {e.message}")
            raise _bad(where, name, why, hint=e.hint) from None
    if name in ("runners", "seed"):
        if isinstance(v, bool) or not isinstance(v, int):
            raise _bad(where, name, f"takes whole numbers, got {v!r}",
                       hint=f"e.g. {name} = [1, 2, 4]")
        if name == "runners" and v < 1:
            raise _bad(where, name, f"has {v!r}; every persona needs at least 1 runner",
                       hint="use runners >= 1, e.g. runners = [1, 2, 4]")
        return v
    if not _is_number(v):
        raise _bad(where, name, f"takes numbers, got {v!r}", hint=f"e.g. {name} = [0.5, 1, 2]")
    if name == "jitter" and v < 0:
        raise _bad(where, name, f"has {v!r}; a jitter factor cannot be negative",
                   hint="use 0 (fixed prices), 1 (the personas' own jitter) or more")
    if name == "load" and v <= 0:
        raise _bad(where, name, f"has {v!r}; the load (tasks per second) must be above 0",
                   hint="e.g. load = [20, 50, 200]")
    return float(v)


def check_grid(grid: Mapping[str, object], *, where: str = "grid") -> Grid:
    """Validate ``grid`` and return it as a `Grid` (lists of normalised values).

    Each value is a list, a single value, or for numbers a ``{start, stop, step}`` range
    (``stop`` excluded, as in range()). Raises `ConfigError` naming ``where`` and the
    parameter for an unknown parameter, an empty list or range, a repeated or bad value.
    """
    if not isinstance(grid, Mapping):
        raise ConfigError(f"{where}: a grid is a table of parameter -> values, got "
                          f"{type(grid).__name__}", hint=_GRID_HINT)
    if not grid:
        raise ConfigError(f"{where}: the grid names no parameter", hint=_GRID_HINT)
    out: dict[str, list] = {}
    for name, spec in grid.items():
        if name not in GRID_PARAMETERS:
            also = " (a fixed setting: put it in [settings])" if name in SETTINGS else ""
            raise _bad(where, name, f"is not a grid parameter{also}")
        if isinstance(spec, Mapping):
            values = _expand_range(where, name, spec)
        elif isinstance(spec, list | tuple):
            values = list(spec)
        else:
            values = [spec]
        if not values:
            raise _bad(where, name, "has an empty list", hint=f"give {name} at least one value")
        values = [_check_value(where, name, v) for v in values]
        repeated = next((v for i, v in enumerate(values) if v in values[:i]), None)
        if repeated is not None:
            raise _bad(where, name, f"repeats the value {repeated!r}",
                       hint="list each value once (add seeds to repeat a point)")
        out[name] = values
    ordered = {name: out[name] for name in GRID_PARAMETERS if name in out}
    return Grid(ordered, getattr(grid, "settings", None), where)


def check_settings(settings: Mapping[str, object], *, where: str = "sweep") -> dict[str, Any]:
    """The fixed settings with their defaults filled in; `ConfigError` for a bad one."""
    hint = f"settings are: {', '.join(f'{k} (default {v})' for k, v in SETTINGS.items())}"
    out = dict(SETTINGS)
    for name, v in settings.items():
        if name not in SETTINGS:
            also = " (a grid parameter: put it in the grid)" if name in GRID_PARAMETERS else ""
            raise ConfigError(f"{where}: unknown setting {name!r}{also}", hint=hint)
        if name == "task_seconds":
            ok = _is_number(v) and v >= 0
        else:
            ok = isinstance(v, int) and not isinstance(v, bool) and v >= 1
        if not ok:
            want = "a number >= 0" if name == "task_seconds" else "a whole number >= 1"
            raise ConfigError(f"{where}: setting {name!r} must be {want}, got {v!r}", hint=hint)
        out[name] = float(v) if name == "task_seconds" else v
    return out


def load_grid(path: str | Path) -> Grid:
    """Read a grid from a TOML file: a ``[grid]`` table and an optional ``[settings]`` table.

    ``[grid]`` gives each parameter a list (``rule = ["lowest", "second_price"]``) or, for
    numbers, a range table (``seed = {start = 0, stop = 4}``, stop excluded). The result's
    ``.settings`` holds ``[settings]``; `sweep` uses them unless given keyword arguments.
    See ``examples/grid.toml``. Errors are `ConfigError`s naming the file and parameter.
    """
    import tomllib

    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read grid file {path}: {exc.strerror or exc}",
                          hint="check the path; see examples/grid.toml") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8: {exc}", hint="save the file as UTF-8") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}",
                          hint="fix the syntax error at the position shown") from exc
    unknown = sorted(set(data) - {"grid", "settings"})
    if unknown:
        raise ConfigError(f"{path}: unknown table or key {unknown[0]!r}",
                          hint="a grid file has a [grid] table and an optional [settings] table")
    if not isinstance(data.get("grid"), dict):
        raise ConfigError(f"{path}: no [grid] table", hint=_GRID_HINT)
    settings = data.get("settings", {})
    if not isinstance(settings, dict):
        raise ConfigError(f"{path}: 'settings' must be a table", hint="write [settings]")
    grid = check_grid(data["grid"], where=str(path))
    checked = check_settings(settings, where=f"{path} [settings]")
    grid.settings = {name: checked[name] for name in settings}
    return grid


def grid_points(grid: Mapping[str, list]) -> list[dict[str, Any]]:
    """Every combination of the grid's values, as full points (defaults filled in)."""
    names = list(grid)
    return [{**GRID_PARAMETERS, **dict(zip(names, combo, strict=True))}
            for combo in itertools.product(*(grid[n] for n in names))]


# -- one point ---------------------------------------------------------------------------

def jittered_personas(factor: float) -> dict:
    """The built-in personas with ``bid_jitter`` scaled by ``factor`` (rounded, in [0, 200])."""
    from timmy.market.personas import PERSONAS

    return {pid: replace(p, bid_jitter=min(_MAX_JITTER, max(0, round(p.bid_jitter * factor))))
            for pid, p in PERSONAS.items()}


def run_point(point: Mapping[str, Any], settings: Mapping[str, Any],
              plugins: tuple[str, ...] = ()) -> dict[str, Any]:
    """Simulate one grid point: its parameters, then `METRICS` (see `SimRun.metrics`).

    A plain top-level function, so Dask can send it to any worker; ``plugins``: modules
    imported first (`timmy.sim.plugins.import_plugins`), e.g. ones registering mechanisms.
    """
    from timmy.sim.plugins import import_plugins
    from timmy.sim.simulator import simulate

    import_plugins(plugins)
    from timmy.sim.workloads import poisson_arrivals

    p = {**GRID_PARAMETERS, **point}
    s = {**SETTINGS, **settings}
    run = simulate(poisson_arrivals(s["tasks"], p["load"], p["seed"]), engine="python",
                   personas=jittered_personas(p["jitter"]), seed=p["seed"], rule=p["rule"],
                   runners=p["runners"], task_seconds=s["task_seconds"],
                   max_attempts=s["max_attempts"], runner_queue=s["runner_queue"])
    return {name: p[name] for name in GRID_PARAMETERS} | run.metrics()


# -- many points -------------------------------------------------------------------------

def sweep(grid: Mapping[str, object], *, client=None, scheduler: str | None = None,
          progress: bool = True, serial: bool = False, plugins=(), **settings):
    """Run every point of ``grid`` (see `check_grid`) and return a DataFrame, a row a point.

    Rows are sorted by the grid parameters; columns are `GRID_PARAMETERS` then
    `METRICS`; ``df.attrs["settings"]`` records the settings used. ``settings`` are
    `SETTINGS` (``tasks=500``...), over those of a grid read by `load_grid`.

    Where the points run: ``client=`` an existing ``dask.distributed.Client``; else
    ``scheduler=`` an address (or the ``TIMMY_DASK_SCHEDULER`` environment variable)
    of a running Dask scheduler (`ConfigError` if none answers within
    `CONNECT_TIMEOUT` seconds); else `local_cluster()`, started for this call and
    closed after it. ``serial=True`` runs them one after another in this process,
    without Dask. ``progress`` shows a bar that advances as points finish.

        grid = {"rule": ["specialist_first", "second_price"], "runners": [1, 2], "seed": [0, 1]}
        df = sweep(grid, tasks=500)                 # a local Dask cluster, started for the call
        df = sweep(grid, client=client)             # an existing dask.distributed Client
        df = sweep(grid, scheduler="tcp://host:8786")   # any Dask cluster
        df = sweep(load_grid("examples/grid.toml"))     # a grid (and its [settings]) from TOML

    Each point is one `run_point` call: a Poisson workload at ``load`` tasks per second,
    posted to a simulated swarm of the nine built-in personas with their bid jitter
    scaled by ``jitter``. A point is a pure function of its parameters and the settings,
    so a sweep gives the same numbers serially, on a local cluster or on a remote one
    (remote workers need timmy installed).

    ``plugins``: modules imported here and on each worker before its points (ones that
    register mechanisms, see `timmy.sim.plugins`); a registered rule defined in an
    importable module is found by itself, one defined in ``__main__`` (a notebook) is a
    `ConfigError` before anything runs on Dask.
    """
    from timmy.sim.plugins import check_plugins, import_plugins, worker_plugins

    pd = require("pandas", "analysis")
    plugins = check_plugins(plugins)
    import_plugins(plugins)
    checked = check_grid(grid, where=getattr(grid, "source", "grid"))
    from_file = check_settings(checked.settings, where=f"{checked.source} [settings]")
    from_call = check_settings(settings, where="sweep()")
    chosen = {**from_file, **{name: from_call[name] for name in settings}}
    points = grid_points(checked)
    if not serial:
        plugins = worker_plugins(plugins, rules=checked.get("rule", [GRID_PARAMETERS["rule"]]))
    bar = _bar(len(points), progress)
    try:
        if serial:
            rows = []
            for point in points:
                rows.append(run_point(point, chosen))
                bar.update(1)
        else:
            rows = _run_on_dask(points, chosen, client, scheduler, bar, plugins)
    finally:
        bar.close()
    df = pd.DataFrame(rows, columns=[*GRID_PARAMETERS, *METRICS])
    df = df.sort_values(list(GRID_PARAMETERS), kind="stable", ignore_index=True)
    df.attrs["settings"] = chosen
    return df


def local_cluster(n_workers: int | None = None):
    """A ``dask.distributed.LocalCluster`` for sweeps, as `sweep` starts by default.

    One single-threaded worker process per CPU (or ``n_workers``), no dashboard, and
    no statistical profiler: it samples the running simulation's stack every 10 ms
    and costs a point about a quarter of its speed. Start one to reuse it over
    several sweeps: ``with local_cluster() as c, Client(c) as client: sweep(g, client=client)``.
    """
    dask = require("dask", "analysis")
    distributed = require("dask.distributed", "analysis")
    with dask.config.set({"distributed.worker.profile.enabled": False}):
        return distributed.LocalCluster(n_workers=n_workers or os.cpu_count() or 2,
                                        threads_per_worker=1, processes=True,
                                        dashboard_address=None)


def _bar(total: int, show: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="sweep", unit="point", disable=not show)


@contextlib.contextmanager
def dask_client(client, address: str | None, *, from_env: bool = False):
    """``client`` itself, or one this call starts: on a `local_cluster` when ``address`` is
    None or "local", else connected to the scheduler at ``address``; what it started is
    closed when the block ends."""
    if client is not None:
        yield client
        return
    distributed = require("dask.distributed", "analysis")
    with contextlib.ExitStack() as owned:
        if address in (None, "local"):
            cluster = owned.enter_context(local_cluster())
            yield owned.enter_context(distributed.Client(cluster))
        else:
            yield owned.enter_context(_connect(distributed, address, from_env=from_env))


def gather(client, futures: list, bar) -> Iterator:
    """``(future, result)`` as each finishes, advancing ``bar``; on any error (or Ctrl-C)
    the futures still running are cancelled."""
    distributed = require("dask.distributed", "analysis")
    try:
        for future in distributed.as_completed(futures):
            yield future, future.result()
            bar.update(1)
    except BaseException:
        client.cancel(futures)
        raise


def _run_on_dask(points: list[dict], settings: dict, client, scheduler: str | None,
                 bar, plugins: tuple[str, ...] = ()) -> list[dict]:
    address = scheduler or os.environ.get(SCHEDULER_ENV) or None
    with dask_client(client, address, from_env=scheduler is None) as client:
        futures = client.map(run_point, points, settings=settings, plugins=plugins, pure=False)
        return [row for _, row in gather(client, futures, bar)]


def _connect(distributed, address: str, *, from_env: bool):
    """A Client on the scheduler at ``address``, or `ConfigError` within `CONNECT_TIMEOUT`."""
    source = f" (from {SCHEDULER_ENV})" if from_env else ""
    hint = ("start one with `dask scheduler` (and `dask worker ADDRESS` on each machine) / "
            "check the address, or leave it out to use a local cluster")
    if from_env:
        hint += f" (unset {SCHEDULER_ENV})"
    try:
        return distributed.Client(address, timeout=CONNECT_TIMEOUT)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{address!r}{source} is not a Dask scheduler address: {exc}",
                          hint=f"write it like tcp://HOST:8786; {hint}") from None
    except (OSError, TimeoutError) as exc:
        why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"cannot reach the Dask scheduler at {address}{source}: {why}",
                          hint=hint) from None
