"""The digital twin checked against reality: calibrate from live run A, predict run B, run B live,
compare. Prints figures, asserts nothing.

Both runs are real: a ``timmy serve`` service (its own process, a SQLite file) with real runner
processes that answer through the Ollama executor, against the Ollama look-alike of
tests/ollama_server.py run in a process of its own. Each persona's runners ask a model of
their own, and the server makes each model wait a random time (a gamma law with mean
``DELAYS[persona]`` and coefficient of variation ``--cv``, seeded): tens of milliseconds of
"model time" that timmy never sees in advance. An open-loop poster posts a Poisson arrival
workload (`timmy.sim.workloads.poisson_arrivals` over a `keyword_mix` of three personas) at the
arrival times, whatever the swarm's state.

1. Run A: mix ``MIX_A``, rule ``--rule-a``, at ``--load-a`` (60 %) of the mix's nominal
   capacity (from the server's mean delays: the benchmark knows them, the model does not).
2. Calibrate: `timmy.sim.calibrate` on A's export (the stored tables only).
3. Predict B: ``MIX_B`` (another runner mix), ``--rule-b`` (another mechanism), at
   ``--load-b`` (85 %) of the capacity the MODEL gives B's mix (`Model.capacity`):
   ``simulate(arrivals, model=model, ...)`` over ``--replications`` seeds: the mean, its
   95 % CI, and the 95 % prediction interval of one run.
4. Run B live with the same arrivals, and print predicted against measured: throughput,
   post->done p50 and p95, cost per task, each with its relative error (target: 10 % for
   throughput and p50, 20 % for p95).

Figures of both sides come from the same function of the tables (`figures`): throughput =
completed tasks / (last completion - first post); post->done = completed_at - created_at of
completed tasks; cost per task = sats in the ledger / completed tasks.

Two diagnostics follow the comparison: the same prediction from the arrivals B actually got
(the poster can run late on busy cores; a late poster posts what is due together), and each
persona's mean run time in A against B's own calibration and against what the runners
measured themselves (``elapsed_s``). Near saturation the waiting times
are very sensitive to the run times: a few % of machine speed moving between A and B (two
cores shared with other work) moves p50 and p95 by tens of %. That, sampling (a p95 from a
few hundred tasks), and the message latency the calibration counts in a run that starts on
an idle runner are what limit the fit.

    python benchmarks/twin.py [--tasks-a 600] [--tasks-b 900] [--cv 0.5] [--keep DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
LISTENING = re.compile(r"listening on (tcp://[\d.]+:(\d+))")

#: Mean "model time" per persona, seconds (the look-alike's per-model wait).
DELAYS = {"forge": 0.08, "quill": 0.04, "echo": 0.12}
#: The share of tasks written for each persona.
WEIGHTS = {"forge": 2.0, "quill": 2.0, "echo": 1.0}
MIX_A = {"forge": 2, "quill": 1, "echo": 1}
MIX_B = {"forge": 2, "quill": 1, "echo": 2}
#: What a run costs on top of the model time, roughly (the executor's HTTP round trip and
#: the runner's own work on two busy cores): only to pick A's rate near the intended load.
EXEC_OVERHEAD = 0.015


def model_name(persona: str) -> str:
    return f"{persona}-twin"


def nominal_capacity(mix: Mapping[str, int], delays: Mapping[str, float] = DELAYS,
                     weights: Mapping[str, float] = WEIGHTS,
                     overhead: float = EXEC_OVERHEAD) -> float:
    """Tasks/s the mix keeps up with if every persona's tasks go to its own runners: the
    bottleneck persona's runners / (its share of the posts x (its mean time + overhead))."""
    total = sum(weights.values())
    return min(mix[p] / (weights[p] / total * (delays[p] + overhead))
               for p in weights if weights[p] > 0)


def arrivals(n: int, rate: float, seed: int, weights: Mapping[str, float] = WEIGHTS):
    from timmy.sim.workloads import keyword_mix, poisson_arrivals

    return poisson_arrivals(n, rate, seed, descriptions=keyword_mix(n, seed, dict(weights)))


# -- the live side ------------------------------------------------------------------------


def ollama_lookalike(delays: Mapping[str, float] = DELAYS, cv: float = 0.5,
                     seed: int = 0):
    """The Ollama look-alike in a process of its own, one model per persona; a context
    manager that yields its URL."""
    from executors import loopback_server  # benchmarks/executors.py

    args = ["--delay-cv", repr(cv), "--delay-seed", str(seed)]
    for persona, seconds in delays.items():
        args += ["--model-delay", f"{model_name(persona)}={seconds!r}"]
    return loopback_server(0.0, *args)


@contextlib.contextmanager
def service(db: Path, *, ollama_url: str, rule: str, seed: int,
            personas: Iterator[str]) -> Iterator:
    """``timmy serve`` on ``db`` (no runners yet, the Ollama executor, one model per persona);
    yields a `Swarm.attach` client. Stopped (SIGTERM) at the end."""
    import signal

    import timmy

    models = [arg for p in personas for arg in ("--model", f"{p}={model_name(p)}")]
    env = {**os.environ, "OLLAMA_HOST": ollama_url}
    errors = db.with_suffix(".stderr")
    with errors.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "timmy", "serve", "--db", str(db), "--port", "0",
             "--no-spawn", "--seed", str(seed), "--rule", rule, "--executor", "ollama",
             *models], cwd=db.parent, stdout=subprocess.PIPE, stderr=err, text=True, env=env)
    try:
        deadline = time.monotonic() + 60
        url = None
        while url is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                raise SystemExit(f"timmy serve ended: {errors.read_text()[-2000:]}")
            if m := LISTENING.search(line):
                url = m.group(1)
        if url is None:
            raise SystemExit("timmy serve did not start in 60 s")
        token = Path(f"{db}.token").read_text().strip()
        with timmy.Swarm.attach(url, token=token) as swarm:
            yield swarm
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)


@dataclass
class LiveRun:
    """What one live run left: its export directory, its figures, how late the poster was."""

    export: Path
    figures: dict
    late_p95: float
    wall: float


def post_open_loop(swarm, work, t0: float | None = None) -> tuple[list[int], list[float]]:
    """Post each `Arrival` at its time (open loop: whatever the swarm's state); returns the
    task ids and how late each post went out (s). Posts already due when the poster gets
    the CPU back go out together (``post_many``), so a late poster catches up at once."""
    t0 = time.perf_counter() if t0 is None else t0
    ids, late = [], []
    i = 0
    while i < len(work):
        wait = t0 + work[i].at - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        now = time.perf_counter() - t0
        j = i + 1
        while j < len(work) and work[j].at <= now:   # arrivals are in time order
            j += 1
        due = work[i:j]
        late += [max(0.0, now - item.at) for item in due]
        if len(due) == 1:
            ids.append(swarm.post(due[0].description).task_id)
        else:
            ids += [t.task_id for t in swarm.post_many([item.description for item in due])]
        i += len(due)
    return ids, late


def run_live(out: Path, work, mix: Mapping[str, int], *, rule: str, seed: int,
             ollama_url: str, timeout: float = 300) -> LiveRun:
    """Start a service, spawn ``mix``, post ``work`` open loop, wait for every task, export."""
    out.mkdir(parents=True, exist_ok=True)
    with service(out / "live.db", ollama_url=ollama_url, rule=rule, seed=seed,
                 personas=list(mix)) as swarm:
        for persona, count in mix.items():
            for _ in range(count):
                swarm.spawn(persona)
        t0 = time.perf_counter()
        ids, late = post_open_loop(swarm, work)
        for task_id in ids:
            swarm.wait(task_id, timeout=timeout)
        wall = time.perf_counter() - t0
        swarm.export(out / "export")
    return LiveRun(out / "export", figures_of_export(out / "export"), pct(late, 0.95), wall)


# -- figures --------------------------------------------------------------------------------


def pct(xs, q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else math.nan


def figures(tasks, ledger) -> dict:
    """Throughput, post->done p50/p95 and cost per task from a run's tables (pandas frames
    with the export's columns: a live export or a `SimRun`)."""
    done = tasks[tasks["status"] == "completed"]
    n = len(done)
    if n == 0:
        return {"tasks": len(tasks), "completed": 0, "throughput": 0.0, "p50": math.nan,
                "p95": math.nan, "cost_per_task": math.nan}
    span = float(done["completed_at"].max() - tasks["created_at"].min())
    lat = (done["completed_at"] - done["created_at"]).to_numpy()
    paid = float(ledger["sats"].sum()) if len(ledger) else 0.0
    return {"tasks": len(tasks), "completed": n,
            "throughput": n / span if span > 0 else math.nan,
            "p50": float(_quantile(lat, 0.50)), "p95": float(_quantile(lat, 0.95)),
            "cost_per_task": paid / n}


def _quantile(xs, q: float) -> float:
    import numpy as np

    return float(np.quantile(np.asarray(xs, dtype=float), q))


def figures_of_export(export: Path) -> dict:
    import pandas as pd

    return figures(pd.read_parquet(export / "tasks.parquet"),
                   pd.read_parquet(export / "ledger.parquet"))


FIGURES = (("throughput", "tasks/s", 1.0, 0.10), ("p50", "ms", 1e3, 0.10),
           ("p95", "ms", 1e3, 0.20), ("cost_per_task", "sats", 1.0, None))


def describe_live(name: str, run: LiveRun) -> str:
    f = run.figures
    return (f"  live {name}: {f['completed']}/{f['tasks']} completed in {run.wall:.1f} s; "
            f"{f['throughput']:.1f} tasks/s, post->done p50 {f['p50'] * 1e3:.1f} ms, "
            f"p95 {f['p95'] * 1e3:.1f} ms, {f['cost_per_task']:.1f} sats/task "
            f"(poster late p95 {run.late_p95 * 1e3:.1f} ms)")


# -- the twin: calibrate, predict --------------------------------------------------------------


def predict(model, work, mix: Mapping[str, int], *, rule: str, seed: int,
            replications: int) -> dict[str, tuple[float, ...]]:
    """simulate(work, model=model) over ``replications`` seeds: {figure: (mean, CI low,
    CI high, PI low, PI high)}: the 95 % Student-t interval of the mean, and the 95 %
    prediction interval of ONE more run (mean +- t sd sqrt(1 + 1/n)): where a single live
    run should land if the model were exact, its own randomness being all that is left."""
    import numpy as np
    from scipy import stats

    from timmy.sim import simulate

    runs = []
    for r in range(replications):
        run = simulate(work, model=model, runners=dict(mix), rule=rule, seed=seed + r,
                       engine="python")
        runs.append(figures(run.tasks, run.ledger))
    out = {}
    for key, *_ in FIGURES:
        x = np.array([f[key] for f in runs], dtype=float)
        n, mean = len(x), float(x.mean())
        if n > 1 and x.std() > 0:
            t = float(stats.t.ppf(0.975, n - 1))
            half, spread = t * float(stats.sem(x)), t * float(x.std(ddof=1)) * (1 + 1 / n) ** 0.5
        else:
            half = spread = 0.0
        out[key] = (mean, mean - half, mean + half, mean - spread, mean + spread)
    return out


def compare(predicted: Mapping[str, tuple], measured: Mapping[str, float]) -> list[tuple]:
    """Rows (figure, unit, predicted, CI low, CI high, measured, relative error, target,
    PI low, PI high), in the figure's unit."""
    rows = []
    for key, unit, scale, target in FIGURES:
        mean, low, high, pi_low, pi_high = predicted[key]
        real = measured[key]
        err = (mean - real) / real if real else math.nan
        rows.append((key, unit, mean * scale, low * scale, high * scale, real * scale, err,
                     target, pi_low * scale, pi_high * scale))
    return rows


def print_comparison(rows) -> None:
    print(f"  {'figure':<18} {'predicted (95% CI)':>26} {'measured':>9} {'error':>8}  "
          f"{'target':<9} one run's 95% PI")
    for key, unit, mean, low, high, real, err, target, pi_low, pi_high in rows:
        ok = "" if target is None else ("ok" if abs(err) <= target else "MISS")
        tgt = "-" if target is None else f"{target:.0%} {ok}"
        inside = "inside" if pi_low <= real <= pi_high else "OUTSIDE"
        print(f"  {key + ' ' + unit:<18} {mean:>7.1f} ({low:>7.1f}-{high:>7.1f}) "
              f"{real:>9.1f} {err:>+8.1%}  {tgt:<9} {pi_low:.1f}-{pi_high:.1f} {inside}")


@dataclass
class Check:
    """One twin check: A and B live, the model fitted from A, B predicted."""

    live_a: LiveRun
    model: object
    rate_b: float
    predicted: dict
    live_b: LiveRun
    replayed: dict | None = None

    def rows(self, replayed: bool = False) -> list[tuple]:
        return compare(self.replayed if replayed else self.predicted, self.live_b.figures)


def check(root: Path, *, tasks_a: int = 600, tasks_b: int = 900, load_a: float = 0.60,
          load_b: float = 0.85, rule_a: str = "specialist_first", rule_b: str = "second_price",
          cv: float = 0.5, replications: int = 10, seed: int = 1, say=print) -> Check:
    """Run A live, calibrate, predict B, run B live (in ``root``); ``say`` gets the story."""
    from timmy.sim import calibrate

    cap_a = nominal_capacity(MIX_A)
    rate_a = load_a * cap_a
    say(f"twin: personas {', '.join(f'{p} {DELAYS[p] * 1e3:.0f} ms' for p in DELAYS)} "
        f"(gamma, cv {cv:g}), posts {WEIGHTS}")
    say(f"  A: mix {MIX_A}, {rule_a}, {rate_a:.1f} tasks/s "
        f"({load_a:.0%} of nominal {cap_a:.1f}), {tasks_a} tasks")
    work_a = arrivals(tasks_a, rate_a, seed)
    with ollama_lookalike(cv=cv, seed=seed) as url:
        live_a = run_live(root / "A", work_a, MIX_A, rule=rule_a, seed=seed, ollama_url=url)
        say(describe_live("A", live_a))
        t0 = time.perf_counter()
        model = calibrate(live_a.export)
        say(f"  calibrated in {time.perf_counter() - t0:.2f} s:")
        say("    " + str(model).replace("\n", "\n    "))
        model.save(root / "model.toml")
        cap_b = model.capacity(MIX_B)
        rate_b = load_b * cap_b
        say(f"  B: mix {MIX_B}, {rule_b}, {rate_b:.1f} tasks/s ({load_b:.0%} of the model's "
            f"capacity {cap_b:.1f}; nominal {nominal_capacity(MIX_B):.1f}; A's by the model "
            f"{model.capacity(MIX_A):.1f}), {tasks_b} tasks")
        work_b = arrivals(tasks_b, rate_b, seed + 1)
        t0 = time.perf_counter()
        predicted = predict(model, work_b, MIX_B, rule=rule_b, seed=seed,
                            replications=replications)
        say(f"  predicted B in {time.perf_counter() - t0:.1f} s ({replications} runs)")
        live_b = run_live(root / "B", work_b, MIX_B, rule=rule_b, seed=seed, ollama_url=url)
        say(describe_live("B", live_b))
    # the same prediction from the arrivals B got (the poster runs late on busy cores):
    # what is left of the error is the model's, not the poster's
    replayed = predict(model, posted_arrivals(live_b.export), MIX_B, rule=rule_b, seed=seed,
                       replications=replications)
    # did the machine run as fast in B as in A? (the model can only know A) The runner's
    # own measure of each run (elapsed_s, in task_completed) against the calibrated means
    model_b = calibrate(live_b.export)
    own_a, own_b = runner_elapsed(live_a.export), runner_elapsed(live_b.export)
    say("  mean run time per persona, A -> B: calibrated " + ", ".join(
        f"{p} {model.personas[p].duration.mean * 1e3:.1f} -> "
        f"{model_b.personas[p].duration.mean * 1e3:.1f} ms "
        f"({model_b.personas[p].duration.mean / model.personas[p].duration.mean - 1:+.0%})"
        for p in MIX_B if p in model.personas and p in model_b.personas))
    say("    as the runners measured them (elapsed_s): " + ", ".join(
        f"{p} {own_a[p] * 1e3:.1f} -> {own_b[p] * 1e3:.1f} ms ({own_b[p] / own_a[p] - 1:+.0%})"
        for p in MIX_B if p in own_a and p in own_b))
    return Check(live_a, model, rate_b, predicted, live_b, replayed)


def runner_elapsed(export: Path) -> dict[str, float]:
    """Per persona, the mean time the runners measured for their completed runs (the
    ``elapsed_s`` of ``task_completed`` events): the machine's speed, whatever the load."""
    import json

    import pandas as pd

    events = pd.read_parquet(export / "events.parquet")
    agents = pd.read_parquet(export / "agents.parquet")
    persona = dict(zip(agents["agent_id"], agents["persona"], strict=True))
    done = events[events["kind"] == "task_completed"]
    times: dict[str, list[float]] = {}
    for agent, data in zip(done["agent_id"], done["data"], strict=True):
        elapsed = json.loads(data).get("elapsed_s")
        if elapsed is not None and agent in persona:
            times.setdefault(persona[agent], []).append(float(elapsed))
    return {p: sum(v) / len(v) for p, v in times.items()}


def posted_arrivals(export: Path):
    """The arrivals a live run got: its tasks at their created_at, from the first post."""
    import pandas as pd

    from timmy.sim.workloads import Arrival

    tasks = pd.read_parquet(export / "tasks.parquet").sort_values("task_id")
    t0 = float(tasks["created_at"].min())
    return [Arrival(float(t) - t0, d) for t, d in zip(tasks["created_at"],
                                                      tasks["description"], strict=True)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks-a", type=int, default=600, help="tasks in live run A")
    ap.add_argument("--tasks-b", type=int, default=900, help="tasks in live run B")
    ap.add_argument("--load-a", type=float, default=0.60, help="A's rate / A's capacity")
    ap.add_argument("--load-b", type=float, default=0.85, help="B's rate / B's capacity")
    ap.add_argument("--rule-a", default="specialist_first")
    ap.add_argument("--rule-b", default="second_price")
    ap.add_argument("--cv", type=float, default=0.5,
                    help="coefficient of variation of the model time (gamma law)")
    ap.add_argument("--replications", type=int, default=10,
                    help="simulated runs per prediction")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--keep", type=Path, default=None,
                    help="keep the databases, exports and model in this directory")
    args = ap.parse_args()
    with contextlib.ExitStack() as stack:
        root = args.keep or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        result = check(root, tasks_a=args.tasks_a, tasks_b=args.tasks_b, load_a=args.load_a,
                       load_b=args.load_b, rule_a=args.rule_a, rule_b=args.rule_b, cv=args.cv,
                       replications=args.replications, seed=args.seed)
    print("predicted vs measured, run B:")
    print_comparison(result.rows())
    print("the same, predicted from the arrivals B got (the poster's lag taken out):")
    print_comparison(result.rows(replayed=True))


if __name__ == "__main__":
    main()
