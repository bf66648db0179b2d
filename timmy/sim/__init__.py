"""Simulate a swarm with the live rules on a virtual clock; replay and sweep what was recorded;
compare variants in experiments with confidence intervals.
``import timmy.sim`` is cheap: each name loads its module on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_EXPORTS = {
    "simulate": "simulator", "SimRun": "simulator", "Simulator": "simulator",
    "replay": "replays", "replay_summary": "replays",
    "experiment": "experiments", "Experiment": "experiments",
    "sweep": "sweeps", "load_grid": "sweeps", "check_grid": "sweeps", "local_cluster": "sweeps",
    "Arrival": "workloads", "poisson_arrivals": "workloads", "bursts": "workloads",
    "demo_descriptions": "workloads", "demo_workload": "workloads", "keyword_mix": "workloads",
    "calibrate": "calibration", "summarize": "calibration", "CalibrationError": "calibration",
    "Model": "model", "PersonaModel": "model", "DurationFit": "model", "ArrivalModel": "model",
    "OverheadModel": "model", "ModelError": "model", "model_arrivals": "twin_draws",
    "plan": "plan", "CapacityPlan": "plan", "PlanError": "plan",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from timmy.sim.calibration import CalibrationError, calibrate, summarize
    from timmy.sim.experiments import Experiment, experiment
    from timmy.sim.model import (
        ArrivalModel,
        DurationFit,
        Model,
        ModelError,
        OverheadModel,
        PersonaModel,
    )
    from timmy.sim.plan import CapacityPlan, PlanError, plan
    from timmy.sim.replays import replay, replay_summary
    from timmy.sim.simulator import SimRun, Simulator, simulate
    from timmy.sim.sweeps import check_grid, load_grid, local_cluster, sweep
    from timmy.sim.twin_draws import model_arrivals
    from timmy.sim.workloads import (
        Arrival,
        bursts,
        demo_descriptions,
        demo_workload,
        keyword_mix,
        poisson_arrivals,
    )


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'timmy.sim' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
