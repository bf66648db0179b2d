"""The copies of a task cleared by the ``redundant`` mechanism, pure (no clock, no I/O):
what each copy came to, which one is paid, and what becomes of the task when none is.

Under ``rule="redundant:k=3"`` the k best bids (specialist_first's order: on-spec first,
then price, then agent_id) all win, and each of those runners runs the task: a *copy*.
The live coordinator and the simulator keep one `Copies` per such task and report each
copy's outcome to it as it arrives; the task is decided when **every** copy has reported
(a result, or its runner ended or timed out without one):

- **paid**: the first copy in the winners' bid order whose result passed (its verifier, or
  the task had none and the result was ok), at the clearing's price (the highest of the k
  winning bids, the same whichever copy is paid): one ledger row; the task's
  ``assigned_agent`` becomes that copy's agent. The other copies' results are discarded,
  unpaid.
- **none passed**: one attempt spent, as any failure (`Copies.decision`): the task is
  auctioned again, without the agents whose result failed verification, or fails after
  ``max_attempts`` (or at once when a copy failed permanently, or no runner is left that
  has not failed its verification).

Why wait for every copy rather than pay the first result to arrive: a live swarm's results
arrive in wall-clock order, which a simulator cannot reproduce; deciding on the bid order,
once all are in, pays the same agent live and simulated whatever the timing (the parity
the tests check), at the cost of the task finishing with its slowest copy.

Reputation: each copy's outcome counts for its agent, in bid order when the task is
decided (so the next auction sees the same reliabilities live and simulated): a result that
passed is a success (paid or not: it was good), a failed run a failure, a result that failed
its verifier a verification failure; a copy whose runner ended without a result counts
nothing, as anywhere else.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from timmy.market.lifecycle import (
    NOT_AGAIN,
    VERIFY_FAILED,
    Action,
    Decision,
    _decide,
    exit_action,
    spent_action,
)

#: A copy's outcomes.
PASSED, FAILED, UNVERIFIED, LOST = "passed", "failed", "unverified", "lost"


@dataclass(slots=True)
class Outcome:
    """What one copy came to: `PASSED`, `FAILED` (the run failed), `UNVERIFIED` (its result
    failed verification) or `LOST` (its runner ended or timed out without a result)."""

    kind: str
    output: str = ""
    why: str = ""               # the verifier's reason, or how the runner ended
    permanent: bool = False     # a failure that would fail the same way anywhere
    free: bool = False          # a lost copy whose attempt is not spent (runner stopped)
    measured: dict = field(default_factory=dict)


@dataclass(slots=True)
class Copies:
    """The copies of one task: its winners in bid order and what each came to."""

    agents: tuple[str, ...]
    outcomes: dict[str, Outcome] = field(default_factory=dict)

    def report(self, agent_id: str, outcome: Outcome) -> bool:
        """Record a copy's outcome (the first one only); True when every copy has one."""
        if agent_id in self.agents:
            self.outcomes.setdefault(agent_id, outcome)
        return self.done

    @property
    def done(self) -> bool:
        return len(self.outcomes) >= len(self.agents)

    def pending(self) -> list[str]:
        """The agents whose copy has not reported yet, in bid order."""
        return [a for a in self.agents if a not in self.outcomes]

    def reported(self) -> list[tuple[str, Outcome]]:
        """Every copy's (agent_id, outcome) so far, in bid order."""
        return [(a, self.outcomes[a]) for a in self.agents if a in self.outcomes]

    def paid(self) -> str | None:
        """The agent to pay: the first in bid order whose copy passed, or None."""
        return next((a for a, o in self.reported() if o.kind == PASSED), None)

    def rejected(self) -> list[str]:
        """The agents whose result failed verification (excluded from later auctions)."""
        return [a for a, o in self.reported() if o.kind == UNVERIFIED]

    def decision(self, attempts: int, max_attempts: int, others: int | None = None
                 ) -> Decision:
        """No copy passed: auction again with the attempt spent (given back only when every
        copy was lost through no fault of the task's), or fail after ``max_attempts``, at
        once when a copy failed ``permanent``-ly, or when ``others`` (the runners not
        excluded from the task after its verification failures) is 0."""
        reason = reason_of(attempts, self.reported())
        if any(o.permanent for _, o in self.reported()):
            return Decision(Action.FAIL, attempts, reason + NOT_AGAIN)
        if self.rejected() and others is not None and others <= 0:
            return Decision(Action.FAIL, attempts,
                            reason + "; no runner is left that has not failed it")
        if all(o.kind == LOST and o.free for _, o in self.reported()):
            return _decide(Action.REQUEUE_FREE, attempts, reason)
        return _decide(spent_action(attempts, max_attempts), attempts, reason)


def lost(attempts: int, max_attempts: int, how: str, *, running: bool, first: bool,
         crashed: bool) -> Outcome:
    """A copy whose runner ended (``how``, see `timmy.market.lifecycle.exit_how`) or was
    restarted without a result: its attempt is given back only when the runner's exit would
    give it back to a single-winner task (`exit_action`)."""
    free = exit_action(attempts, max_attempts, running, first, crashed) == Action.REQUEUE_FREE
    return Outcome(LOST, why=how, free=free)


def reason_of(attempts: int, reported: list[tuple[str, Outcome]]) -> str:
    """The reason of a task none of whose copies passed: each copy's, in bid order."""
    parts = []
    for agent_id, o in reported:
        if o.kind == UNVERIFIED:
            parts.append(f"{agent_id}: {VERIFY_FAILED}: {o.why[:80]}")
        elif o.kind == FAILED:
            parts.append(f"{agent_id} failed: {o.output[:80]}")
        else:
            parts.append(f"{agent_id} {o.why[:80]}")
    return (f"attempt {attempts}: all {len(reported)} copies failed: "
            + "; ".join(parts))[:300]
