"""What ``simulate(..., model=)`` draws from a calibrated `timmy.sim.model.Model`: each run's
duration and success, crashes and restarts per persona, and the coordinator's post-to-assign
overhead. Every draw is keyed like a bid (seed, agent, task, attempt, stream: see
`timmy.market.bidding.draw_key`), so a seed repeats a run exactly and a change of runner mix
changes only the draws it must. `model_arrivals` makes a workload from the model's arrivals.
"""

from __future__ import annotations

import math
import random

from timmy.engine.executors import Plan
from timmy.errors import ConfigError
from timmy.market.bidding import bid_rng, text_key
from timmy.sim.model import Model, PersonaModel
from timmy.sim.workloads import Arrival, demo_descriptions, keyword_mix

STREAM_TWIN = text_key("twin-exec")
STREAM_OVERHEAD = text_key("twin-overhead")
#: The agent id the coordinator's own draws are keyed with.
COORDINATOR = "coordinator"


class TwinDraws:
    """The model's draws for one simulated run (``seed``). ``crash_rate``: when not None,
    every runner's chance of dying during a run instead of its persona's recorded one."""

    def __init__(self, model: Model, seed: int, crash_rate: float | None = None) -> None:
        if not model.personas:
            raise ConfigError("the model has no personas",
                              hint="calibrate it from a run whose runners finished tasks")
        self.model, self.seed = model, seed
        self.crash_override = crash_rate
        # a persona the recorded run had no runs of behaves as the busiest recorded one
        self.fallback = max(model.personas.values(), key=lambda p: (p.tasks, p.name))
        #: seconds from a requeue to the task's next auction (the recorded mean)
        self.requeue = model.overhead.requeue
        self.dispatch = model.overhead.dispatch

    def persona(self, persona_id: str) -> PersonaModel:
        return self.model.personas.get(persona_id) or self.fallback

    def plan(self, agent_id: str, persona_id: str, task_id: int, attempt: int,
             on_spec: bool, idle: bool = False) -> Plan:
        """One run's success and duration (seconds); ``idle``: its runner was idle (the
        model's dispatch is added)."""
        p = self.persona(persona_id)
        rng = bid_rng(self.seed, agent_id, task_id, attempt, STREAM_TWIN)
        ok = rng.random() < p.success(on_spec)
        return Plan(ok, p.duration.ppf(rng.random()) + (self.dispatch if idle else 0.0))

    def crash_rate(self, persona_id: str) -> float:
        if self.crash_override is not None:
            return self.crash_override
        return self.persona(persona_id).crash_rate

    def restart_seconds(self, persona_id: str) -> float:
        return self.persona(persona_id).restart_seconds

    def overhead(self, task_id: int, queued: int) -> float:
        """Post to assignment for a task posted with ``queued`` tasks awaiting an auction."""
        u = bid_rng(self.seed, COORDINATOR, task_id, 0, STREAM_OVERHEAD).random()
        return self.model.overhead.draw(queued, u)


def model_arrivals(model: Model, n: int, seed: int, *, rate: float | None = None,
                   descriptions: list[str] | None = None) -> list[Arrival]:
    """``n`` seeded arrivals with the model's rate (or ``rate``, tasks/s) and burstiness:
    gaps drawn from a gamma distribution with the recorded coefficient of variation (1:
    Poisson), descriptions in the recorded persona mix (`keyword_mix`) unless given."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ConfigError(f"the number of tasks must be a non-negative integer, got {n!r}",
                          hint="ask for e.g. 500 tasks")
    rate = model.arrivals.rate if rate is None else rate
    if not rate or rate <= 0 or math.isnan(rate):
        raise ConfigError(f"an arrival rate must be above 0 tasks/s, got {rate!r}",
                          hint="pass rate= (tasks/s)")
    if descriptions is None:
        mix = {k: v for k, v in model.arrivals.mix.items() if v > 0}
        descriptions = keyword_mix(n, seed, mix) if mix else demo_descriptions(n, seed)
    rng = random.Random(seed)
    cv = model.arrivals.burstiness
    t, out = 0.0, []
    for text in descriptions[:n]:
        if math.isinf(rate):
            gap = 0.0
        elif cv < 0.05:
            gap = 1.0 / rate
        else:
            shape = 1.0 / (cv * cv)
            gap = rng.gammavariate(shape, 1.0 / (rate * shape))
        t += gap
        out.append(Arrival(t, text))
    return out
