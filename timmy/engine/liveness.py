"""Liveness: the awake clock, and the ping rounds that find hung runners, overdue hellos
and stalls of the service itself."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

import anyio

from timmy.engine import protocol as p
from timmy.engine.agents import Agent
from timmy.engine.config import Config
from timmy.engine.supervisor import Supervisor

log = logging.getLogger("timmy")

STALL_NOTICE = 1.0      # seconds the service itself may oversleep before it says so
_BOOTTIME = getattr(time, "CLOCK_BOOTTIME", None)   # Linux: counts through a system suspend


def _boottime() -> float:
    """A clock that goes on through a system suspend (CLOCK_MONOTONIC does not, on Linux);
    the monotonic clock where there is none."""
    return time.clock_gettime(_BOOTTIME) if _BOOTTIME is not None else time.monotonic()


class Heartbeat:
    """The awake clock of one coordinator, and its ping rounds (`run`).

    ``emit`` records an event (`Journal.emit`).
    """

    def __init__(self, cfg: Config, emit: Callable[..., int]) -> None:
        self.cfg, self._emit = cfg, emit
        self._slept = 0.0            # monotonic seconds the heartbeat found it overslept
        self._tick_due = math.inf    # when the heartbeat should wake next (monotonic)
        self._woke = -math.inf       # when it last noticed it had stalled (monotonic)

    def awake(self) -> float:
        """The awake clock: monotonic seconds minus those the service itself lost.

        A runner is hung only if it stayed silent while the service was awake (DESIGN.md,
        "Operating rules"), and a task's deadline counts only awake time too. The heartbeat
        knows when it should wake; whatever it sleeps past that (the process stopped, the
        machine suspended, the event loop blocked by a slow call) is time in which nobody
        could read the runners, so it does not count. While the heartbeat is overdue the
        clock stands still; when it wakes it books the lateness (`run`).
        """
        now = time.monotonic()
        return now - self._slept - max(0.0, now - self._tick_due)

    def just_woke(self) -> bool:
        """The service is coming out of a stall of its own: the heartbeat is overdue by more
        than STALL_NOTICE, or it noticed a stall within the last ping_interval."""
        now = time.monotonic()
        return (now - self._tick_due > STALL_NOTICE
                or now - self._woke < self.cfg.ping_interval)

    async def run(self, agents: dict[str, Agent], supervisor: Supervisor,
                  check_deadline: Callable[[Agent, float], None]) -> None:
        """Ping every live runner; one that stays silent past ping_timeout is restarted, and
        one that holds a task past its task_timeout is handed to ``check_deadline``.

        Both are judged on the awake clock (`awake`). A wake more than STALL_NOTICE late
        (by the monotonic clock, or by the boot-time clock, which also counts a system
        suspend) means the service itself stalled: it says so (a log line and a
        ``service_stalled`` event), gives every runner a fresh ping_timeout, and judges
        nobody this round, so that what the runners sent meanwhile is read first.
        """
        seq = 0
        interval = self.cfg.ping_interval
        self._tick_due = time.monotonic() + interval
        boot = _boottime()
        while True:
            await anyio.sleep(max(0.0, self._tick_due - time.monotonic()))
            now, boot_now = time.monotonic(), _boottime()
            late = max(0.0, now - self._tick_due)        # stopped, or the loop was blocked
            lost = max(late, boot_now - boot - interval)  # ... or the machine was suspended
            self._slept += late
            self._tick_due, boot = now + interval, boot_now
            seq += 1
            awake = self.awake()
            data = p.encode(p.Ping(seq=seq))
            if lost > STALL_NOTICE:
                self._woke = now
                log.warning("the service itself stalled for %.1fs (stopped, suspended or its "
                            "event loop blocked): its runners get a fresh %gs before any is "
                            "deemed hung", lost, self.cfg.ping_timeout)
                self._emit("service_stalled", None, None, stalled_s=round(lost, 3),
                           suspended_s=round(max(0.0, lost - late), 3))
                for agent_id, agent in agents.items():
                    agent.last_seen = awake
                    if agent.alive:
                        supervisor.send(agent_id, data)
                continue
            for agent_id, agent in list(agents.items()):
                if not agent.alive:
                    self._check_hello(agent, supervisor, awake)
                    continue
                if awake - agent.last_seen > self.cfg.ping_timeout:
                    silent = awake - agent.last_seen
                    log.warning("runner %s silent for %.0fs: restarting it", agent_id, silent)
                    self._emit("agent_hung", None, agent_id, silent_s=round(silent))
                    agent.last_seen = awake
                    supervisor.kill(agent_id)
                    continue
                supervisor.send(agent_id, data)
                if agent.head is not None:
                    check_deadline(agent, awake)

    def _check_hello(self, agent: Agent, supervisor: Supervisor, now: float) -> None:
        """Cut off a runner whose hello is overdue (``hello_timeout``; a restarted process
        stuck before it, a remote connection that handshook and went quiet): it is then
        restarted or dials in again, instead of holding its agent in "starting" or
        "restarting" for ever. Checked at every ping round."""
        agent_id = agent.info.agent_id
        slot = supervisor.slots.get(agent_id)
        link = slot.link if slot is not None else None
        if link is None or not link.open or slot.stopping:
            return
        if not slot.remote and not agent.ready.is_set():
            return          # a first start: spawn() waits for that hello with its timeout
        silent = now - link.since    # both on the awake clock: a stall of ours is not its silence
        if silent > self.cfg.hello_timeout:
            log.warning("runner %s said no hello in %.0fs: cutting it off", agent_id, silent)
            self._emit("agent_hung", None, agent_id, silent_s=round(silent), before_hello=True)
            link.cut()
