"""The task lifecycle: states, the moves between them, attempt accounting, events and reasons.
Pure (no clock, no I/O): the coordinator, both simulator engines and the dashboards decide
"auction it again or fail it" and word the reason here, so a live swarm and a simulation of
the same work cannot drift apart.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

QUEUED, BIDDING, ASSIGNED, RUNNING = "queued", "bidding", "assigned", "running"
COMPLETED, FAILED, CANCELLED = "completed", "failed", "cancelled"
#: An auction cleared over the task's max_price or the swarm's budget left: the winning bid
#: is held (the task's assigned_agent and price_sats) until a human approves or rejects it
#: (`timmy.market.budgets`).
AWAITING_APPROVAL = "awaiting_approval"
TASK_STATES = (QUEUED, BIDDING, ASSIGNED, RUNNING, AWAITING_APPROVAL, COMPLETED, FAILED,
               CANCELLED)
ACTIVE_STATES = (QUEUED, BIDDING, ASSIGNED, RUNNING, AWAITING_APPROVAL)
TERMINAL_STATES = (COMPLETED, FAILED, CANCELLED)
#: A runner holds the task (in its queue, or working on it): its attempt has begun.
HELD_STATES = (ASSIGNED, RUNNING)
# An agent in one of these states works tasks now, or will again without anyone's help.
AGENT_WORKING_STATES = frozenset({"starting", "idle", "busy", "restarting", "disconnected"})

#: Where a task may go from each state. An auction opens (bidding) and assigns the task
#: or, with no bidder that has room, puts it back in the queue; a runner starts it and
#: finishes it; a held task goes back to the queue (failed attempt, runner gone, deadline)
#: or fails; a coordinator that restarts re-queues what it left bidding or held; any
#: unfinished task may be cancelled. An auction whose clearing mechanism fails spends the
#: attempt (`timmy.market.mechanisms.after_mechanism_failure`): bidding -> queued, or failed
#: on the last one. A clearing over the task's max_price or the budget left waits for a
#: human (awaiting_approval): approved, it is assigned at the held price (or queued again
#: when the held agent has no room: `timmy.market.budgets`); rejected, it is cancelled.
#: A finished task never moves again.
TRANSITIONS: dict[str, frozenset[str]] = {
    QUEUED: frozenset({BIDDING, CANCELLED}),
    BIDDING: frozenset({QUEUED, ASSIGNED, AWAITING_APPROVAL, FAILED, CANCELLED}),
    AWAITING_APPROVAL: frozenset({ASSIGNED, QUEUED, CANCELLED}),
    ASSIGNED: frozenset({RUNNING, QUEUED, COMPLETED, FAILED, CANCELLED}),
    RUNNING: frozenset({QUEUED, COMPLETED, FAILED, CANCELLED}),
    COMPLETED: frozenset(),
    FAILED: frozenset(),
    CANCELLED: frozenset(),
}


def can_move(old: str, new: str) -> bool:
    """Whether a task in state ``old`` may go to state ``new``."""
    return new in TRANSITIONS.get(old, ())


# -- events -----------------------------------------------------------------
TASK_POSTED, TASK_STARTED = "task_posted", "task_started"
TASK_ASSIGNED, TASK_REQUEUED = "task_assigned", "task_requeued"
TASK_COMPLETED, TASK_FAILED, TASK_CANCELLED = "task_completed", "task_failed", "task_cancelled"
TASK_TIMED_OUT = "task_timed_out"
AUCTION_OPENED, AUCTION_CLOSED = "auction_opened", "auction_closed"
AGENT_JOINED, AGENT_RESTARTED, AGENT_RECONNECTED = (
    "agent_joined", "agent_restarted", "agent_reconnected")
AGENT_CRASHED, AGENT_LEFT, AGENT_FAILED, AGENT_DISCONNECTED = (
    "agent_crashed", "agent_left", "agent_failed", "agent_disconnected")
#: Budgets with approval (`timmy.market.budgets`): an auction's clearing was held for a
#: human; approved (followed by ``task_assigned``, or ``task_requeued`` when the held
#: agent has no room); rejected (followed by ``task_cancelled``).
APPROVAL_REQUESTED, APPROVED, REJECTED = "approval_requested", "approved", "rejected"

#: The task status an event implies. ``auction_closed`` without a winner puts the task
#: back in the queue (see `status_after`); ``task_timed_out`` is followed by the
#: requeue or failure it causes.
TASK_EVENT_STATUS: dict[str, str] = {
    TASK_POSTED: QUEUED, AUCTION_OPENED: BIDDING, TASK_ASSIGNED: ASSIGNED,
    TASK_STARTED: RUNNING, TASK_COMPLETED: COMPLETED, TASK_FAILED: FAILED,
    TASK_CANCELLED: CANCELLED, TASK_REQUEUED: QUEUED, APPROVAL_REQUESTED: AWAITING_APPROVAL,
}
#: The event that says a task finished, by its final status.
FINISH_EVENT: dict[str, str] = {
    COMPLETED: TASK_COMPLETED, FAILED: TASK_FAILED, CANCELLED: TASK_CANCELLED}
#: The agent status an agent event implies.
AGENT_EVENT_STATUS: dict[str, str] = {
    AGENT_JOINED: "idle", AGENT_RESTARTED: "idle", AGENT_CRASHED: "restarting",
    AGENT_LEFT: "stopped", AGENT_FAILED: "failed", AGENT_RECONNECTED: "idle",
    AGENT_DISCONNECTED: "disconnected",
}


def status_after(kind: str, winner: str | None = None) -> str | None:
    """The status a task event implies (None: the event does not move the task).
    ``winner`` is the agent of an ``auction_closed`` event. ``approved`` and ``rejected``
    move nothing themselves: the ``task_assigned``/``task_requeued``/``task_cancelled``
    that follows does."""
    if kind == AUCTION_CLOSED:
        return None if winner is not None else QUEUED
    return TASK_EVENT_STATUS.get(kind)


def keeps_waiting(status: str) -> bool:
    """Whether a new coordinator takes over a task left ``status`` as it is: queued tasks
    are auctioned as before, tasks awaiting approval keep waiting with their held bid."""
    return status in (QUEUED, AWAITING_APPROVAL)


# -- attempt accounting -----------------------------------------------------
class Action(enum.IntEnum):
    """What happens to a task after an attempt ended without a result.

    An attempt is one assignment: a task's ``attempts`` grows by one each time an auction
    assigns it, and a failure that was not the task's doing gives the attempt back
    (`REQUEUE_FREE`).
    """

    REQUEUE = 0        #: auctioned again, the attempt spent
    REQUEUE_FREE = 1   #: auctioned again, the attempt given back (not the task's doing)
    FAIL = 2           #: failed for good


@dataclass(frozen=True, slots=True)
class Decision:
    """An `Action`, the task's ``attempts`` after it, and the task's reason."""

    action: Action
    attempts: int
    reason: str

    @property
    def status(self) -> str:
        return FAILED if self.action == Action.FAIL else QUEUED

    @property
    def event(self) -> str:
        return TASK_FAILED if self.action == Action.FAIL else TASK_REQUEUED


def spent_action(attempts: int, max_attempts: int, permanent: bool = False) -> Action:
    """After an attempt that counts (it failed, its runner died in it, it ran past its
    deadline): auction again, or fail once ``attempts`` reaches ``max_attempts`` or when
    the failure is ``permanent`` (it would fail the same way on any runner).

    Plain arithmetic on purpose: the compiled simulator compiles this very function.
    """
    if permanent or attempts >= max_attempts:
        return Action.FAIL
    return Action.REQUEUE


def exit_action(attempts: int, max_attempts: int, running: bool, first: bool,
                crashed: bool) -> Action:
    """For each task a runner held when it ended. A runner works its queue in order: the
    ``first`` task was (about to be) running and spends its attempt, even if "started"
    never arrived (a task that kills its runner must not loop for ever), as does any task
    reported ``running``; the tasks waiting behind it keep theirs. A runner that did not
    crash (stopped on purpose) costs no task an attempt."""
    if crashed and (first or running):
        return spent_action(attempts, max_attempts)
    return Action.REQUEUE_FREE


def gave_up(reason: str, attempts: int) -> str:
    """A reason, and that the task failed for good after ``attempts`` attempts."""
    return f"{reason}; gave up after {attempts} attempts"


def _decide(action: Action, attempts: int, reason: str) -> Decision:
    if action == Action.FAIL:
        return Decision(action, attempts, gave_up(reason, attempts))
    if action == Action.REQUEUE_FREE:
        return Decision(action, attempts - 1, reason)
    return Decision(action, attempts, reason)


#: How a permanent failure's reason ends.
NOT_AGAIN = " (not auctioned again: it would fail the same way)"
#: The reason of a cancelled task.
CANCELLED_REASON = "cancelled"
#: The reason of a task a restarted coordinator put back in the queue.
RESTART_REASON = "re-queued after a coordinator restart"


def failure_reason(attempts: int, agent_id: str, output: str) -> str:
    """Why attempt ``attempts`` failed: the runner and the first 200 characters it said."""
    return f"attempt {attempts} by {agent_id} failed: {output[:200]}"


def after_failure(attempts: int, max_attempts: int, agent_id: str, output: str,
                  permanent: bool = False) -> Decision:
    """A runner reported that attempt ``attempts`` failed with ``output``."""
    reason = failure_reason(attempts, agent_id, output)
    if permanent:
        return Decision(Action.FAIL, attempts, reason + NOT_AGAIN)
    return _decide(spent_action(attempts, max_attempts), attempts, reason)


def exit_how(verdict: str, returncode: int | None) -> str:
    """How a runner ended, for a reason: the supervisor's ``verdict`` and its exit code."""
    if verdict == "stopped":
        return "stopped"
    if verdict == "disconnected":
        return "lost its connection"
    return f"died (exit code {returncode})"


def after_runner_exit(attempts: int, max_attempts: int, agent_id: str, how: str, *,
                      running: bool, first: bool, crashed: bool) -> Decision:
    """A runner that held the task ended (``how``: "stopped", "died (exit code 9)", see
    `exit_how`); ``first``, ``running`` and ``crashed`` as `exit_action`."""
    action = exit_action(attempts, max_attempts, running, first, crashed)
    if action == Action.REQUEUE_FREE:
        when = "before finishing" if running else "before starting"
        return _decide(action, attempts, f"runner {agent_id} {how} {when} it")
    return _decide(action, attempts, f"runner {agent_id} {how} during attempt {attempts}")


def after_deadline(attempts: int, max_attempts: int, agent_id: str, limit: float, *,
                   first: bool, head_task_id: int) -> Decision:
    """The task's runner held ``head_task_id`` past its deadline (``task_timeout``,
    ``limit`` seconds) and is restarted. The task it was working on (``first``) spends
    its attempt, as a failure does; the ones waiting behind it go back without spending
    one."""
    if first:
        return _decide(spent_action(attempts, max_attempts), attempts,
                       f"no result within {limit:g}s from {agent_id} (attempt {attempts}; "
                       "the runner was restarted)")
    return _decide(Action.REQUEUE_FREE, attempts,
                   f"runner {agent_id} was restarted before starting it (task "
                   f"{head_task_id} ahead of it got no result within {limit:g}s)")


def after_coordinator_restart(status: str, attempts: int, max_attempts: int) -> Decision:
    """A new coordinator takes over a task its predecessor left ``status`` (bidding,
    assigned or running). A held task's attempt was spent (nobody knows how far it got);
    it fails if that was its last, with a reason of its own. An auction left open had not
    begun an attempt. A task awaiting approval keeps waiting, its held bid with it (the
    store leaves it as it is: see `keeps_waiting`)."""
    if status in HELD_STATES and attempts >= max_attempts:
        return Decision(Action.FAIL, attempts,
                        f"coordinator stopped during attempt {attempts} of {max_attempts}")
    return Decision(Action.REQUEUE, attempts, RESTART_REASON)


#: How the reason of a task whose result failed verification starts.
VERIFY_FAILED = "verification failed"
#: The event recorded when a result fails its verification (the task is not paid).
VERIFICATION_FAILED = "verification_failed"


def after_verification_failure(attempts: int, max_attempts: int, agent_id: str, why: str,
                               others: int) -> Decision:
    """Attempt ``attempts`` by ``agent_id`` produced a result that failed its verification
    (``why``): it is not paid, the attempt is spent and the task auctioned again without
    that agent (excluded from its later auctions); it fails after ``max_attempts``, or
    when ``others`` (the runners not excluded from it) is 0."""
    reason = f"{VERIFY_FAILED}: attempt {attempts} by {agent_id}: {why[:200]}"
    if others <= 0:
        return Decision(Action.FAIL, attempts,
                        reason + "; no runner is left that has not failed it")
    return _decide(spent_action(attempts, max_attempts), attempts, reason)
