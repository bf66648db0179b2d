"""`AsyncSwarm` (the engine's face for ``async with``) and `Swarm` (the same, synchronous, on an
anyio `BlockingPortal` thread, so it works in a script and inside a running Jupyter kernel);
leaving a ``with`` block, `Swarm.close` or interpreter exit stops every runner.
"""

from __future__ import annotations

import asyncio
import atexit
import functools
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from timmy.errors import ConfigError, StoreError, SwarmClosed, WaitTimeout
from timmy.llm import DEFAULT_TIMEOUT
from timmy.market.models import TASK_STATES, AgentInfo, Event, Task
from timmy.market.personas import Persona
from timmy.paging import (
    DEFAULT_LIMIT,
    agent_key,
    awalk,
    bid_key,
    event_key,
    ledger_key,
    page_limit,
    task_key,
    walk,
)
from timmy.progress import progress_bar
from timmy.storage.address import DEFAULT_DB, DatabaseAddress

if TYPE_CHECKING:
    from timmy.engine.coordinator import Config, Coordinator
    from timmy.engine.supervisor import RestartPolicy
    from timmy.service.client import AttachedSwarm
    from timmy.storage.store import Store

# The coordinator and the store (SQLAlchemy) are imported when a swarm is made, not here:
# `Swarm.attach` (a client of a service) needs neither.

__all__ = ["DEFAULT_DB", "AsyncSwarm", "Swarm", "WaitTimeout"]


class AsyncSwarm:
    """A swarm of runner processes and the coordinator that auctions tasks to them.

    ``async with AsyncSwarm(db, seed=1) as swarm: await swarm.spawn_all(); ...``

    ``executor="ollama"`` sends each won task to an Ollama server (see `timmy.llm`):
    ``model`` is one model for every persona or ``{persona id: model}``, ``ollama_host``
    the server, ``ollama_timeout`` how long it may stay silent. ``executor="auto"``
    probes the server once at start: Ollama if it answers with those models, simulated
    otherwise; ``executor`` and ``executor_reason`` then say which, and why.

    ``budget``: sats the swarm may spend (paid + held, see `timmy.market.budgets`) before
    a clearing waits for `approve`/`reject` in "awaiting_approval".

    ``voice=True`` subscribes a `timmy.voice.announcer`: auction winners and completions
    are spoken, rate-limited and merged, on a thread of their own (see `timmy.voice`).
    """

    def __init__(
        self,
        db: str | Path = DEFAULT_DB,
        *,
        executor: str = "simulated",
        seed: int = 0,
        task_seconds: float = 0.05,
        auction_window: float = 2.0,
        rule: str = "specialist_first",
        max_attempts: int = 3,
        runner_queue: int = 32,
        max_queued: int = 100_000,
        ping_interval: float = 5.0,
        ping_timeout: float = 30.0,
        hello_timeout: float = 15.0,
        close_timeout: float = 10.0,
        task_timeout: float | None = None,
        personas: dict[str, Persona] | None = None,
        db_timeout: float = 5.0,
        restart: RestartPolicy | None = None,
        runner_command: Sequence[str] | None = None,
        model: str | Mapping[str, str] | None = None,
        ollama_host: str | None = None,
        ollama_timeout: float = DEFAULT_TIMEOUT,
        voice: bool = False,
        verify_timeout: float = 30.0,
        budget: int | None = None,
    ) -> None:
        from timmy.engine.coordinator import Config

        kwargs: dict[str, Any] = {}
        if personas is not None:
            kwargs["personas"] = dict(personas)
        if restart is not None:
            kwargs["restart"] = restart
        self.config = Config(seed=seed, executor=executor, task_seconds=task_seconds,
                             auction_window=auction_window, rule=rule,
                             max_attempts=max_attempts, runner_queue=runner_queue,
                             max_queued=max_queued,
                             ping_interval=ping_interval, ping_timeout=ping_timeout,
                             hello_timeout=hello_timeout, close_timeout=close_timeout,
                             task_timeout=task_timeout,
                             runner_command=runner_command,
                             model=dict(model) if isinstance(model, Mapping) else model,
                             ollama_host=ollama_host, ollama_timeout=ollama_timeout,
                             verify_timeout=verify_timeout, budget=budget, **kwargs)
        self.address = DatabaseAddress.parse(db)   # a path is an SQLite file
        self.db = self.address.url
        self.voice = voice
        self.announcer = None  # a timmy.voice.Announcer while a swarm with voice=True runs
        self._db_timeout = db_timeout
        self._engine: Coordinator | None = None
        self._tg = None
        self._release = lambda: None
        self.store: Store | None = None

    # -- lifecycle ----------------------------------------------------------
    async def __aenter__(self) -> AsyncSwarm:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            raise ConfigError(
                "AsyncSwarm runs on asyncio (its runner pipes are asyncio subprocesses)",
                hint="run it under asyncio (anyio.run(main) or asyncio.run(main)), or use the "
                "synchronous timmy.Swarm, which brings its own event loop",
            ) from None
        from timmy.engine.coordinator import Coordinator
        from timmy.storage.ownership import claim
        from timmy.storage.store import Store

        self._release = claim(self.address)   # before opening: never migrate one in use
        try:
            self.store = await anyio.to_thread.run_sync(Store, self.address, self._db_timeout)
        except BaseException:
            self._release()
            raise
        self._engine = Coordinator(self.store, self.config)
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        try:
            await self._engine.start(self._tg)
        except BaseException:
            self._tg.cancel_scope.cancel()
            await self._tg.__aexit__(None, None, None)
            self._let_go()
            raise
        if self.voice:  # speaks on its own thread; without speech it warns once, stays quiet
            from timmy.voice import announcer

            self.announcer = announcer()
            self._engine.subscribe(self.announcer)
        return self

    async def __aexit__(self, *exc_info) -> None:
        try:
            with anyio.CancelScope(shield=True):
                await self._engine.close()
        finally:
            if self.announcer is not None:
                self.announcer.close()  # what is pending is still said, off this thread
            self._tg.cancel_scope.cancel()
            await self._tg.__aexit__(None, None, None)
            self._let_go()

    def _let_go(self) -> None:
        """Close the pooled connections and give the database back."""
        self.store.dispose()
        self._release()

    @property
    def engine(self) -> Coordinator:
        if self._engine is None:
            raise SwarmClosed("this swarm is not running",
                              hint="use it inside `async with AsyncSwarm(...) as swarm:`")
        return self._engine

    @property
    def executor(self) -> str:
        """The executor runners use: as configured, with "auto" resolved once started."""
        engine = self._engine
        return engine.runners.executor if engine is not None else self.config.executor

    @property
    def executor_reason(self) -> str:
        """Why "auto" chose what it chose ("" for an executor given by name)."""
        return self._engine.runners.executor_reason if self._engine is not None else ""

    # -- agents -------------------------------------------------------------
    async def spawn(self, persona: str) -> AgentInfo:
        """Start a runner process for ``persona`` (an id from the catalog)."""
        return await self.engine.runners.spawn(persona)

    async def spawn_all(self, personas: Iterable[str] | None = None) -> list[AgentInfo]:
        """One runner per persona in the catalog (or per id in ``personas``)."""
        return await self.engine.runners.spawn_all(personas)

    async def stop(self, agent_id: str) -> AgentInfo:
        """Stop one runner for good; the tasks it held are auctioned again (no attempt used)."""
        return await self.engine.runners.stop(agent_id)

    async def kill(self, agent_id: str) -> None:
        """SIGKILL one runner, as a crash would: it is restarted and the tasks it held are
        auctioned again (the one it was running uses up an attempt)."""
        self.engine.runners.kill(agent_id)

    async def agents(self, limit: int | None = None, after: str | None = None) -> list[AgentInfo]:
        """This swarm's agents with their status, pid, restarts and earnings, by agent_id:
        the first ``limit`` (default `timmy.paging.DEFAULT_LIMIT`), or those after ``after``."""
        return self.engine.runners.infos(limit, after)

    # -- tasks --------------------------------------------------------------
    async def post(self, description: str, task_timeout: float | None = None, *,
                   verify: str | None = None, max_price: int | None = None) -> Task:
        """Persist a task and start its auction; returns it as "queued".

        ``task_timeout``: seconds its runner may work on it before the runner is restarted
        and the task auctioned again (an attempt spent); None: the swarm's ``task_timeout``.
        ``verify``: what a result must pass to be paid: "nonempty", "regex:PATTERN",
        "json-schema:PATH", "command:CMD" or a name given to `timmy.register_verifier`
        (see `timmy.market.verification`); a result that fails is not paid and the task is
        auctioned again without that agent (an attempt spent). Stored with the task.
        ``max_price``: sats over which its auction's clearing waits for `approve` in
        "awaiting_approval" (as one over the swarm's budget left does). Stored with the task.
        """
        return (await self.engine.post_many([description], task_timeout, verify,
                                            max_price))[0]

    async def post_many(self, descriptions: Sequence[str],
                        task_timeout: float | None = None, *,
                        verify: str | None = None, max_price: int | None = None) -> list[Task]:
        """Post several tasks in one transaction (``task_timeout``, ``verify``,
        ``max_price`` as for `post`)."""
        return await self.engine.post_many(descriptions, task_timeout, verify, max_price)

    async def approve(self, task_id: int) -> Task:
        """Assign a task "awaiting_approval" to the agent whose bid is held, at that price
        (if that agent has no room any more, it is auctioned again with that price as its
        ceiling; see `timmy.market.budgets`). ConfigError if it is not awaiting approval."""
        self.engine.require_task(task_id)
        return self.engine.approve(task_id)

    async def reject(self, task_id: int) -> Task:
        """Cancel a task "awaiting_approval"; ConfigError if it is not awaiting approval."""
        self.engine.require_task(task_id)
        return self.engine.reject(task_id)

    async def wait(self, task_id: int, timeout: float | None = None) -> Task:
        """Wait until a task is completed, failed or cancelled; `WaitTimeout` after ``timeout``."""
        self.engine.require_task(task_id)
        return await self.engine.wait(task_id, timeout)

    async def run(self, descriptions: Sequence[str], timeout: float | None = None,
                  progress: Any = False, sequential: bool = False) -> list[Task]:
        """Post many tasks and wait for all; ``progress=True`` shows a tqdm bar;
        ``sequential=True`` posts each when the previous one has finished (reproducible)."""
        return await self.engine.run(descriptions, timeout, progress, sequential)

    async def cancel(self, task_id: int) -> Task:
        """Cancel a task that has not finished (a finished one is returned unchanged)."""
        self.engine.require_task(task_id)
        return await self.engine.cancel(task_id)

    async def tasks(self, status: str | None = None, limit: int | None = None, *,
                    after: int | None = None, before: int | None = None) -> list[Task]:
        """One page of tasks (all, or those in ``status``), oldest first.

        The newest ``limit`` (default `timmy.paging.DEFAULT_LIMIT`); ``after=task_id``:
        the ``limit`` after it (walk forward); ``before=task_id``: the ``limit`` before it.
        `iter_tasks` walks them all.
        """
        if status is not None and status not in TASK_STATES:
            raise ConfigError(f"unknown task status {status!r}",
                              hint=f"use one of: {', '.join(TASK_STATES)}")
        limit = page_limit(limit)
        await self.engine.flush()
        return await anyio.to_thread.run_sync(
            functools.partial(self.store.tasks, status, limit, after=after, before=before))

    def iter_tasks(self, status: str | None = None, *, after: int = 0,
                   page: int = DEFAULT_LIMIT) -> AsyncIterator[Task]:
        """Every task (in ``status``) after ``after``, oldest first, a page per query:
        ``async for task in swarm.iter_tasks(): ...``."""
        return awalk(lambda c, n: self.tasks(status, n, after=c), task_key, after, page)

    async def task(self, task_id: int) -> Task:
        """One task as it stands now."""
        self.engine.require_task(task_id)
        return await self.engine.task(task_id)

    async def bids(self, task_id: int | None = None, limit: int | None = None, *,
                   after: int | None = None, before: int | None = None) -> list[dict]:
        """One page of bids (all, or one task's), oldest first by ``bid_id``, each with its
        attempt, on-spec flag and whether it won; paged as `tasks` is (`iter_bids`)."""
        limit = page_limit(limit)
        await self.engine.flush()
        return await anyio.to_thread.run_sync(
            functools.partial(self.store.bids, task_id, limit, after=after, before=before))

    def iter_bids(self, task_id: int | None = None, *, after: int = 0,
                  page: int = DEFAULT_LIMIT) -> AsyncIterator[dict]:
        """Every bid (or one task's) after bid ``after``, oldest first, a page per query."""
        return awalk(lambda c, n: self.bids(task_id, n, after=c), bid_key, after, page)

    async def events(self, after: int | None = None, limit: int | None = None, *,
                     before: int | None = None) -> list[Event]:
        """One page of stored events, oldest first: the newest ``limit``, or the ``limit``
        with ``event_id`` greater than ``after`` (or less than ``before``)."""
        limit = page_limit(limit)
        await self.engine.flush()
        return await anyio.to_thread.run_sync(
            functools.partial(self.store.events, after, limit, before=before))

    def iter_events(self, after: int = 0, *, page: int = DEFAULT_LIMIT) -> AsyncIterator[Event]:
        """Every stored event after ``after``, oldest first, a page per query."""
        return awalk(lambda c, n: self.events(c, n), event_key, after, page)

    def iter_agents(self, *, page: int = DEFAULT_LIMIT) -> AsyncIterator[AgentInfo]:
        """Every agent of this swarm, by agent_id, a page at a time."""
        return awalk(lambda c, n: self.agents(n, c), agent_key, None, page)

    async def ledger(self, agent_id: str | None = None, limit: int | None = None, *,
                     after: int | None = None, before: int | None = None) -> list[dict]:
        """One page of the ledger (all, or one agent's), oldest first by ``entry_id``: a
        row per paid task (task_id, attempt, agent_id, sats: the clearing price,
        verified, created_at), written with its completion; paged as `tasks` is."""
        limit = page_limit(limit)
        await self.engine.flush()
        return await anyio.to_thread.run_sync(
            functools.partial(self.store.ledger, agent_id, limit, after=after, before=before))

    def iter_ledger(self, agent_id: str | None = None, *, after: int = 0,
                    page: int = DEFAULT_LIMIT) -> AsyncIterator[dict]:
        """Every ledger entry (or one agent's) after ``after``, oldest first, a page per query."""
        return awalk(lambda c, n: self.ledger(agent_id, n, after=c), ledger_key, after, page)

    async def balances(self) -> dict[str, dict[str, int]]:
        """Per agent the ledger paid: ``sats`` in all, ``tasks`` paid, how many ``verified``."""
        await self.engine.flush()
        return await anyio.to_thread.run_sync(self.store.balances)

    async def reputation(self) -> dict[str, dict]:
        """Per agent (every agent of the swarm, and any with a stored record), what its
        results came to: ``successes``, ``failures``, ``verification_failures``,
        ``outcomes``, ``reliability`` ((successes + 1) / (outcomes + 2), what the
        ``reputation`` and ``score`` mechanisms read), and ``on_time``, ``late`` and
        ``timeliness`` against tasks' deadlines (`timmy.market.reputation`)."""
        return self.engine.reputation.snapshot(self.engine.agents)

    def subscribe(self, callback: Callable[[Event], None]) -> Callable[[], None]:
        """Call ``callback(event)`` for every event from now on; returns unsubscribe().

        Callbacks run on the engine's thread: keep them quick (queue slow work).
        """
        return self.engine.subscribe(callback)

    async def status(self) -> dict:
        """Task counts by state, live and free runners, open auctions.

        The counts are kept by the engine (no scan of the history). Answers while the store
        refuses writes (disk full, read-only, locked): ``store_error`` then says why newer
        changes wait in memory.
        """
        store_error = None
        try:
            await self.engine.flush()
        except StoreError as exc:
            store_error = f"{exc.message} (hint: {exc.hint})"
        status = self.engine.status(self.engine.task_counts())
        status["store_error"] = store_error
        return status

    async def export(self, out_dir: str | Path, fmt: str = "parquet") -> dict[str, Path]:
        """Write tasks, bids, agents and events as Parquet (or CSV) files into ``out_dir``."""
        from timmy.storage.export import export_store

        await self.engine.flush()
        return await anyio.to_thread.run_sync(export_store, self.store, out_dir, fmt)


class Swarm:
    """The synchronous swarm: the same methods as `AsyncSwarm`, for scripts and notebooks.

    ``with timmy.Swarm(seed=1) as swarm: swarm.spawn_all(); swarm.run([...])``

    Each method is one line over the `AsyncSwarm` it runs: logic belongs in the engine.
    A swarm used without ``with`` starts on first use and stops at `Swarm.close` or at
    interpreter exit; its runners also exit by themselves if this process dies.
    """

    def __init__(self, db: str = DEFAULT_DB, **kwargs: Any) -> None:
        self._async = AsyncSwarm(db, **kwargs)
        self._portal_cm = None
        self._portal = None
        self._stop: anyio.Event | None = None
        self._future = None
        self._closed = False

    @staticmethod
    def attach(url: str = "tcp://127.0.0.1:7341", token: str | None = None,
               **kwargs: Any) -> AttachedSwarm:
        """The swarm hosted by a running ``timmy serve``, with the methods of `Swarm`.

        ``token`` defaults to TIMMY_TOKEN, else the token file beside the default database.
        """
        from timmy.service.client import AttachedSwarm

        return AttachedSwarm(url, token, **kwargs)

    @property
    def config(self) -> Config:
        return self._async.config

    @property
    def db(self) -> str:
        return self._async.db

    @property
    def executor(self) -> str:
        """The executor runners use ("auto" is resolved when the swarm starts)."""
        return self._async.executor

    @property
    def executor_reason(self) -> str:
        """Why "auto" chose what it chose ("" for an executor given by name)."""
        return self._async.executor_reason

    @property
    def announcer(self):
        """The `timmy.voice.Announcer` of a swarm started with ``voice=True`` (else None)."""
        return self._async.announcer

    def start(self) -> Swarm:
        """Open the store and start the engine (done for you by ``with`` or first use)."""
        if self._closed:
            raise SwarmClosed("this swarm was closed", hint="create a new timmy.Swarm(...)")
        if self._portal is not None:
            return self
        cm = anyio.from_thread.start_blocking_portal()
        portal = cm.__enter__()
        try:
            self._future, _ = portal.start_task(self._serve)
        except BaseException:
            cm.__exit__(None, None, None)
            raise
        self._portal_cm, self._portal = cm, portal
        # A swarm left open (a notebook, a script without `with`) is closed at exit.
        atexit.register(self.close)
        return self

    async def _serve(self, *, task_status=anyio.TASK_STATUS_IGNORED) -> None:
        self._stop = anyio.Event()
        async with self._async:
            task_status.started()
            await self._stop.wait()

    def close(self) -> None:
        """Stop every runner and persist everything. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        if self._portal is None:
            return
        atexit.unregister(self.close)
        try:
            self._portal.call(self._stop.set)
            self._future.result()
        finally:
            self._portal_cm.__exit__(None, None, None)
            self._portal = self._portal_cm = None

    def __enter__(self) -> Swarm:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _call(self, fn, *args):
        if self._portal is None:
            self.start()
        future = self._portal.start_task_soon(fn, *args)
        try:
            return future.result()
        except BaseException:
            # Ctrl-C (KeyboardInterrupt) lands here while the call still runs in the engine:
            # cancel it, or closing would wait for it (forever with timeout=None).
            future.cancel()
            raise

    # -- the API, one line each ---------------------------------------------
    def spawn(self, persona: str) -> AgentInfo:
        return self._call(self._async.spawn, persona)

    def spawn_all(self, personas: Iterable[str] | None = None) -> list[AgentInfo]:
        return self._call(self._async.spawn_all, personas)

    def stop(self, agent_id: str) -> AgentInfo:
        return self._call(self._async.stop, agent_id)

    def kill(self, agent_id: str) -> None:
        return self._call(self._async.kill, agent_id)

    def agents(self, limit: int | None = None, after: str | None = None) -> list[AgentInfo]:
        return self._call(self._async.agents, limit, after)

    def iter_agents(self, *, page: int = DEFAULT_LIMIT) -> Iterator[AgentInfo]:
        """Every agent, by agent_id, a page per call (see `AsyncSwarm.agents`)."""
        return walk(lambda c, n: self.agents(n, c), agent_key, None, page)

    def post(self, description: str, task_timeout: float | None = None, *,
             verify: str | None = None, max_price: int | None = None) -> Task:
        return self._call(functools.partial(self._async.post, description, task_timeout,
                                            verify=verify, max_price=max_price))

    def post_many(self, descriptions: Sequence[str],
                  task_timeout: float | None = None, *, verify: str | None = None,
                  max_price: int | None = None) -> list[Task]:
        return self._call(functools.partial(self._async.post_many, descriptions, task_timeout,
                                            verify=verify, max_price=max_price))

    def approve(self, task_id: int) -> Task:
        return self._call(self._async.approve, task_id)

    def reject(self, task_id: int) -> Task:
        return self._call(self._async.reject, task_id)

    def ledger(self, agent_id: str | None = None, limit: int | None = None, *,
               after: int | None = None, before: int | None = None) -> list[dict]:
        return self._call(functools.partial(self._async.ledger, agent_id, limit, after=after,
                                            before=before))

    def iter_ledger(self, agent_id: str | None = None, *, after: int = 0,
                    page: int = DEFAULT_LIMIT) -> Iterator[dict]:
        """Every ledger entry (or one agent's) after ``after``, oldest first, a page per call."""
        return walk(lambda c, n: self.ledger(agent_id, n, after=c), ledger_key, after, page)

    def balances(self) -> dict[str, dict[str, int]]:
        return self._call(self._async.balances)

    def reputation(self) -> dict[str, dict]:
        return self._call(self._async.reputation)

    def wait(self, task_id: int, timeout: float | None = None) -> Task:
        return self._call(self._async.wait, task_id, timeout)

    def run(self, descriptions: Sequence[str], timeout: float | None = None,
            progress: bool = False, sequential: bool = False) -> list[Task]:
        # The bar is made here, in the caller's thread, so Jupyter shows it under this cell.
        bar = progress_bar(len(descriptions)) if progress is True else progress
        try:
            return self._call(self._async.run, descriptions, timeout, bar, sequential)
        finally:
            if progress is True:
                bar.close()

    def cancel(self, task_id: int) -> Task:
        return self._call(self._async.cancel, task_id)

    def tasks(self, status: str | None = None, limit: int | None = None, *,
              after: int | None = None, before: int | None = None) -> list[Task]:
        return self._call(functools.partial(self._async.tasks, status, limit, after=after,
                                            before=before))

    def iter_tasks(self, status: str | None = None, *, after: int = 0,
                   page: int = DEFAULT_LIMIT) -> Iterator[Task]:
        """Every task (in ``status``) after ``after``, oldest first, a page per call."""
        return walk(lambda c, n: self.tasks(status, n, after=c), task_key, after, page)

    def task(self, task_id: int) -> Task:
        return self._call(self._async.task, task_id)

    def bids(self, task_id: int | None = None, limit: int | None = None, *,
             after: int | None = None, before: int | None = None) -> list[dict]:
        return self._call(functools.partial(self._async.bids, task_id, limit, after=after,
                                            before=before))

    def iter_bids(self, task_id: int | None = None, *, after: int = 0,
                  page: int = DEFAULT_LIMIT) -> Iterator[dict]:
        """Every bid (or one task's) after bid ``after``, oldest first, a page per call."""
        return walk(lambda c, n: self.bids(task_id, n, after=c), bid_key, after, page)

    def events(self, after: int | None = None, limit: int | None = None, *,
               before: int | None = None) -> list[Event]:
        return self._call(functools.partial(self._async.events, after, limit, before=before))

    def iter_events(self, after: int = 0, *, page: int = DEFAULT_LIMIT) -> Iterator[Event]:
        """Every stored event after ``after``, oldest first, a page per call."""
        return walk(lambda c, n: self.events(c, n), event_key, after, page)

    def subscribe(self, callback: Callable[[Event], None]) -> Callable[[], None]:
        if self._portal is None:
            self.start()
        return self._async.subscribe(callback)

    def status(self) -> dict:
        return self._call(self._async.status)

    def export(self, out_dir: str | Path, fmt: str = "parquet") -> dict[str, Path]:
        return self._call(self._async.export, out_dir, fmt)
