"""timmy: a swarm of persona agents that win work in sealed-bid auctions.

``import timmy`` is cheap: names are loaded on first use, nothing starts at import.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_EXPORTS = {
    "PERSONAS": "personas",
    "Persona": "personas",
    "load_personas": "personas",
    "compute_bid": "bidding",
    "BidStats": "bidding",
    "Auction": "auction",
    "Bid": "auction",
    "Clearing": "auction",
    "TimmyError": "errors",
    "PersonaError": "errors",
    "ConfigError": "errors",
    "StoreError": "errors",
    "ProtocolError": "errors",
    "RunnerError": "errors",
    "TaskNotFound": "errors",
    "SwarmClosed": "errors",
    "ExecutorUnavailable": "errors",
    "VoiceUnavailable": "errors",
    "ExportError": "errors",
    "NoRunners": "errors",
    "QueueFull": "errors",
    "OwnershipLost": "errors",
    "WaitTimeout": "swarm",
    "Swarm": "swarm",
    "AsyncSwarm": "swarm",
    "Task": "models",
    "AgentInfo": "models",
    "Event": "models",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from . import doctor, voice
    from .auction import Auction, Bid, Clearing
    from .bidding import BidStats, compute_bid
    from .errors import (
        ConfigError,
        ExecutorUnavailable,
        ExportError,
        NoRunners,
        OwnershipLost,
        PersonaError,
        ProtocolError,
        QueueFull,
        RunnerError,
        StoreError,
        SwarmClosed,
        TaskNotFound,
        TimmyError,
        VoiceUnavailable,
    )
    from .models import AgentInfo, Event, Task
    from .personas import PERSONAS, Persona, load_personas
    from .swarm import AsyncSwarm, Swarm, WaitTimeout


# timmy.doctor is a callable module: timmy.doctor() runs the checks (see timmy/doctor.py).
_SUBMODULES = ("analytics", "doctor", "sim", "sweep", "replay", "voice", "widgets", "workload")


def __getattr__(name: str):
    if name in _SUBMODULES:  # timmy.sim, timmy.widgets ... without importing them up front
        value = importlib.import_module(f".{name}", __name__)
        globals()[name] = value
        return value
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'timmy' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
