"""What an announcer says: which swarm events are news (an auction won, a task completed or
failed) and the sentence for one event, or the summary that merges several.
"""

from __future__ import annotations

from collections import Counter

from timmy.market.models import Event

WON, COMPLETED, FAILED = "won", "completed", "failed"
#: The event kinds that can be news (the cheap first filter of an announcer).
NEWS_KINDS = frozenset({"auction_closed", "task_completed", "task_failed"})


def news_of(event: Event) -> str | None:
    """What an event is worth announcing as: an auction won, a task completed or failed."""
    if event.kind == "auction_closed":
        return WON if event.agent_id is not None else None
    if event.kind == "task_completed":
        return COMPLETED
    if event.kind == "task_failed":
        return FAILED
    return None


def sentence(counts: Counter, last: Event) -> str:
    """One event in full; several merged into a summary."""
    if sum(counts.values()) == 1:
        news = news_of(last)
        if news == WON:
            price = last.data.get("price_sats")
            return f"{last.agent_id} wins task {last.task_id}" + (
                f" for {price} sats." if price is not None else ".")
        if news == COMPLETED:
            by = f" by {last.agent_id}" if last.agent_id else ""
            return f"Task {last.task_id} completed{by}."
        return f"Task {last.task_id} failed."
    parts = []
    for news, one, many in ((WON, "auction won", "auctions won"),
                            (COMPLETED, "task completed", "tasks completed"),
                            (FAILED, "task failed", "tasks failed")):
        if counts[news]:
            parts.append(f"{counts[news]} {one if counts[news] == 1 else many}")
    return (", ".join(parts[:-1]) + " and " + parts[-1] if len(parts) > 1 else parts[0]) + "."

