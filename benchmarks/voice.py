"""The voice announcer's effect on auction throughput (it should be nil).

Nine runner processes, the simulated executor with zero task time, an SQLite
file store, as in throughput.py: each run is a fresh database, 200 warm-up
tasks, then 1,000 tasks posted at once and timed until all are finished. The
same run is repeated with

- ``none``:       no subscriber at all (the engine then builds no Event objects);
- ``null``:       a subscriber that does nothing (the cost of having any subscriber);
- ``announcer``:  ``swarm.subscribe(timmy.voice.announcer(to=DIR))``: real
                  pyttsx3 + espeak-ng synthesis, each announcement saved as a WAV;
- ``voice=True``: ``timmy.Swarm(..., voice=True)``: speech to the audio device (on a
                  machine without one the announcer goes quiet with one warning and
                  counts what it drops, and that is what is measured; it also hears
                  the warm-up, which the other modes do not).

Modes are interleaved run by run, in a rotating order; the median of 3 runs is
reported, with the CPU time the swarm's own process (engine, store writes, voice
threads; not the runners) spent per task, what each announcer said, merged and
dropped, and (timed around each call) how long the announcer held the engine's
thread: on a busy machine the run-to-run noise is larger than the effect, and
that figure is not noisy. Last, the cost of one announcer call, measured alone
over the event mix of a task.

    python benchmarks/voice.py [--tasks 1000] [--runs 3] [--warmup 200] [--min-interval 2.0]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import timmy
from timmy.market.models import Event
from timmy.sim.workloads import demo_descriptions

MODES = ("none", "null", "announcer", "voice=True")


def one_run(db: str, n: int, seed: int, mode: str, out: Path, min_interval: float,
            warmup: int) -> tuple[float, float, dict | None]:
    announcer = None
    with timmy.Swarm(db, seed=seed, task_seconds=0, voice=mode == "voice=True") as swarm:
        swarm.spawn_all()
        swarm.run(demo_descriptions(warmup, seed + 1000), timeout=120)
        if mode == "null":
            swarm.subscribe(lambda event: None)
        elif mode == "announcer":
            announcer = timmy.voice.announcer(out, min_interval=min_interval)
            timed = Timed(announcer)
            swarm.subscribe(timed)
        elif mode == "voice=True":
            announcer = swarm.announcer
        work = demo_descriptions(n, seed)
        t0, cpu0 = time.perf_counter(), time.process_time()
        done = swarm.run(work, timeout=300)
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        lost = sum(t.status not in ("completed", "failed") for t in done)
        assert lost == 0, f"{lost} tasks unfinished"
    stats = None
    if announcer is not None:
        announcer.close(wait=30)   # what was pending is said: count it
        stats = {**announcer.stats(), "said": list(announcer.said)}
        if mode == "announcer":
            stats.update(engine_ms=timed.ns / 1e6, calls=timed.calls,
                         engine_share=timed.ns / 1e9 / elapsed)
    return n / elapsed, cpu / n * 1e6, stats


class Timed:
    """A subscriber that times another: the time voice costs the engine's own thread."""

    def __init__(self, callback) -> None:
        self.callback, self.ns, self.calls = callback, 0, 0

    def __call__(self, event: Event) -> None:
        t0 = time.perf_counter_ns()
        self.callback(event)
        self.ns += time.perf_counter_ns() - t0
        self.calls += 1


# The events of one task in a run like the above: 15, of which 2 are news to an announcer.
TASK_EVENTS = ("task_posted", "auction_opened", *["bid"] * 9, "auction_closed", "task_assigned",
               "task_started", "task_completed")


def call_cost(callback, n: int = 160_000) -> float:
    """Microseconds per call of ``callback`` over the event mix of a task (best of 3)."""
    events = [Event(event_id=i, ts=0.0, kind=TASK_EVENTS[i % len(TASK_EVENTS)], task_id=i,
                    agent_id="forge-1", data={"price_sats": 30}) for i in range(n)]
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for e in events:
            callback(e)
        best = min(best, time.perf_counter() - t0)
    return best / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=200, help="warm-up tasks per run")
    ap.add_argument("--min-interval", type=float, default=2.0,
                    help="the announcer's seconds between announcements")
    args = ap.parse_args()
    try:
        print(f"speech: {timmy.voice.check()}")
    except timmy.VoiceUnavailable as exc:
        print(f"speech: unavailable ({exc.message}); the announcer modes measure a silent "
              "announcer")
    try:
        print(f"audio output: {timmy.voice.audio_output()}")
    except timmy.VoiceUnavailable as exc:
        print(f"audio output: none ({exc.message})")
    rates: dict[str, list[float]] = {m: [] for m in MODES}
    stats: dict[str, list[dict]] = {m: [] for m in MODES}
    cpu: dict[str, list[float]] = {m: [] for m in MODES}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.runs):
            for mode in MODES[i % len(MODES):] + MODES[:i % len(MODES)]:  # no mode always first
                db = f"sqlite:///{Path(tmp) / f'run{i}-{MODES.index(mode)}.db'}"
                rate, cpu_us, st = one_run(db, args.tasks, seed=i + 1, mode=mode,
                                           out=Path(tmp) / f"said-{i}",
                                           min_interval=args.min_interval, warmup=args.warmup)
                rates[mode].append(rate)
                cpu[mode].append(cpu_us)
                if st is not None:
                    stats[mode].append(st)
            print(f"run {i + 1}: " + ", ".join(f"{m} {rates[m][-1]:,.0f}" for m in MODES)
                  + " tasks/s")
    with tempfile.TemporaryDirectory() as tmp:
        announcer = timmy.voice.announcer(tmp, min_interval=3600)
        announcer_us = call_cost(announcer)
        announcer.close(wait=30)
    null_us = call_cost(lambda event: None)
    timer_us = call_cost(Timed(lambda event: None)) - null_us
    base = statistics.median(rates["none"])
    print(f"\nthroughput, median of {args.runs} runs of {args.tasks} tasks (9 runners):")
    base_cpu = statistics.median(cpu["none"])
    for mode in MODES:
        med, med_cpu = statistics.median(rates[mode]), statistics.median(cpu[mode])
        print(f"  {mode:<11} {med:>7,.0f} tasks/s  ({med / base - 1:+.1%} vs none; "
              f"min {min(rates[mode]):,.0f}, max {max(rates[mode]):,.0f}); "
              f"CPU of the swarm's process {med_cpu:,.0f} us/task ({med_cpu / base_cpu - 1:+.1%})")
    for mode in ("announcer", "voice=True"):
        for i, st in enumerate(stats[mode], 1):
            said = "; ".join(st["said"][:3]) + (" ..." if len(st["said"]) > 3 else "")
            print(f"  {mode} run {i}: heard {st['heard']:,} events, spoke {st['spoken']} "
                  f"times covering {st['announced']:,}, dropped {st['dropped']:,}"
                  + (f" (silenced: {st['silenced']})" if st["silenced"] else "")
                  + (f": {said}" if said else ""))
            if "engine_ms" in st:
                timer_ms = st["calls"] * timer_us / 1000
                print(f"    on the engine's thread: {st['calls']:,} calls took "
                      f"{st['engine_ms']:.1f} ms as timed, of which ~{timer_ms:.1f} ms is the "
                      f"timer itself: ~{st['engine_ms'] - timer_ms:.1f} ms, "
                      f"{(st['engine_ms'] - timer_ms) / st['engine_ms'] * st['engine_share']:.1%}"
                      " of the run")
    per_task = announcer_us * len(TASK_EVENTS)
    print(f"\none call on the engine's thread, over a task's event mix: announcer "
          f"{announcer_us:.2f} us, a no-op subscriber {null_us:.2f} us; "
          f"~{per_task:.1f} us of announcer per task "
          f"({per_task / (1e6 / statistics.median(rates['none'])):.1%} of a task's time at "
          f"the median rate without one)")


if __name__ == "__main__":
    main()
