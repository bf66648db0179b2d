"""The coordinator's budget book (`timmy.market.budgets` has the rules): the swarm's
``budget``, what the ledger has paid, each unfinished task's ``max_price`` and the ceilings
humans approved; what is held is counted from the tasks the runners hold."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from timmy.errors import ConfigError
from timmy.market.budgets import budget_left, needs_approval
from timmy.market.lifecycle import AWAITING_APPROVAL, HELD_STATES
from timmy.market.models import Task


class Approvals:
    """Budget and max_price bookkeeping of one coordinator. ``active`` is False when the
    swarm has no budget and no task was posted with a max_price: the auction path then
    does not look here at all (today's behaviour, bit for bit)."""

    def __init__(self, budget: int | None) -> None:
        self.budget = budget
        self.paid = 0                         # every sat the ledger has paid (read at start)
        self.max_price: dict[int, int] = {}   # unfinished tasks posted with a max_price
        self.approved: dict[int, int] = {}    # task -> the ceiling a human approved

    @property
    def active(self) -> bool:
        return self.budget is not None or bool(self.max_price) or bool(self.approved)

    def held(self, tasks: Iterable[Task]) -> int:
        """The prices of ``tasks`` that are assigned or running (committed, not yet paid)."""
        return sum(t.price_sats or 0 for t in tasks if t.status in HELD_STATES)

    def why(self, task_id: int, price: int | None, held: int) -> str | None:
        """Why a clearing at ``price`` must wait for a human (None: it may assign)."""
        return needs_approval(price, self.max_price.get(task_id),
                              budget_left(self.budget, self.paid, held),
                              self.approved.get(task_id))

    def forget(self, task_id: int) -> None:
        self.max_price.pop(task_id, None)
        self.approved.pop(task_id, None)

    def status(self, held: int) -> dict:
        """Spend so far and what is left, for ``status()``."""
        return {"budget": self.budget, "paid_sats": self.paid, "held_sats": held,
                "spent_sats": self.paid + held,
                "budget_left": budget_left(self.budget, self.paid, held)}


def awaiting(tasks: Mapping[int, Task], task_id: int) -> Task:
    """The task ``task_id`` if it awaits approval, else a ConfigError saying where it is."""
    task = tasks.get(task_id)
    if task is None or task.status != AWAITING_APPROVAL:
        where = "finished or unknown" if task is None else task.status
        raise ConfigError(f"task {task_id} is not awaiting approval ({where})",
                          hint="list those that are with swarm.tasks('awaiting_approval')")
    return task
