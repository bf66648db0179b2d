"""The values the public API hands out: `Task`, `AgentInfo`, `Event`, and the task states."""

from __future__ import annotations

from typing import Any

import msgspec

from timmy.market.lifecycle import (  # noqa: F401  (the task states, importable from here)
    ACTIVE_STATES,
    AGENT_WORKING_STATES,
    ASSIGNED,
    AWAITING_APPROVAL,
    BIDDING,
    CANCELLED,
    COMPLETED,
    FAILED,
    QUEUED,
    RUNNING,
    TASK_STATES,
    TERMINAL_STATES,
)


class Task(msgspec.Struct, kw_only=True):
    """A unit of work and where it stands. ``reason`` says why a task failed or was re-queued."""

    task_id: int
    description: str
    status: str = QUEUED
    assigned_agent: str | None = None
    price_sats: int | None = None
    attempts: int = 0
    result: str | None = None
    reason: str | None = None
    created_at: float = 0.0
    assigned_at: float | None = None
    completed_at: float | None = None

    @property
    def done(self) -> bool:
        return self.status in TERMINAL_STATES


class AgentInfo(msgspec.Struct, kw_only=True):
    """A persona agent and its runner process (``pid`` changes when the runner is replaced).

    ``status``: starting, idle, busy (holds tasks), restarting (its process died and is
    being replaced), disconnected (a remote runner lost its connection; it rejoins when it
    dials in again), stopped (on purpose), failed (died too often), lost (its coordinator
    ended without stopping it).

    ``peer`` is where a remote runner (``timmy runner --connect``) connects from, as
    ``host:port``, its ``pid`` then being a process id on that host; None for a runner this
    swarm started. It is not stored: the store's agents have no ``peer``.
    """

    agent_id: str
    persona: str
    name: str
    pid: int | None = None
    status: str = "starting"
    restarts: int = 0
    tasks_won: int = 0
    earned_sats: int = 0
    peer: str | None = None


class Event(msgspec.Struct, kw_only=True, frozen=True):
    """One thing that happened, in order: ``event_id`` grows by one per event."""

    event_id: int
    ts: float
    kind: str
    task_id: int | None = None
    agent_id: str | None = None
    data: dict[str, Any] = {}


def copy(value):
    """A detached copy of a model value (callers never share the engine's objects)."""
    return msgspec.structs.replace(value)
