"""Pages of history: how big a page is (`DEFAULT_LIMIT`, at most `MAX_LIMIT` from a service),
and `walk`, which reads every page with a cursor so nothing holds the whole history.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from typing import Any, TypeVar

from timmy.errors import ConfigError

DEFAULT_LIMIT = 1000    # rows per page when no limit is given
MAX_LIMIT = 10_000      # most rows a swarm service returns per call (larger asks are cut)

T = TypeVar("T")


def page_limit(limit: int | None, default: int = DEFAULT_LIMIT) -> int:
    """``limit`` checked (a whole number >= 0), or ``default`` for None."""
    if limit is None:
        return default
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
        raise ConfigError(f"limit must be a whole number >= 0, got {limit!r}",
                          hint=f"pass limit=N (default {DEFAULT_LIMIT}), and walk further "
                               "pages with after=/before= or the iter_* methods")
    return limit


def walk(fetch: Callable[[Any, int], Sequence[T]], key: Callable[[T], Any], after: Any,
         page: int = DEFAULT_LIMIT) -> Iterator[T]:
    """Every row from ``fetch(after=cursor, limit=page)``, page after page, oldest first.

    ``key`` is a row's id (the next cursor). Stops at the first page shorter than
    ``page``, which is at most `MAX_LIMIT` so a service's cap cannot end it early.

    Every list call (``tasks``, ``bids``, ``events``, ``agents``) returns one page
    of at most ``limit`` rows, always oldest first (by id): with no cursor the newest
    ``limit`` rows (the recent window); ``after=ID`` the oldest ``limit`` rows above
    ``ID`` (walk forward: the next cursor is the last row's id); ``before=ID`` the
    newest ``limit`` rows below ``ID`` (walk backward: the next cursor is the first
    row's id). ``iter_tasks``/``iter_bids``/``iter_events``/``iter_agents`` are this
    walk, one query per page. Agents are ordered by ``agent_id`` and their default
    page is the first.
    """
    page = min(max(page_limit(page), 1), MAX_LIMIT)
    cursor = after
    while True:
        rows = fetch(cursor, page)
        yield from rows
        if len(rows) < page:
            return
        cursor = key(rows[-1])


async def awalk(fetch: Callable[[Any, int], Awaitable[Sequence[T]]], key: Callable[[T], Any],
                after: Any, page: int = DEFAULT_LIMIT) -> AsyncIterator[T]:
    """`walk` for an async ``fetch`` (`timmy.AsyncSwarm`): ``async for row in ...``."""
    page = min(max(page_limit(page), 1), MAX_LIMIT)
    cursor = after
    while True:
        rows = await fetch(cursor, page)
        for row in rows:
            yield row
        if len(rows) < page:
            return
        cursor = key(rows[-1])


def task_key(task) -> int:
    return task.task_id


def bid_key(bid: dict) -> int:
    return bid["bid_id"]


def ledger_key(entry: dict) -> int:
    return entry["entry_id"]


def event_key(event) -> int:
    return event.event_id


def agent_key(agent) -> str:
    return agent.agent_id
