"""Old module paths from before the layer packages, still importable with a `DeprecationWarning`."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings

#: The flat module names of timmy 0.1 and where each lives now. (``timmy.service`` is the
#: service package now; the old module is `timmy.service.server`.)
MOVED = {
    "personas": "market.personas", "bidding": "market.bidding", "auction": "market.auction",
    "models": "market.models",
    "store": "storage.store", "dburl": "storage.address", "ownership": "storage.ownership",
    "export": "storage.export", "quarantine": "storage.quarantine", "private": "storage.private",
    "protocol": "engine.protocol", "runner": "engine.runner", "executors": "engine.executors",
    "supervisor": "engine.supervisor", "coordinator": "engine.coordinator",
    "swarm": "engine.swarm", "procid": "engine.procid",
    "client": "service.client", "remote": "service.remote",
    "heap": "service.heap",
    "simfast": "sim.compiled", "replay": "sim.replays", "sweep": "sim.sweeps",
    "workload": "sim.workloads",
    "cli_doctor": "cli.doctor", "cli_runner": "cli.runner", "cli_service": "cli.service",
    "cli_sim": "cli.sim",
    "launcher": "ops.launcher", "voila_kernels": "ops.voila_kernels", "browser": "ops.browser",
    "chaos": "ops.chaos",
}


class MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds ``timmy.<old name>`` and hands back the module that now holds it.

    ``import timmy.workload`` then *is* ``timmy.sim.workloads`` (the same object, so a
    monkeypatch through either name is seen by both), after a warning naming the new path.
    Only the names in `MOVED` are claimed; everything else is left to the normal finders.
    """

    def find_spec(self, fullname, path=None, target=None):
        prefix, _, name = fullname.partition(".")
        if prefix != "timmy" or name not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec):
        return None  # a throwaway module: exec_module puts the real one in its place

    def exec_module(self, module) -> None:
        new = f"timmy.{MOVED[module.__name__.partition('.')[2]]}"
        warnings.warn(f"{module.__name__} moved to {new}; import it from there",
                      DeprecationWarning, stacklevel=2)
        sys.modules[module.__name__] = importlib.import_module(new)


def install() -> None:
    """Put the finder on `sys.meta_path` once (``import timmy`` does this; it costs no I/O)."""
    if not any(isinstance(f, MovedModules) for f in sys.meta_path):
        sys.meta_path.append(MovedModules())
