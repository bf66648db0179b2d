"""The swarm's open auctions: opening and announcing them, judging bids, the bidding
window, clearing them and recording their bids."""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass

import anyio

from timmy.engine import protocol as p
from timmy.engine.agents import Agent
from timmy.engine.config import Config
from timmy.engine.journal import Journal
from timmy.engine.supervisor import Supervisor
from timmy.market.auction import RULES, Auction, Bid, Clearing
from timmy.market.mechanisms import MECHANISM_FAILED
from timmy.market.models import BIDDING, Task
from timmy.market.personas import Words
from timmy.market.strategies import record_auction

log = logging.getLogger(__name__)

@dataclass(eq=False)
class OpenAuction:
    auction: Auction
    task: Task
    attempt: int
    deadline: float
    auction_id: int = 0    # the event_id of its auction_opened event: unique per auction
    words: Words | None = None   # the description split once, for judging every bid (bid)


class Auctions:
    """The auctions a coordinator has open, by task id (``open``); it holds the same
    ``agents`` dict.

    An auction opens for a queued task with every live runner eligible (but those whose
    result for it failed verification: the coordinator leaves them out) and is announced
    to them in one write per batch; it closes when every eligible runner has bid or
    declined, or when its window (``auction_window`` on the ``awake`` clock) ends
    (`run_windows`). `clear` picks the winner among the bidders with room in their queues,
    records every bid and tells the bidders; what the task then becomes (assigned, or
    queued again) is the coordinator's. The `Supervisor` is handed over when the
    coordinator starts.

    Concurrency: every live runner bids in every auction, busy or not. A runner may
    hold up to ``runner_queue`` tasks (one running, the rest waiting in its own
    queue); the rule picks the winner among the bids of runners that still have
    room, so under a backlog specialists keep their own work until their queues
    fill and only the overflow goes to the next-best bidder. As many auctions stay
    open as there is room in all queues (the coordinator's ``_pump``). With no bid from
    a runner with room, the task goes back to the front of the queue without using an
    attempt. Posting tasks one at a time gives every auction every runner with empty
    queues, which is what makes a live run and a simulation of the same work pick the
    same winners.
    """

    def __init__(self, config: Config, agents: dict[str, Agent], journal: Journal,
                 awake: Callable[[], float]) -> None:
        self.cfg, self.agents, self.journal, self._awake = config, agents, journal, awake
        self.open: dict[int, OpenAuction] = {}
        self.supervisor: Supervisor | None = None
        self.refused = 0      # bids outside their persona's range (see bid)
        self.accepted = [0, 0]   # bids accepted into auctions: [off-spec, on-spec]
        # agent_id -> reliability in [0, 1] for the mechanisms that use it; empty (everyone
        # 1.0) until agents have a reputation (issue 14, point 5, sets it here)
        self.reputation: Mapping[str, float] = {}
        self._deadlines: deque[OpenAuction] = deque()
        self._wake = anyio.Event()

    def begin(self, task: Task, live: list[str], deadline: float) -> OpenAuction:
        """Open an auction for ``task`` among the ``live`` runners (announced by `announce`)."""
        attempt = task.attempts + 1
        open_ = OpenAuction(Auction(task.task_id, live, self.cfg.rule,
                                    description=task.description), task, attempt, deadline)
        self.open[task.task_id] = open_
        self._deadlines.append(open_)
        task.status = BIDDING
        self.journal.task_changed(task)
        open_.auction_id = self.journal.emit("auction_opened", task.task_id, attempt=attempt,
                                             eligible=len(live))
        return open_

    def announce(self, opened: list[OpenAuction], live: list[str]) -> None:
        """Tell every live runner of the auctions just opened, in one write each."""
        self._wake.set()
        lines = [p.encode(p.Announce(task_id=o.task.task_id, description=o.task.description,
                                     attempt=o.attempt)) for o in opened]
        if all(len(o.auction.eligible) == len(live) for o in opened):
            data = b"".join(lines)
            for aid in live:
                self.supervisor.send(aid, data)
            return
        # Some auction excludes runners (their result for that task failed verification):
        # each runner hears only of the auctions it may bid in.
        for aid in live:
            mine = b"".join(line for o, line in zip(opened, lines, strict=True)
                            if aid in o.auction.eligible)
            if mine:
                self.supervisor.send(aid, mine)

    async def run_windows(self, ended: Callable[[OpenAuction], None]) -> None:
        """Forever: call ``ended`` for each auction still open when its window ends."""
        while True:
            if not self._deadlines:
                await self._wake.wait()
                self._wake = anyio.Event()
                continue
            open_ = self._deadlines[0]
            if self.open.get(open_.task.task_id) is not open_:
                self._deadlines.popleft()
                continue
            delay = open_.deadline - self._awake()
            if delay > 0:
                await anyio.sleep(delay)
                continue
            self._deadlines.popleft()
            ended(open_)

    def bid(self, agent: Agent, open_: OpenAuction, sats: int) -> bool:
        """A runner's bid, judged by what the service knows rather than by the runner's
        word; True when the auction is now complete (every eligible runner answered).

        Whether the task is on the persona's speciality is decided here, from the persona
        the service holds (not one a runner describes) and the task's description, with
        the keyword match `quote` uses: the runner's ``on_spec`` is ignored, so live runs
        and the simulator still agree. A price the persona's rule cannot make for such a
        task (`bid_range`) is dropped as a bad line: logged with the runner's id, counted
        (``protocol_errors`` and ``bids_refused``), a ``protocol_error`` event, and a runner
        that keeps at it is cut off as one sending garbage is. The auction goes on without
        it (as if it had declined, so it does not wait for the window to end).
        """
        agent_id, task = agent.info.agent_id, open_.task
        if open_.words is None:
            open_.words = Words.of(task.description)
        on_spec = bool(agent.persona.matched_in(open_.words))
        lo, hi = agent.bid_ranges[on_spec]
        if not lo <= sats <= hi:
            self.refused += 1
            pid = agent.persona.id
            self.supervisor.bad_line(agent_id, p.ProtocolError(
                f"bid of {sats} sats for task {task.task_id} "
                f"({'on' if on_spec else 'off'}-spec for {pid}) is outside {pid}'s range "
                f"{lo}..{hi}: refused", hint="bid what timmy.market.bidding.quote prices"))
            return open_.auction.decline(agent_id) and open_.auction.complete
        if open_.auction.submit(Bid(agent_id, sats, on_spec)):
            self.accepted[on_spec] += 1
            self.journal.emit("bid", task.task_id, agent_id, sats=sats, on_spec=on_spec,
                              attempt=open_.attempt)
            return open_.auction.complete
        return False

    def withdraw(self, agent_id: str) -> Iterator[OpenAuction]:
        """A runner is gone: its bids leave every open auction (recorded as lost); yields
        each auction that is then complete, one at a time, for the caller to close."""
        for open_ in list(self.open.values()):
            if agent_id in open_.auction.eligible:
                gone = open_.auction.bids.get(agent_id)
                if gone is not None:
                    self.record(open_, [gone], None)
                open_.auction.withdraw(agent_id)
                if open_.auction.complete:
                    yield open_

    def record(self, open_: OpenAuction, bids: Iterable[Bid], winner: str | None) -> None:
        """Write an auction's bids: at its close, or when a bidder or the auction went away."""
        now = time.time()
        tid, attempt, aid, rule = open_.task.task_id, open_.attempt, open_.auction_id, self.cfg.rule
        self.journal.batch.bids.extend((tid, attempt, aid, b.agent_id, b.sats, b.on_spec,
                                        b.agent_id == winner, rule, now) for b in bids)

    def clear(self, open_: OpenAuction, reason: str) -> Clearing:
        """Close an auction: its winner among the bidders still live with room in their
        queues, its bids recorded, an ``auction_closed`` event, every bidder told."""
        task, auction = open_.task, open_.auction
        tid = task.task_id
        del self.open[tid]
        cap = self.cfg.runner_queue
        unavailable = [a for a in auction.bids
                       if not self.agents[a].alive or len(self.agents[a].tasks) >= cap]
        clearing = auction.close(unavailable=unavailable, reputation=self.reputation)
        winner = clearing.winner
        self.record(open_, auction.bids.values(), winner)
        # A mechanism is handed the bidders' reliability: it goes with the event (rounded as
        # the inspector shows it), so "why this bid won" reads the same from the stored data.
        terms = {} if self.cfg.rule in RULES else {"reliability": {
            a: round(float(self.reputation.get(a, 1.0)), 4) for a in sorted(auction.bids)}}
        self.journal.emit("auction_closed", tid, winner, price_sats=clearing.price_sats,
                          rule=self.cfg.rule, why=clearing.reason, bids=len(auction.bids),
                          closed_by=reason, attempt=open_.attempt, **terms)
        if clearing.error is not None:   # the coordinator re-queues the task
            log.warning("clearing mechanism %r failed on task %s (attempt %s): %s",
                        self.cfg.rule, tid, open_.attempt, clearing.error)
            self.journal.emit(MECHANISM_FAILED, tid, rule=self.cfg.rule, error=clearing.error,
                              attempt=open_.attempt)
        self._tell_bidders(open_, winner, clearing.price_sats)
        return clearing

    def cancel(self, task_id: int) -> None:
        """The task of an open auction was cancelled: the auction ends with no winner."""
        open_ = self.open.pop(task_id)
        self.record(open_, open_.auction.bids.values(), None)
        self._tell_bidders(open_, None, None)

    def _tell_bidders(self, open_: OpenAuction, winner: str | None, price: int | None) -> None:
        bids = open_.auction.bids
        if not bids:
            return
        data = p.encode(p.AuctionClosed(task_id=open_.task.task_id, winner=winner,
                                        price_sats=price))
        for aid, bid in bids.items():
            self.supervisor.send(aid, data)
            agent = self.agents[aid]   # its counters and its strategy learn as its runner does
            record_auction(agent.persona, agent.stats, aid == winner, bid.sats, bid.on_spec,
                           price)
