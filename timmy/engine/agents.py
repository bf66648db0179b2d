"""An agent as the coordinator tracks it: its runner's state, the tasks it holds, what it
has learned."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import anyio

from timmy.market.bidding import BidStats, bid_range
from timmy.market.models import AGENT_WORKING_STATES, AgentInfo
from timmy.market.personas import Persona


@dataclass(eq=False)
class Agent:
    info: AgentInfo
    persona: Persona
    ready: anyio.Event = field(default_factory=anyio.Event)     # said hello at least once
    settled: anyio.Event = field(default_factory=anyio.Event)   # said hello, or gave up
    exit_code: int | None = None
    alive: bool = False
    tasks: dict[int, None] = field(default_factory=dict)   # held tasks, in assignment order
    last_seen: float = 0.0         # on the coordinator's awake clock (see Heartbeat.awake)
    head: int | None = None        # the first task it holds: the one it works on
    head_since: float = 0.0        # since when (awake clock): its task_timeout counts from here
    joined_at: float = field(default_factory=time.time)
    # What the runner has learned, mirrored from the auctions and results it took part
    # in, so a replacement process starts where the dead one left off.
    stats: BidStats = field(default_factory=BidStats)
    # The prices its persona's rule can bid, off-spec and on-spec (`bid_range`): a bid
    # outside them is refused (see `Auctions.bid`).
    bid_ranges: tuple[tuple[int, int], ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.bid_ranges = (bid_range(self.persona, False), bid_range(self.persona, True))


def where(agent: Agent) -> dict:
    """``peer`` for an event about a remote runner; nothing for a local one."""
    return {"peer": agent.info.peer} if agent.info.peer is not None else {}


def why_stalled(agents: Iterable[Agent], accepts_remote: bool) -> str | None:
    """Why no agent can work the unfinished tasks, or None.

    Stalled: no agent is live or on its way back (starting, restarting, a remote runner
    reconnecting), because every one was stopped or failed, or none was spawned. A
    swarm that remote runners can join (``timmy serve``) and that has no agents yet is
    waiting for them, not stalled.
    """
    agents = list(agents)
    if any(a.info.status in AGENT_WORKING_STATES for a in agents):
        return None
    if not agents:
        return None if accepts_remote else "no runner was spawned"
    failed = [a.info.agent_id for a in agents if a.info.status == "failed"]
    if not failed:
        return "every runner was stopped"
    named = ", ".join(failed[:3]) + (f" and {len(failed) - 3} more" if len(failed) > 3
                                     else "")
    was = "was" if len(failed) == 1 else "were"
    return f"every runner was stopped or failed ({named} kept dying and {was} given up on)"


def runner_counts(agents: Iterable[Agent]) -> dict:
    """The runners part of a swarm's status: live, free (holding no task), remote, and the
    agents by status."""
    agents = list(agents)
    by_state: dict[str, int] = {}
    for a in agents:
        by_state[a.info.status] = by_state.get(a.info.status, 0) + 1
    return {
        "runners_live": sum(a.alive for a in agents),
        "runners_free": sum(a.alive and not a.tasks for a in agents),
        "runners_remote": sum(a.alive and a.info.peer is not None for a in agents),
        "agents": by_state,
    }
