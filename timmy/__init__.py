"""timmy: a swarm of persona agents that win work in sealed-bid auctions. ``import timmy`` is
cheap: names are loaded on first use, and nothing starts at import.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

from timmy import moved as _moved

_moved.install()  # old flat module paths (timmy.workload, timmy.store ...) keep importing

_EXPORTS = {
    "PERSONAS": "market.personas",
    "Persona": "market.personas",
    "load_personas": "storage.persona_files",
    "compute_bid": "market.bidding",
    "BidStats": "market.bidding",
    "Auction": "market.auction",
    "Bid": "market.auction",
    "Clearing": "market.auction",
    "register_mechanism": "market.mechanisms",
    "Award": "market.mechanisms",
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
    "WaitTimeout": "errors",
    "Swarm": "engine.swarm",
    "AsyncSwarm": "engine.swarm",
    "Task": "market.models",
    "AgentInfo": "market.models",
    "Event": "market.models",
    "register_verifier": "market.verification",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from timmy import doctor, voice
    from timmy.engine.swarm import AsyncSwarm, Swarm
    from timmy.errors import (
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
        WaitTimeout,
    )
    from timmy.market.auction import Auction, Bid, Clearing
    from timmy.market.bidding import BidStats, compute_bid
    from timmy.market.mechanisms import Award, register_mechanism
    from timmy.market.models import AgentInfo, Event, Task
    from timmy.market.personas import PERSONAS, Persona
    from timmy.market.verification import register_verifier
    from timmy.storage.persona_files import load_personas


# timmy.doctor is a callable module: timmy.doctor() runs the checks (see timmy/doctor/__init__.py).
_SUBMODULES = {"analytics": "analytics", "doctor": "doctor", "sim": "sim", "voice": "voice",
               "widgets": "widgets", "sweep": "sim.sweeps", "replay": "sim.replays",
               "workload": "sim.workloads"}


def __getattr__(name: str):
    if name in _SUBMODULES:  # timmy.sim, timmy.widgets ... without importing them up front
        value = importlib.import_module(f".{_SUBMODULES[name]}", __name__)
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
