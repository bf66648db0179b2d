"""The swarm's runners: what each starts with, spawning and naming them, admitting remote
ones, their hello and their end, stopping and killing them."""

from __future__ import annotations

import logging
import shlex
import sys
from collections.abc import Awaitable, Callable, Iterable

import anyio
import msgspec

from timmy.engine import protocol as p
from timmy.engine.agents import Agent, where
from timmy.engine.config import Config
from timmy.engine.journal import Journal
from timmy.engine.supervisor import Supervisor, Verdict
from timmy.errors import ConfigError, PersonaError, RunnerError
from timmy.llm import base_url, model_for
from timmy.market.bidding import BidStats
from timmy.market.models import AgentInfo, copy
from timmy.market.personas import PERSONAS, Persona, get_persona
from timmy.paging import page_limit
from timmy.storage.store import Store

log = logging.getLogger("timmy")

# What a runner's end makes of its agent: its status, and the event that says so.
_AGENT_STATUS = {Verdict.RESTART: "restarting", Verdict.STOPPED: "stopped",
                 Verdict.DISCONNECTED: "disconnected", Verdict.FAILED: "failed"}
_EXIT_EVENT = {Verdict.RESTART: "agent_crashed", Verdict.STOPPED: "agent_left",
               Verdict.DISCONNECTED: "agent_disconnected", Verdict.FAILED: "agent_failed"}


def persona_fields(persona: Persona) -> dict:
    """A persona as `timmy.market.personas.persona_from_dict` reads it back (for a runner)."""
    fields = ("id", "name", "role", "description", "capabilities", "rate_sats", "bid_base",
              "bid_jitter", "preferred_keywords")
    out = {f: getattr(persona, f) for f in fields}
    if persona.strategy != "adaptive":   # only then: an older runner reads the rest
        out["strategy"] = persona.strategy
    return out


class Runners:
    """The runner side of a coordinator: it holds the same ``agents`` dict.

    It starts local runners (`spawn`) and admits remote ones (`serve_remote`), names them
    (``persona-N``), tells each what it starts with (`spec`: the executor chosen at start,
    the Ollama settings, what it had learned), marks one live on its hello and gone at its
    end (`ended`, `report_end`), and stops or kills one on request. What happens to tasks
    and auctions when a runner comes or goes is the coordinator's. ``check_open`` raises
    when the swarm no longer takes work; the `Supervisor` is set when the coordinator
    starts (it calls back into the coordinator).
    """

    def __init__(self, store: Store, config: Config, agents: dict[str, Agent],
                 journal: Journal, check_open: Callable[[], None]) -> None:
        self.store, self.cfg, self.agents, self.journal = store, config, agents, journal
        self._check_open = check_open
        self.supervisor: Supervisor | None = None
        self._agent_counts: dict[str, int] = {}
        # What runners are told to use: the configured executor, with "auto" resolved at
        # start (one probe of the Ollama server), and why.
        self.executor = config.executor
        self.executor_reason = ""

    async def start(self) -> None:
        """Continue the agents' numbering from the store; resolve an "auto" executor."""
        self._agent_counts = await anyio.to_thread.run_sync(self.store.agent_counts)
        if self.cfg.executor == "auto":
            self.executor, self.executor_reason = await anyio.to_thread.run_sync(
                self.cfg.resolve_auto)
            log.info("executor auto: using %s (%s)", self.executor, self.executor_reason)
            self.journal.emit("executor_chosen", None, None, asked="auto",
                              executor=self.executor, why=self.executor_reason)

    def changed(self, agent: Agent) -> None:
        """An agent's row is to be written."""
        self.journal.agent_changed(agent.info, agent.joined_at)

    # -- what a runner starts with ------------------------------------------
    def spec(self, agent_id: str, persona: Persona, stats: BidStats | None = None) -> p.RunnerSpec:
        """What a runner of ``persona`` starts with: a catalog persona by id, another by its
        fields; the Ollama settings resolved here, so every runner asks the same server."""
        ollama = self.executor == "ollama"
        return p.RunnerSpec(
            agent_id=agent_id, seed=self.cfg.seed, executor=self.executor,
            persona=persona.id if PERSONAS.get(persona.id) == persona
            else persona_fields(persona),
            task_seconds=self.cfg.task_seconds, ollama_timeout=self.cfg.ollama_timeout,
            model=model_for(persona.id, self.cfg.model) if ollama else None,
            ollama_host=base_url(self.cfg.ollama_host) if ollama else msgspec.UNSET,
            stats=stats.to_dict() if stats is not None and stats.auctions else None)

    def argv(self, agent_id: str, persona: Persona, stats: BidStats | None = None) -> list[str]:
        """The command line of a local runner (``runner_command``, or this Python's)."""
        if self.cfg.runner_command is not None:
            base = list(self.cfg.runner_command)
        else:
            base = [sys.executable, "-m", "timmy.engine.runner"]
        return [*base, "--spec", p.encode_spec(self.spec(agent_id, persona, stats))]

    # -- local runners --------------------------------------------------------
    async def spawn(self, persona_id: str, timeout: float = 15.0) -> AgentInfo:
        """Start one runner for ``persona_id`` and wait until it says hello."""
        self._check_open()
        persona = get_persona(persona_id, self.cfg.personas) if isinstance(persona_id, str) \
            else self._bad_persona(persona_id)
        agent_id = self._new_agent_id(persona)
        agent = Agent(AgentInfo(agent_id=agent_id, persona=persona.id, name=persona.name),
                      persona)
        argv = self.argv(agent_id, persona)
        self.agents[agent_id] = agent
        try:
            slot = await self.supervisor.start(agent_id, argv)
        except RunnerError:
            del self.agents[agent_id]
            raise
        agent.info.pid = slot.pid
        self.changed(agent)
        with anyio.move_on_after(timeout):
            await agent.settled.wait()
        if not agent.ready.is_set():
            await self.supervisor.stop(agent_id)
            if agent.settled.is_set():
                what = (f"ended with exit code {agent.exit_code} before saying hello "
                        f"(started {agent.info.restarts + 1} times)")
            else:
                what = f"did not say hello within {timeout:.0f}s"
            raise RunnerError(f"runner {agent_id} {what}",
                              hint=f"run it by hand to see its error: {shlex.join(argv)}")
        return copy(agent.info)

    def _new_agent_id(self, persona: Persona) -> str:
        """``persona-N``, N one more than the agents this persona has had (a remote runner may
        have taken a name of that form: it is skipped)."""
        n = self._agent_counts.get(persona.id, 0) + 1
        while f"{persona.id}-{n}" in self.agents:
            n += 1
        self._agent_counts[persona.id] = n
        return f"{persona.id}-{n}"

    @staticmethod
    def _bad_persona(value) -> Persona:
        raise PersonaError(f"a persona id must be a string, got {type(value).__name__}",
                           hint="spawn('forge'), or see `timmy personas`")

    async def spawn_all(self, personas: Iterable[str] | None = None) -> list[AgentInfo]:
        """One runner per persona (all of the swarm's catalog by default), started together."""
        if isinstance(personas, str):
            raise PersonaError("spawn_all() takes a list of persona ids, got one string",
                               hint=f"use spawn({personas!r}) or spawn_all([{personas!r}])")
        ids = list(self.cfg.personas if personas is None else personas)
        for pid in ids:
            get_persona(pid, self.cfg.personas)
        results: dict[int, AgentInfo] = {}

        async def one(i: int, pid: str) -> None:
            results[i] = await self.spawn(pid)

        async with anyio.create_task_group() as tg:
            for i, pid in enumerate(ids):
                tg.start_soon(one, i, pid)
        return [results[i] for i in range(len(ids))]

    async def stop(self, agent_id: str) -> AgentInfo:
        agent = self._agent(agent_id)
        await self.supervisor.stop(agent_id)
        return copy(agent.info)

    def kill(self, agent_id: str) -> None:
        """SIGKILL an agent's runner process (it is restarted, its task re-auctioned); cut a
        remote runner's connection (it dials in again)."""
        self._agent(agent_id)
        self.supervisor.kill(agent_id)

    def _agent(self, agent_id: str) -> Agent:
        agent = self.agents.get(agent_id)
        if agent is None:
            raise ConfigError(f"no agent {agent_id!r} in this swarm",
                              hint=f"agents: {', '.join(self.agents) or '(none: spawn one)'}")
        return agent

    def infos(self, limit: int | None = None, after: str | None = None) -> list[AgentInfo]:
        """One page of agents by agent_id (`timmy.paging`): the first, or after ``after``."""
        ids = sorted(a for a in self.agents if after is None or a > after)
        return [copy(self.agents[a].info) for a in ids[:page_limit(limit)]]

    # -- remote runners -------------------------------------------------------
    async def serve_remote(self, persona_id: str, agent_id: str | None, stats: dict | None,
                           reader, writer, peer: str,
                           answer: Callable[[p.Welcome], Awaitable[None]]) -> None:
        """A runner that dialled in to the swarm service (``timmy runner --connect``).

        Admits it as ``agent_id`` (an agent it was before, or a new one; the service names
        it when it gives no id), ``answer``s it with what it needs to bid as a local runner
        would (the persona, the seed, the executor, the learned counters), then serves its
        connection until it ends. It is then one more runner: it bids, wins, is pinged, and
        when its connection drops its tasks are re-auctioned as after a crash. Raises
        `ConfigError` or `PersonaError`, before answering, when it cannot join.
        """
        self._check_open()
        persona = get_persona(persona_id, self.cfg.personas)
        agent = self.agents.get(agent_id) if agent_id else None
        if agent is None:
            learned = None if stats is None else BidStats.from_dict(stats, "the runner's stats")
            agent_id = agent_id or self._new_agent_id(persona)
            agent = Agent(AgentInfo(agent_id=agent_id, persona=persona.id, name=persona.name),
                          persona)
            if learned is not None:   # a runner back after a service restart: as it learned
                agent.stats = learned
            self.agents[agent_id] = agent
            self.supervisor.add_remote(agent_id)
        elif not self.supervisor.slots[agent_id].remote:
            raise ConfigError(f"{agent_id} is a runner this swarm started itself",
                              hint="give the remote runner another --agent-id, or none (the "
                                   "service then names it)")
        elif agent.persona.id != persona.id:
            raise ConfigError(f"{agent_id} is a {agent.persona.id} agent, not {persona.id}",
                              hint=f"connect as --persona {agent.persona.id}, or use another "
                                   "--agent-id")
        slot = self.supervisor.slots[agent_id]
        link = self.supervisor.connect(agent_id, reader, writer, peer)
        agent.info.peer = peer
        self.changed(agent)
        welcome = p.Welcome(**{   # the spec, the persona by its fields, the server not named
            **msgspec.structs.asdict(self.spec(agent_id, persona)),
            "persona": persona_fields(persona), "ollama_host": msgspec.UNSET,
            "stats": agent.stats.to_dict(),
            "ping_interval": self.cfg.ping_interval, "ping_timeout": self.cfg.ping_timeout})
        await self.supervisor.serve_remote(slot, link, answer(welcome))

    # -- a runner's hello -----------------------------------------------------
    def hello(self, agent: Agent, said: str, pid: int) -> bool:
        """A runner said hello on ``agent``'s pipe: it is live (joined, restarted or
        reconnected), and True. A hello naming another agent, or a second one from a live
        runner, is a bad line: False."""
        agent_id = agent.info.agent_id
        if said != agent_id:
            self.supervisor.bad_line(agent_id, p.ProtocolError(
                f"hello from {said!r} on {agent_id}'s pipe", hint=""))
            return False
        if agent.alive:
            self.supervisor.bad_line(agent_id, p.ProtocolError(
                f"a second hello from live runner {agent_id}", hint=""))
            return False
        first = not agent.ready.is_set()
        slot = self.supervisor.slots[agent_id]
        agent.alive = True
        agent.info.pid, agent.info.status = pid, "idle"
        agent.info.restarts = slot.restarts
        self.changed(agent)
        kind = "agent_joined" if first else \
            "agent_reconnected" if slot.remote else "agent_restarted"
        self.journal.emit(kind, None, agent_id, persona=agent.persona.id, pid=pid,
                          restarts=agent.info.restarts, **where(agent))
        agent.ready.set()
        agent.settled.set()
        return True

    # -- a runner's end -------------------------------------------------------
    def ended(self, agent: Agent, returncode: int | None, verdict: Verdict) -> None:
        """A runner's process ended or its connection dropped (the `Supervisor`'s
        ``verdict``): its agent is no longer live; a replacement, when there is one, starts
        with what this one had learned. Its tasks are the coordinator's to deal with, and
        then `report_end` says so."""
        agent_id = agent.info.agent_id
        agent.alive = False
        agent.exit_code = returncode
        restart = verdict is Verdict.RESTART
        if restart:
            self.supervisor.relaunch_with(agent_id, self.argv(agent_id, agent.persona,
                                                              agent.stats))
        agent.info.restarts = self.supervisor.slots[agent_id].restarts
        agent.info.status = _AGENT_STATUS[verdict]
        if verdict not in (Verdict.RESTART, Verdict.DISCONNECTED):
            agent.settled.set()
        agent.info.pid = agent.info.pid if restart else None

    def report_end(self, agent: Agent, returncode: int | None, verdict: Verdict) -> None:
        """After a runner's end was dealt with: its agent's row, and the event that says how
        it ended (with the delay before its restart)."""
        agent_id = agent.info.agent_id
        self.changed(agent)
        extra = {"restart_in_s": round(self.supervisor.slots[agent_id].next_delay, 3)} \
            if verdict is Verdict.RESTART else {}
        self.journal.emit(_EXIT_EVENT[verdict], None, agent_id, returncode=returncode,
                          **where(agent), **extra)
        if verdict is Verdict.FAILED:
            log.error("runner %s keeps dying: gave up after %d restarts", agent_id,
                      agent.info.restarts)
