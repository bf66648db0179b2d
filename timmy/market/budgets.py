"""Budgets with approval: the pure rules (no clock, no I/O), shared by the live coordinator
and the simulator so both hold the same clearings for a human.

A swarm may have a ``budget`` (sats) and a task a ``max_price`` (sats). An auction whose
clearing price is over the task's max_price, or over the budget left, does not assign: the
task waits in ``awaiting_approval`` with the winning bid held (its agent and price).

**Spend**, precisely: what the ledger has paid (every ledger row of the database: a paid
task's clearing price) plus what is *held*: the clearing prices of the tasks assigned or
running now (committed to an agent, not yet paid). A held task that fails, is re-queued or
cancelled gives its price back; a task awaiting approval holds nothing until approved.
**Budget left** = budget - spend (negative after an approval over it). A clearing at price
P needs approval when ``P > max_price`` or ``P > budget left``.

Approval assigns the task at the held price to the held agent, whatever the budget left
(a human said yes). When that agent is gone or its queue is full, the task is auctioned
again with the approved price as its ceiling: a clearing at or below it assigns without
asking again (the budget check is waived up to it), one above it asks again.
"""

from __future__ import annotations

from collections.abc import Callable
from numbers import Integral

from timmy.errors import ConfigError
from timmy.market.models import Task

#: The reasons a clearing waits for approval.
OVER_MAX_PRICE = "over max_price"
OVER_BUDGET = "over the budget left"

#: An approval policy (`simulate(..., approve=)`): "all", "none", or a callable
#: ``(task, price) -> bool`` (``task``: a `timmy.Task` awaiting approval, its held agent
#: in ``assigned_agent``).
ApprovalPolicy = str | Callable[[Task, int], bool]


def check_sats(name: str, value, hint: str | None = None) -> int | None:
    """``value`` (None, or a whole number of sats >= 0) checked; a ConfigError otherwise."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise ConfigError(f"{name} must be a whole number of sats, got {value!r}",
                          hint=hint or f"pass {name}=500 (an integer >= 0), or None for no limit")
    if value < 0:
        raise ConfigError(f"{name} must be >= 0 sats, got {value}",
                          hint=hint or f"pass {name}=0 to approve every task by hand, or None "
                          "for no limit")
    return int(value)


def budget_left(budget: int | None, paid: int, held: int) -> int | None:
    """What is left of ``budget`` after ``paid`` (the ledger) and ``held`` (assigned, not
    yet paid); None without a budget."""
    return None if budget is None else budget - paid - held


def needs_approval(price: int | None, max_price: int | None, left: int | None,
                   approved: int | None = None) -> str | None:
    """Why a clearing at ``price`` must wait for a human, or None: it may assign.

    ``approved``: a ceiling a human already approved for this task (its held agent had no
    room, so it was auctioned again): a price at or below it assigns without asking."""
    if price is None:
        return None
    if approved is not None and price <= approved:
        return None
    if max_price is not None and price > max_price:
        return f"{OVER_MAX_PRICE}: {price} > {max_price} sats"
    if left is not None and price > left:
        return f"{OVER_BUDGET}: {price} > {left} sats"
    return None


def check_policy(approve) -> ApprovalPolicy:
    """``simulate``'s ``approve``: "all", "none" or a callable; else a ConfigError."""
    if approve in ("all", "none") or callable(approve):
        return approve
    raise ConfigError(f"unknown approval policy {approve!r}",
                      hint='use approve="all", "none" or a callable (task, price) -> bool')


def decide(policy: ApprovalPolicy, task: Task, price: int) -> bool:
    """Whether ``policy`` approves a held clearing."""
    if policy == "all":
        return True
    if policy == "none":
        return False
    return bool(policy(task, price))


def rejected_reason(why: str) -> str:
    """The reason of a task whose held clearing was rejected."""
    return f"rejected: {why}"
