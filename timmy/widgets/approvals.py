"""The pending-approvals panel of both consoles (`timmy.market.budgets`): one row per task
awaiting approval (its description, held agent and price, why it waits) with Approve and
Reject buttons at least 44 px tall; on the phone each button takes half the width."""

from __future__ import annotations

from timmy.errors import TimmyError
from timmy.market.lifecycle import AWAITING_APPROVAL
from timmy.widgets import render
from timmy.widgets.console import TOUCH, error_html
from timmy.widgets.render import esc

SHOWN = 20   # pending approvals listed at once (the oldest first)


class ApprovalsPanel:
    """Rebuilt from the console's state when the set of pending approvals changes
    (`refresh`, called after each redraw); ``box`` is its VBox."""

    def __init__(self, console, full_width: bool = False) -> None:
        self.console, self.full_width = console, full_width
        w = self.w = console.w
        self.rows = w.VBox()
        self.message = w.HTML()
        self.message.add_class("timmy-approval-message")
        self.box = w.VBox([self.rows, self.message], layout=w.Layout(width="100%"))
        self.box.add_class("timmy-approvals")
        self._shown: list | None = None

    def refresh(self) -> None:
        with self.console.lock:
            pending = [(r.task_id, r.description, r.agent, r.price_sats, r.reason)
                       for r in self.console.state.rows(AWAITING_APPROVAL, SHOWN)][::-1]
        if pending == self._shown:
            return
        self._shown = pending
        self.rows.children = [self._row(*p) for p in pending] or [
            self.w.HTML("<i>no task awaits approval</i>")]

    def _row(self, task_id: int, description: str, agent, price, reason):
        w = self.w
        text = w.HTML(f"<div style='overflow-wrap:anywhere'><b>#{esc(task_id)}</b> "
                      f"{esc(render.clip(description, 80))}<br><small>{esc(agent)} · "
                      f"{esc(price)} sats · {esc(reason or '')}</small></div>",
                      layout=w.Layout(width="100%"))
        half = {"width": "50%"} if self.full_width else {}
        approve = w.Button(description="Approve", button_style="success", icon="check",
                           layout=w.Layout(**TOUCH, **half))
        reject = w.Button(description="Reject", button_style="danger", icon="times",
                          layout=w.Layout(**TOUCH, **half))
        approve.add_class("timmy-approve")
        reject.add_class("timmy-reject")
        approve.on_click(lambda _b: self._decide("approve", task_id))
        reject.on_click(lambda _b: self._decide("reject", task_id))
        row = w.VBox([text, w.HBox([approve, reject], layout=w.Layout(width="100%"))],
                     layout=w.Layout(width="100%", border_bottom="1px solid #eee"))
        row.add_class(f"timmy-approval-{task_id}")
        return row

    def _decide(self, verb: str, task_id: int) -> None:
        try:
            task = getattr(self.console.swarm, verb)(task_id)
        except (TimmyError, OSError) as exc:   # OSError: a service out of reach
            self.message.value = error_html(exc)
            return
        self.message.value = f"{verb}d task #{esc(task.task_id)}: {esc(task.status)}"
        self.console.redraw_now()
