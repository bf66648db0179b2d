"""Waiting for tasks to finish within a deadline, and why a wait cannot end (`NoRunners`,
`OwnershipLost`); `WaitTimeout` (from `timmy.errors`) when it runs out."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

import anyio

from timmy.errors import ConfigError, NoRunners, OwnershipLost, TaskNotFound, WaitTimeout
from timmy.market.models import TERMINAL_STATES, Task, copy
from timmy.progress import progress_bar

if TYPE_CHECKING:   # the store (SQLAlchemy) is not loaded for WaitTimeout or progress_bar
    from timmy.engine.journal import Journal


def check_timeout(timeout: object) -> None:
    if timeout is not None and (isinstance(timeout, bool)
                                or not isinstance(timeout, int | float) or timeout < 0):
        raise ConfigError(f"timeout must be a number of seconds or None, got {timeout!r}",
                          hint="e.g. timeout=10, or None to wait as long as it takes")


class Waits:
    """The callers waiting for tasks of one coordinator.

    ``watchers`` holds, per unfinished task, what to call when it ends (the coordinator
    calls them); `wake_all` makes every wait look again at whether it can still end (the
    swarm stalled, or the database was taken over). ``lookup`` finds a task in memory,
    ``stalled`` says why the unfinished tasks cannot be worked (or None), and the journal
    answers for tasks no longer in memory and stores what a wait reports as finished.
    """

    def __init__(self, lookup: Callable[[int], Task | None], stalled: Callable[[], str | None],
                 journal: Journal) -> None:
        self.watchers: dict[int, list[Callable[[Task], None]]] = {}
        self._wakes: set[anyio.Event] = set()
        self._lookup, self._stalled, self._journal = lookup, stalled, journal

    def wake_all(self) -> None:
        for wake in self._wakes:
            wake.set()

    async def run(self, post_many: Callable[[Sequence[str]], Awaitable[list[Task]]],
                  descriptions: Sequence[str], timeout: float | None, progress,
                  sequential: bool) -> list[Task]:
        """Post tasks with ``post_many`` and wait for all of them (see `Coordinator.run`)."""
        check_timeout(timeout)
        bar = progress_bar(len(descriptions)) if progress is True else (progress or None)
        try:
            if not sequential:
                tasks = await post_many(descriptions)
                return await self.wait_for([t.task_id for t in tasks], timeout, bar)
            done: list[Task] = []
            with anyio.fail_after(timeout):   # None: no limit
                for description in descriptions:
                    task = (await post_many([description]))[0]
                    done += await self.wait_for([task.task_id], None, bar)
            return done
        except TimeoutError as exc:
            if isinstance(exc, WaitTimeout):
                raise
            raise WaitTimeout(
                f"{len(descriptions) - len(done)} of {len(descriptions)} tasks unfinished "
                f"after {timeout}s (posted one at a time)",
                hint="pass a longer timeout, or check swarm.status() for live runners",
            ) from None
        finally:
            if progress is True:
                bar.close()

    async def wait_for(self, ids: Sequence[int], timeout: float | None, bar=None,
                       single: bool = False) -> list[Task]:
        """The tasks ``ids`` once all are finished, in order; `WaitTimeout` after ``timeout``."""
        check_timeout(timeout)
        started = time.monotonic()
        journal = self._journal
        done: dict[int, Task] = {}
        remaining: set[int] = set()
        unknown: list[int] = []
        for i in ids:
            t = self._lookup(i)
            if t is None:
                unknown.append(i)
            elif t.status in TERMINAL_STATES:
                done[i] = copy(t)
            else:
                remaining.add(i)
        if unknown:  # finished long ago (or never existed): the store knows
            await journal.flush()
            for t in await anyio.to_thread.run_sync(journal.store.tasks, None, None, unknown):
                done[t.task_id] = t
            for i in unknown:
                if i not in done:
                    raise TaskNotFound(f"no task with id {i}",
                                       hint="use the task_id of a Task returned by post()")
        if bar is not None:
            bar.update(len(done))
        all_done = anyio.Event()

        def watch(task: Task) -> None:
            remaining.discard(task.task_id)
            done[task.task_id] = copy(task)
            if bar is not None:
                bar.update(1)
            if not remaining:
                all_done.set()

        for i in remaining:
            self.watchers.setdefault(i, []).append(watch)
        self._wakes.add(all_done)
        try:
            if remaining and journal.lost is None and not self._stalled():
                with anyio.move_on_after(timeout):   # lost or stalled: it would never end
                    await all_done.wait()
            if remaining and journal.lost is not None:
                raise OwnershipLost(journal.lost.message, hint=journal.lost.hint)
            if remaining and (why := self._stalled()):
                self._raise_stalled(why, ids, remaining, single)
            if remaining:
                what = self._unfinished(ids, remaining, single)
                raise WaitTimeout(
                    f"{what} after {timeout}s",
                    hint="wait longer, check swarm.status(), or spawn runners if there are none",
                )
        finally:
            self._wakes.discard(all_done)
            for i in remaining:
                watchers = self.watchers.get(i, [])
                if watch in watchers:
                    watchers.remove(watch)
                if not watchers:
                    self.watchers.pop(i, None)
        # What we report as finished is stored, so a crash cannot undo it. A locked
        # database is waited out, within the caller's timeout.
        await journal.flush_until(None if timeout is None else started + timeout)
        return [done[i] for i in ids]

    def _unfinished(self, ids: Sequence[int], remaining: set[int], single: bool) -> str:
        """What a wait says of the tasks it did not see finish: where they stand."""
        states = ", ".join(sorted({self._lookup(i).status for i in remaining}))
        return (f"task {ids[0]} is still {states}" if single
                else f"{len(remaining)} of {len(ids)} tasks unfinished (still {states})")

    def _raise_stalled(self, why: str, ids: Sequence[int], remaining: set[int],
                       single: bool) -> None:
        what = self._unfinished(ids, remaining, single)
        hint = ("spawn runners: swarm.spawn_all() or swarm.spawn('forge'), `timmy spawn`, or "
                "Spawn on a dashboard; the tasks stay queued and run once a runner is live")
        if "failed" in why:
            hint += ("; swarm.agents() and the agent_failed events say why they died "
                     "(`timmy serve --max-restarts` lifts the crash-loop guard)")
        them = "it" if single else "them"
        raise NoRunners(f"{what} and no runner can take {them}: {why}", hint=hint)
