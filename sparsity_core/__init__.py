"""sparsity-suite core: targets, masks, criteria, allocators, schedules, enforcement.

``import sparsity_core`` imports torch but no Lightning and no plugin; the Lightning
callback is importable as ``sparsity_core.SparsityCallback`` (loaded on first access) or
from ``sparsity_core.lightning``.
"""
from __future__ import annotations

from typing import Any

from . import allocators, criteria, enforcement, schedules  # noqa: F401  (registers components)
from . import tickets  # noqa: F401  (registers the "concrete" criterion and the "cts" program)
from .allocators import ERK, LAMP, Allocator, Budget, GlobalRank, Uniform
from .controller import SparsityController
from .criteria import Criterion, Magnitude, Movement, RandomScores, ScoreContext, Taylor, Wanda
from .discovery import discover_targets
from .enforcement import (SRSTE, DecayingMask, Enforcement, HardMask, ProjectedL0, PruneRegrow, Regime, RegimePart,
                          SoftShrink, StraightThrough)
from .layouts import NM, Channels, Elements, Rows, UnitLayout
from .mask_program import MaskProgram, WeightSparsity
from .masks import MaskSet
from .observe import ActivationObserver, InputStats, observe
from .oneshot import OneShotResult, one_shot_prune
from .ops import append_rows, rebind_optimizer, replace_parameter, select_rows
from .program import Host, Program
from .registry import ALLOCATORS, CRITERIA, ENFORCEMENTS, LAYOUTS, SCHEDULES, Registry, UnknownNameError
from .schedules import (Constant, Cosine, Cubic, Exponential, FunctionSchedule, GrowthToBudget, Iterative, Linear,
                        Schedule, StepwiseNM, as_schedule, one_shot)
from .targets import Target

__version__ = "0.1.0"

__all__ = [
    "ALLOCATORS", "CRITERIA", "ENFORCEMENTS", "LAYOUTS", "SCHEDULES", "Allocator", "Budget", "Channels", "Constant",
    "Cosine", "Criterion", "Cubic", "ERK", "Elements", "Enforcement", "Exponential", "GlobalRank", "HardMask",
    "ProjectedL0",
    "Iterative", "LAMP", "Linear", "Magnitude", "MaskSet", "Movement", "NM", "RandomScores", "Registry", "Rows",
    "Schedule", "ScoreContext", "SparsityCallback", "SparsityController", "StraightThrough", "Target", "Taylor",
    "Uniform", "UnitLayout", "UnknownNameError", "discover_targets", "one_shot", "SRSTE", "DecayingMask",
    "PruneRegrow", "SoftShrink", "StepwiseNM", "Program", "Host", "MaskProgram", "WeightSparsity",
    "FunctionSchedule", "GrowthToBudget", "as_schedule", "ActivationObserver", "InputStats", "observe",
    "OneShotResult", "one_shot_prune", "Wanda", "append_rows", "rebind_optimizer", "replace_parameter",
    "select_rows", "Regime", "RegimePart",
]


def __getattr__(name: str) -> Any:
    if name == "SparsityCallback":
        from .lightning import SparsityCallback

        return SparsityCallback
    raise AttributeError(f"module 'sparsity_core' has no attribute {name!r}")
