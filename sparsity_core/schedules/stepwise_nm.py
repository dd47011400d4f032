"""Stepwise N:M structure decay (Bambhaniya et al., 2024, progressive gradient flow, SDGF):
train through denser N:M patterns before the target one, e.g. dense → 4:8 → 2:8 → 1:8.

Stage k (0-based) starts at ``start_step + k·steps_per_stage`` and uses ``n_stages[k]:m``;
before ``start_step`` the weights are dense. ``value(step)`` is the sparsity 1 − n/m of the
current stage and ``layout_at(step)`` its N:M layout, which the controller installs on every
weight target before recomputing masks.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Tuple

from ..layouts import NM, Elements, UnitLayout
from ..registry import SCHEDULES
from ..validation import check_int
from .base import Schedule


@SCHEDULES.register("stepwise_nm")
@dataclass(kw_only=True)
class StepwiseNM(Schedule):
    m: int = 8
    n_stages: Tuple[int, ...] = field(default=(4, 2, 1))
    steps_per_stage: int = 1000

    def __post_init__(self) -> None:
        self.n_stages = tuple(self.n_stages)
        if not self.n_stages:
            raise ValueError("n_stages needs at least one N")
        for n in self.n_stages:
            NM(n, self.m)  # validates 0 < N < M
        if any(b >= a for a, b in zip(self.n_stages, self.n_stages[1:])):
            raise ValueError(f"n_stages must decrease (denser to sparser), got {self.n_stages}")
        self.steps_per_stage = check_int(self.steps_per_stage, "steps_per_stage", 1)
        self.end_step = self.start_step + (len(self.n_stages) - 1) * self.steps_per_stage
        super().__post_init__()

    def stage_at(self, step: int) -> Optional[int]:
        if step < self.start_step:
            return None
        return min(len(self.n_stages) - 1, (step - self.start_step) // self.steps_per_stage)

    def value(self, step: int) -> float:
        k = self.stage_at(step)
        return 0.0 if k is None else 1.0 - self.n_stages[k] / self.m

    def layout_at(self, step: int) -> UnitLayout:
        k = self.stage_at(step)
        return Elements() if k is None else NM(self.n_stages[k], self.m)

    def is_update_step(self, step: int, every: int = 1) -> bool:
        if step < self.start_step:
            return False
        offset = step - self.start_step
        if offset <= self.end_step - self.start_step and offset % self.steps_per_stage == 0:
            return True  # a new stage begins
        return offset % every == 0  # re-select within the stage (straight-through regimes)
