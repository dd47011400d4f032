"""Gradual schedules from an initial to a final sparsity between two optimizer steps.

With progress t = (step − start_step)/(end_step − start_step) clipped to [0, 1]:

- linear:       s = s_i + (s_f − s_i)·t
- cubic:        s = s_f + (s_i − s_f)·(1 − t)³        (Zhu & Gupta, 2017, "To prune, or not
                to prune"; gradual magnitude pruning)
- exponential:  density decays geometrically, 1 − s = (1 − s_i)·((1 − s_f)/(1 − s_i))^t
- cosine:       s = s_i + (s_f − s_i)·(1 − cos πt)/2
"""
from __future__ import annotations

from dataclasses import dataclass

from ..registry import SCHEDULES
from .base import Ramp, cosine_shape


@SCHEDULES.register("linear")
@dataclass(kw_only=True)
class Linear(Ramp):
    def shape(self, t: float) -> float:
        return t


@SCHEDULES.register("cubic")
@dataclass(kw_only=True)
class Cubic(Ramp):
    def shape(self, t: float) -> float:
        return 1.0 - (1.0 - t) ** 3


@SCHEDULES.register("exponential")
@dataclass(kw_only=True)
class Exponential(Ramp):
    def value(self, step: int) -> float:
        t = self.progress(step)
        d_i, d_f = 1.0 - self.initial, 1.0 - self.final_sparsity
        if t >= 1.0:
            return float(self.final_sparsity)
        if t <= 0.0:  # exactly the configured value, not 1 - (1 - initial) (one ulp off for many)
            return float(self.initial)
        lo, hi = sorted((float(self.initial), float(self.final_sparsity)))
        return min(max(1.0 - d_i * (d_f / d_i) ** t, lo), hi)  # rounding never leaves [initial, final]


@SCHEDULES.register("cosine")
@dataclass(kw_only=True)
class Cosine(Ramp):
    def shape(self, t: float) -> float:
        return cosine_shape(t)
