"""Reputation, pure (no clock, no I/O): per agent, what its results came to, and the
reliability in [0, 1] the ``reputation`` and ``score`` mechanisms read
(`timmy.market.mechanisms.Context.reliability`).

An agent's **outcomes** are the results it delivered for tasks it had won:

``successes``
    a result that was paid (it passed the task's verifier, or the task had none);
``verification_failures``
    a result that failed the task's verifier (not paid, the task auctioned again without it);
``failures``
    a result the runner itself reported as failed (``ok=False``: its executor failed).

**Reliability** is the Laplace (Beta(1, 1) prior) estimate of its success rate::

    reliability = (successes + 1) / (successes + failures + verification_failures + 2)

so an agent with no outcome yet is 0.5, one success makes it 2/3, one failure 1/3, and it
tends to the agent's success rate as outcomes pile up. Only results count: a runner that
crashed, was stopped or timed out delivered none (those depend on the machine, which would
break parity with the simulator).

**Timeliness** is shown alongside and never enters reliability: of the results an agent
delivered for tasks with a deadline (``task_timeout``, the post's or the swarm's, on the
coordinator's awake clock), ``on_time`` came within it and ``late`` after it (a runner
restarted for holding its task past the deadline counts late too);
``timeliness = on_time / (on_time + late)``, None with no task that had a deadline. It is
measured live only: the simulator has no deadlines.

Deterministic by construction: reliability is updated from outcomes in the order the task
state machine records them (live: the coordinator's result handling; simulated: the
simulator's, at the same points), never from wall-clock timing, so a seeded workload posted
one task at a time picks the same winners live and simulated under ``reputation`` and
``score`` too.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass

#: The outcomes `Reputation.record` takes.
SUCCESS, FAILURE, VERIFICATION_FAILURE = "success", "failure", "verification_failure"
OUTCOMES = (SUCCESS, FAILURE, VERIFICATION_FAILURE)
#: The reliability of an agent with no outcome yet.
PRIOR = 0.5
#: A stored row's counters, in the order of the ``reputation`` table's columns.
COUNTERS = ("successes", "failures", "verification_failures", "on_time", "late")


def reliability(successes: int, failures: int = 0, verification_failures: int = 0) -> float:
    """``(successes + 1) / (outcomes + 2)``: the Laplace estimate of the success rate."""
    return (successes + 1) / (successes + failures + verification_failures + 2)


def timeliness(on_time: int, late: int) -> float | None:
    """The share of results with a deadline that came within it; None with none."""
    n = on_time + late
    return on_time / n if n else None


@dataclass(slots=True)
class Record:
    """One agent's counters."""

    successes: int = 0
    failures: int = 0
    verification_failures: int = 0
    on_time: int = 0
    late: int = 0

    @property
    def outcomes(self) -> int:
        return self.successes + self.failures + self.verification_failures

    @property
    def reliability(self) -> float:
        return reliability(self.successes, self.failures, self.verification_failures)

    @property
    def timeliness(self) -> float | None:
        return timeliness(self.on_time, self.late)

    def counters(self) -> tuple[int, ...]:
        return tuple(getattr(self, c) for c in COUNTERS)

    def as_dict(self) -> dict:
        """What `swarm.reputation()` shows for the agent."""
        return {**asdict(self), "outcomes": self.outcomes, "reliability": self.reliability,
                "timeliness": self.timeliness}


class Reputation(Mapping[str, float]):
    """Every agent's `Record`, and, as a mapping, agent_id -> reliability (what a clearing
    mechanism is given). An agent with no record reads as `PRIOR`; iterating gives the
    agents with a record."""

    def __init__(self, records: Mapping[str, Mapping[str, int]] | None = None) -> None:
        self.records: dict[str, Record] = {}
        for agent_id, row in (records or {}).items():
            self.records[agent_id] = Record(**{c: int(row.get(c) or 0) for c in COUNTERS})

    def record(self, agent_id: str, outcome: str) -> Record:
        """Count one outcome (`SUCCESS`, `FAILURE` or `VERIFICATION_FAILURE`) of the agent."""
        if outcome not in OUTCOMES:
            raise ValueError(f"unknown outcome {outcome!r}; one of {', '.join(OUTCOMES)}")
        r = self._get(agent_id)
        if outcome == SUCCESS:
            r.successes += 1
        elif outcome == FAILURE:
            r.failures += 1
        else:
            r.verification_failures += 1
        return r

    def timed(self, agent_id: str, late: bool) -> Record:
        """Count a result (or a timeout) against its task's deadline."""
        r = self._get(agent_id)
        if late:
            r.late += 1
        else:
            r.on_time += 1
        return r

    def _get(self, agent_id: str) -> Record:
        r = self.records.get(agent_id)
        if r is None:
            r = self.records[agent_id] = Record()
        return r

    def snapshot(self, agent_ids=()) -> dict[str, dict]:
        """agent_id -> its counters, reliability and timeliness: every agent with a record
        and each of ``agent_ids`` (with none: the prior), by agent_id."""
        ids = sorted(set(self.records) | set(agent_ids))
        return {a: self.records.get(a, Record()).as_dict() for a in ids}

    # -- agent_id -> reliability ---------------------------------------------------
    def __getitem__(self, agent_id: str) -> float:
        r = self.records.get(agent_id)
        return PRIOR if r is None else r.reliability

    def __contains__(self, agent_id: object) -> bool:
        return agent_id in self.records

    def __iter__(self) -> Iterator[str]:
        return iter(self.records)

    def __len__(self) -> int:
        return len(self.records)

    def __repr__(self) -> str:
        inner = ", ".join(f"{a}: {r.reliability:.3f}" for a, r in sorted(self.records.items()))
        return f"Reputation({{{inner}}})"
