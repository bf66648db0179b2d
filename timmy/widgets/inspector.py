"""The auction inspector: `explain` (pure) re-clears a task's recorded bids and says why the
winner won; `Inspector` is the widget around it, ``inspect(swarm, task_id)`` returns one.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import groupby

from timmy.errors import TaskNotFound, TimmyError
from timmy.market.auction import Bid, Clearing, clear
from timmy.paging import MAX_LIMIT
from timmy.widgets import render
from timmy.widgets.console import TOUCH, error_html, ipywidgets
from timmy.widgets.recent import matches
from timmy.widgets.render import esc
from timmy.widgets.terms import RANKED_BY, fmt_key, rule_name, terms, uses_reliability


@dataclass(frozen=True, slots=True)
class AuctionStory:
    """One auction of a task: its bids, the rule, who won, the price and why."""

    task_id: int
    auction_id: int
    attempt: int
    rule: str
    bids: tuple[dict, ...]        # agent_id, persona, sats, on_spec, attempt, won
    recorded_winner: str | None
    winner: str | None            # cleared again from the bids
    price_sats: int | None
    why: str                      # `Clearing.reason`, e.g. "lowest on-spec bid under ..."
    ranked: tuple[dict, ...] = ()  # the bids best first under the rule, with their terms
    recorded_why: str | None = None   # the auction_closed event's why (stored)
    reliability_from: str = ""    # "recorded" (at the close), "now", or "" (rule ignores it)

    @property
    def matches(self) -> bool:
        return self.winner == self.recorded_winner

    @property
    def line(self) -> str:
        """The sentence an operator reads (plain text; escape it for HTML)."""
        if self.recorded_winner is None:
            return (f"no winner: {self.why}" if not self.bids else
                    "no winner: every bidder was full or gone when the auction closed")
        said = (f"{self.recorded_winner} won at {self.price_sats} sats: "
                f"{self.recorded_why or self.why}")
        if not self.matches:
            said += (f" (cleared again, {self.winner} would win: its queue was full or it "
                     "was gone at the close, so its bid did not count)")
        return said


def explain(bids: list[dict], personas: dict[str, str] | None = None,
            closed: dict | None = None, reliability_now: dict | None = None,
            description: str = "") -> list[AuctionStory]:
    """The stories of the auctions in ``bids`` (rows of ``swarm.bids()``), oldest first.

    The bids are grouped by auction and cleared again with the engine's own
    `timmy.market.auction.clear` under the rule they were recorded with; each story says
    whether that matches the recorded winner (it can differ when a cheaper bidder's queue
    was full at the close and its bid did not count).

    ``closed`` maps an auction_id to its `timmy.widgets.recent.AuctionRecord` (from the
    stored ``auction_closed`` events): its why and, under a rule that reads reputation,
    the reliability each bidder had at the close are used, so the story reads the same
    before and after a reload; without one, ``reliability_now`` stands in (marked "now").
    """
    personas = personas or {}
    closed = closed or {}
    key = lambda b: (b["task_id"], b["auction_id"])  # noqa: E731
    stories = []
    for (task_id, auction_id), group in groupby(sorted(bids, key=key), key=key):
        rows = list(group)
        rule = rows[0]["rule"]
        record = closed.get(auction_id)
        rel, source = None, ""
        if uses_reliability(rule):
            if record is not None and record.reliability is not None:
                rel, source = record.reliability, "recorded"
            else:
                rel, source = (reliability_now or {}), "now"
        try:
            clearing = clear(task_id, [Bid(b["agent_id"], b["sats"], bool(b["on_spec"]))
                                       for b in rows], rule, description=description,
                             reputation=rel)
        except TimmyError:   # a rule no longer registered: the recorded story stands
            clearing = Clearing(task_id, rule, None, None, (), "rule not known here")
        won = next((b["agent_id"] for b in rows if b["won"]), None)
        price = clearing.price_sats
        if won is not None and won != clearing.winner:
            price = next(b["sats"] for b in rows if b["agent_id"] == won)
        shown = tuple(
            {"agent_id": b["agent_id"],
             "persona": personas.get(b["agent_id"], b["agent_id"].rsplit("-", 1)[0]),
             "sats": b["sats"], "on_spec": bool(b["on_spec"]), "attempt": b["attempt"],
             "won": bool(b["won"])}
            for b in sorted(rows, key=lambda b: (b["sats"], b["agent_id"])))
        ranked = tuple(terms(list(shown), rule, rel))
        stories.append(AuctionStory(task_id, auction_id, rows[0]["attempt"], rule, shown,
                                    won, clearing.winner, price, clearing.reason, ranked,
                                    record.why if record is not None else None, source))
    return stories


def story_html(story: AuctionStory) -> str:
    extra = ()
    if story.reliability_from:
        extra = (f"reliability ({story.reliability_from})",
                 RANKED_BY[rule_name(story.rule)])
    rows = [(esc(b["rank"]), esc(b["agent_id"]), esc(b["persona"]), esc(b["sats"]),
             "on-spec" if b["on_spec"] else "off-spec",
             *((f"{b['reliability']:.2f}", esc(fmt_key(story.rule, b["key"])))
               if extra else ()),
             esc(b["attempt"]), "<b>won</b>" if b["won"] else "")
            for b in (story.ranked or story.bids)]
    return (f"<div style='margin:6px 0'><b>auction {esc(story.auction_id)}</b> "
            f"(attempt {esc(story.attempt)}, rule <code>{esc(story.rule)}</code>, "
            f"winner {esc(story.recorded_winner)}, price {esc(story.price_sats)} sats)<br>"
            f"<span class='timmy-why'>{esc(story.line)}</span>"
            + render.table(("rank", "agent", "persona", "sats", "spec", *extra, "attempt", ""),
                           rows, empty="no bids") + "</div>")


def outcome_html(task) -> str:
    """The task's result (an LLM's answer, say) or failure reason, escaped, as typed."""
    text, label = (task.result, "result") if task.status == "completed" else \
        (task.reason, "reason")
    if not text:
        return ""
    return (f"<div class='timmy-outcome'><b>{label}</b> ({esc(task.assigned_agent)})"
            f"<pre style='white-space:pre-wrap;overflow-wrap:anywhere;max-height:20em;"
            f"overflow:auto;background:#f5f5f5;padding:6px;margin:4px 0'>{esc(text)}</pre>"
            "</div>")


CHOICES = 200   # newest tasks offered in the picker (an older one is shown when asked for)


class Inspector:
    """Pick a task, see its auctions. ``box`` is the widget; ``show(task_id)`` fills it.

    It reads the newest `CHOICES` tasks for the picker, and for the task it shows that
    task and its bids only: never the whole history.
    """

    def __init__(self, swarm, task_id: int | None = None, recent=None) -> None:
        w = ipywidgets()
        self.swarm = swarm
        self.recent = recent   # a `timmy.widgets.recent.RecentAuctions`: the stored closes
        self.stories: list[AuctionStory] = []
        self.tasks: dict[int, tuple[str, str]] = {}   # task_id -> (status, description)
        self.pick = w.Dropdown(options=[], description="task", layout=w.Layout(width="460px"))
        self.search = w.Text(placeholder="search: task id or text", continuous_update=True,
                             layout=w.Layout(width="260px", **TOUCH))
        self.search.add_class("timmy-inspector-search")
        self.search.observe(lambda _change: self._search(), names="value")
        self.refresh_button = w.Button(description="Refresh", icon="refresh",
                                       layout=w.Layout(**TOUCH))
        self.output = w.HTML()
        self.refresh_button.on_click(lambda _b: self.refresh())
        self.pick.observe(lambda change: self.show(change["new"]), names="value")
        self.box = w.VBox([w.HBox([self.pick, self.search, self.refresh_button]), self.output])
        self.box.add_class("timmy-inspector")
        self.refresh(task_id)

    def refresh(self, task_id: int | None = None) -> None:
        """Reload the newest tasks (newest first) and show ``task_id`` (or the current pick)."""
        try:
            tasks = self.swarm.tasks(limit=CHOICES)
            keep = task_id if task_id is not None else self.pick.value
            if keep is not None and keep not in {t.task_id for t in tasks}:
                try:                                 # older than the newest: asked for
                    tasks.insert(0, self.swarm.task(keep))
                except TaskNotFound:
                    keep = None
        except (TimmyError, OSError) as exc:   # OSError: a service out of reach
            self.output.value = error_html(exc)
            return
        self.descriptions = {t.task_id: t for t in tasks}
        self.tasks = {t.task_id: (t.status, t.description) for t in tasks}
        options = self._options(keep)
        self.pick.options = options
        if keep in self.descriptions:
            if self.pick.value != keep:
                self.pick.value = keep       # observe() calls show()
            else:
                self.show(keep)
        elif options:
            self.show(self.pick.value)

    def _options(self, keep: int | None = None) -> list[tuple[str, int]]:
        """The picker's choices, newest first, those matching the search only (and
        ``keep``, an older task asked for, last)."""
        q = self.search.value
        # Dropdown labels are text, not HTML: the browser shows them as typed
        out = [(f"#{tid} [{status}] {render.clip(text, 60)}", tid)
               for tid, (status, text) in sorted(list(self.tasks.items()), reverse=True)
               if matches(tid, text, q)][:CHOICES]
        if keep in self.tasks and keep not in {o[1] for o in out}:
            status, text = self.tasks[keep]
            out.append((f"#{keep} [{status}] {render.clip(text, 60)}", keep))
        return out

    def follow(self, rows) -> None:
        """New tasks (and new statuses) from the live state (`TaskRow` s, newest first):
        the picker offers them at once; the pick stays."""
        changed, current = False, self.pick.value
        for row in rows:
            seen = self.tasks.get(row.task_id)
            if seen != (row.status, row.description):
                self.tasks[row.task_id] = (row.status, row.description)
                changed = True
                if row.task_id == current and seen is not None:
                    self.show(current)   # its auction closed, it finished: show that
        if changed:
            while len(self.tasks) > CHOICES * 5:
                self.tasks.pop(min(self.tasks))
            self._set_options()

    def _set_options(self, keep: int | None = None) -> None:
        keep = self.pick.value if keep is None else keep
        options = self._options(keep if not self.search.value.strip() else None)
        if [tuple(o) for o in options] == [tuple(o) for o in self.pick.options]:
            return
        with self.pick.hold_trait_notifications():
            self.pick.options = options
            if keep in {o[1] for o in options} and self.pick.value != keep:
                self.pick.value = keep

    def _search(self) -> None:
        """Filter the picker; an id older than the choices is looked up in the store."""
        q = self.search.value.strip().lstrip("#")
        if q.isdigit() and int(q) not in self.tasks:
            try:
                t = self.swarm.task(int(q))
                self.tasks[t.task_id] = (t.status, t.description)
            except (TimmyError, OSError):
                pass
        self._set_options()
        if self.pick.options and self.pick.value not in {o[1] for o in self.pick.options}:
            self.pick.value = self.pick.options[0][1]

    def open(self, task_id: int) -> None:
        """Show ``task_id`` (a click in the recent auctions): the search is cleared."""
        if self.search.value:
            self.search.value = ""
        if task_id not in self.tasks:
            try:
                t = self.swarm.task(task_id)
                self.tasks[t.task_id] = (t.status, t.description)
            except (TimmyError, OSError) as exc:
                self.output.value = error_html(exc)
                return
        self._set_options(task_id)
        if self.pick.value != task_id:
            self.pick.value = task_id    # observe() calls show()
        else:
            self.show(task_id)

    def show(self, task_id: int | None) -> None:
        if task_id is None:
            self.output.value = "<i>no tasks yet</i>"
            return
        try:
            task = self.swarm.task(task_id)
            bids = self.swarm.bids(task_id, MAX_LIMIT)
            personas = {a.agent_id: a.persona for a in self.swarm.agents()}
            closed = {r.auction_id: r for r in (self.recent.closed.get(task_id, [])
                                                if self.recent is not None else [])}
            now = None
            if any(uses_reliability(b["rule"]) and b["auction_id"] not in closed
                   for b in bids):
                now = {a: r.get("reliability", 1.0)
                       for a, r in (self.swarm.reputation() or {}).items()}
        except (TimmyError, OSError) as exc:   # OSError: a service out of reach
            self.output.value = error_html(exc)
            return
        self.stories = explain(bids, personas, closed, now,
                               task.description if task is not None else "")
        self.descriptions[task_id] = task
        head = ""
        if task is not None:
            head = (f"<div><b>#{esc(task.task_id)}</b> {render.badge(task.status)} "
                    f"{esc(task.description)}</div>") + outcome_html(task)
        body = "".join(story_html(s) for s in self.stories) or "<i>no auction recorded yet</i>"
        self.output.value = head + body


def inspect(swarm, task_id: int | None = None):
    """The auction inspector for ``swarm`` (a VBox), showing ``task_id`` or the newest task.

    ``box.inspector`` is the `Inspector` (its ``stories`` are what is shown).
    """
    inspector = Inspector(swarm, task_id)
    inspector.box.inspector = inspector
    return inspector.box
