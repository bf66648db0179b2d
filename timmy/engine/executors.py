"""What a runner does with a task it won: `SimulatedExecutor` (seeded like bids), `EchoExecutor`,
and `timmy.engine.ollama.OllamaExecutor`, imported only by a runner that uses it.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from timmy.engine.outcome import Outcome
from timmy.errors import ConfigError
from timmy.market.bidding import STREAM_EXEC, bid_rng

if TYPE_CHECKING:
    from timmy.market.personas import Persona

EXECUTORS = ("simulated", "echo", "ollama", "auto")
ON_SPEC_SUCCESS = 0.95
OFF_SPEC_SUCCESS = 0.6


def check_executor(name: str) -> str:
    """Return ``name`` if it names an executor, else raise `ConfigError`."""
    if name not in EXECUTORS:
        raise ConfigError(f"unknown executor {name!r}", hint=f"use one of: {', '.join(EXECUTORS)}")
    return name


@dataclass(frozen=True, slots=True)
class Plan:
    """What a simulated execution will do: decided up front from the keyed draws."""

    ok: bool
    seconds: float


def simulated_plan(
    seed: int, agent_id: str, task_id: int, attempt: int, on_spec: bool, task_seconds: float
) -> Plan:
    """The seeded duration and success of one simulated execution (shared with the simulator)."""
    rng = bid_rng(seed, agent_id, task_id, attempt, STREAM_EXEC)
    ok = rng.random() < (ON_SPEC_SUCCESS if on_spec else OFF_SPEC_SUCCESS)
    u = rng.random()
    seconds = 0.0 if task_seconds <= 0 else min(5 * task_seconds, -task_seconds * math.log1p(-u))
    return Plan(ok, seconds)


class SimulatedExecutor:
    """Pretends to work: sleeps a seeded time, succeeds with a seeded chance.

    Seeded by (swarm seed, agent_id, task_id, attempt), like bids, so a seeded run
    repeats: it takes an exponential time with mean ``task_seconds`` (capped at 5x) and
    succeeds with probability `ON_SPEC_SUCCESS` on its speciality and
    `OFF_SPEC_SUCCESS` off it. (``executor="auto"`` is resolved by the coordinator
    before any runner starts, so a runner is only ever told "simulated", "echo" or
    "ollama".)
    """

    def __init__(self, seed: int, agent_id: str, task_seconds: float) -> None:
        self.seed, self.agent_id, self.task_seconds = seed, agent_id, task_seconds
        self.instant = task_seconds <= 0

    def run(self, task_id: int, description: str, attempt: int, on_spec: bool) -> Outcome:
        plan = simulated_plan(
            self.seed, self.agent_id, task_id, attempt, on_spec, self.task_seconds
        )
        if plan.seconds:
            time.sleep(plan.seconds)
        if plan.ok:
            return Outcome(True, f"{self.agent_id} did: {description[:200]}", plan.seconds)
        spec = "on" if on_spec else "off"
        return Outcome(False, f"simulated failure ({spec}-spec task)", plan.seconds)


class EchoExecutor:
    """Returns the description: the smallest real executor, for wiring tests."""

    instant = True

    def run(self, task_id: int, description: str, attempt: int, on_spec: bool) -> Outcome:
        return Outcome(True, description, 0.0)


def make_executor(name: str, *, seed: int, agent_id: str, task_seconds: float,
                  persona: Persona | None = None, model: str | None = None,
                  host: str | None = None, timeout: float | None = None):
    """Build the executor a runner uses.

    ``persona``, ``model``, ``host`` and ``timeout`` are for "ollama" (see
    `timmy.engine.ollama.OllamaExecutor`; None means its defaults and environment variables).
    "auto" reaching a runner (one started by hand) means simulated: deciding needs a probe
    of the server, which the coordinator makes once for the whole swarm.
    """
    check_executor(name)
    if name in ("simulated", "auto"):
        return SimulatedExecutor(seed, agent_id, task_seconds)
    if name == "echo":
        return EchoExecutor()
    from timmy.engine.ollama import OllamaExecutor
    from timmy.llm import DEFAULT_TIMEOUT

    if persona is None:
        raise ConfigError("the ollama executor needs the runner's persona",
                          hint="pass persona= (its role and description make the prompt)")
    return OllamaExecutor(persona, model=model, host=host,
                          timeout=DEFAULT_TIMEOUT if timeout is None else timeout)
