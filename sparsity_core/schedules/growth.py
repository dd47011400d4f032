"""Growth to a budget: how many units (Gaussians) may exist at a step.

Taming 3DGS (Mallick et al., 2024, "Taming 3DGS: High-Quality Radiance Fields with Limited
Resources") grows a scene from ``S`` initial Gaussians to exactly ``B`` along a concave
curve: with ``t = x/N`` the fraction of densification steps done,

    count(t) = S + (B − S)·(2t − t²),

fast growth early (when the gradients say where detail is missing) and slow growth near the
budget. ``value(step)`` is the growth fraction ``2t − t²`` in [0, 1]; ``count(step)`` the
integer target, exactly ``S`` at and before ``start_step`` and exactly ``B`` at and after
``end_step``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..registry import SCHEDULES
from ..validation import check_int
from .base import Schedule


@SCHEDULES.register("growth_to_budget")
@dataclass(kw_only=True)
class GrowthToBudget(Schedule):
    initial_count: int = 0
    budget: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        self.initial_count = check_int(self.initial_count, "initial_count", 0)
        self.budget = check_int(self.budget, "budget", 1)
        if self.end_step == self.start_step:
            raise ValueError(f"growth needs end_step > start_step, got {self.start_step}..{self.end_step}")

    def value(self, step: int) -> float:
        t = self.progress(step)
        return 2.0 * t - t * t

    def count(self, step: int) -> int:
        """Target number of units at ``step`` (when growing, never above ``budget``)."""
        t = self.progress(step)
        if t >= 1.0:
            return self.budget
        grown = self.initial_count + (self.budget - self.initial_count) * (2.0 * t - t * t)
        return min(max(self.budget, self.initial_count), int(math.floor(grown + 1e-9)))
