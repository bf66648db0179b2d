"""An agent as the coordinator tracks it: its runner's state, the tasks it holds, what it
has learned."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import anyio

from timmy.market.bidding import BidStats, bid_range
from timmy.market.models import AgentInfo
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
    # outside them is refused (see `Coordinator._on_bid`).
    bid_ranges: tuple[tuple[int, int], ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.bid_ranges = (bid_range(self.persona, False), bid_range(self.persona, True))


def where(agent: Agent) -> dict:
    """``peer`` for an event about a remote runner; nothing for a local one."""
    return {"peer": agent.info.peer} if agent.info.peer is not None else {}
