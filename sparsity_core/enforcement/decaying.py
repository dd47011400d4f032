"""Progressive gradient flow by mask decay (Bambhaniya et al., 2024, "Progressive Gradient
Flow for Robust N:M Sparsity Training in Transformers").

Pruned weights are multiplied by a factor β(t) that decays from 1 to 0 instead of being
zeroed at once. The forward pass uses

    w̃ = w ⊙ (m + (1 − m) · β(t))

and the dense weights receive the exact gradient of that product (pruned weights get
β(t)·∂L/∂w̃); add the SR-STE decay λ(1 − m) ⊙ w as a regime part:
``Regime(DecayingMask(...), SRSTE(λ))``. With p the progress from ``start_step`` to ``end_step``:

- ``linear``:       β = 1 − p
- ``exponential``:  β = (e^(−αp) − e^(−α)) / (1 − e^(−α))      (α = ``rate``, default 5)
- ``step``:         β = 1 − ⌊p · stages⌋ / stages

After ``end_step`` β = 0: plain masked training. Finalize zeroes the pruned weights.
"""
from __future__ import annotations

import math

import torch

from ..registry import ENFORCEMENTS
from ..targets import Target
from .base import weight_targets
from .straight_through import StraightThrough

DECAYS = ("linear", "exponential", "step")


@ENFORCEMENTS.register("decaying")
class DecayingMask(StraightThrough):
    name = "decaying"

    def __init__(self, decay: str = "linear", start_step: int = 0, end_step: int = 1000, stages: int = 4,
                 rate: float = 5.0) -> None:
        super().__init__()
        if decay not in DECAYS:
            raise ValueError(f"decay must be one of {', '.join(DECAYS)}; got {decay!r}")
        if not (isinstance(start_step, int) and isinstance(end_step, int) and 0 <= start_step < end_step):
            raise ValueError(f"need integers 0 <= start_step < end_step, got {start_step!r}, {end_step!r}")
        if not (isinstance(stages, int) and stages >= 1):
            raise ValueError(f"stages must be an int >= 1, got {stages!r}")
        if not rate > 0:
            raise ValueError(f"rate must be > 0, got {rate!r}")
        self.decay, self.start_step, self.end_step = decay, start_step, end_step
        self.stages, self.rate = stages, float(rate)

    def beta(self, step: int) -> float:
        p = min(1.0, max(0.0, (step - self.start_step) / (self.end_step - self.start_step)))
        if p >= 1.0:
            return 0.0
        if self.decay == "linear":
            return 1.0 - p
        if self.decay == "exponential":
            a = self.rate
            return (math.exp(-a * p) - math.exp(-a)) / (1.0 - math.exp(-a))
        return 1.0 - math.floor(p * self.stages) / self.stages

    def soft_factor(self, ctrl, target: Target) -> torch.Tensor:
        b = self.beta(max(ctrl.step, 0))
        m = self.factor(ctrl, target)
        return m if b == 0.0 else m * (1.0 - b) + b

    def write_forward_weight(self, ctrl, target: Target) -> None:
        torch.mul(self.dense[target.name], self.soft_factor(ctrl, target), out=target.param.data)

    @torch.no_grad()
    def before_optimizer_step(self, ctrl, optimizer) -> None:
        super().before_optimizer_step(ctrl, optimizer)
        for t in weight_targets(ctrl, optimizer):
            if t.param.grad is None or t.name not in self.dense:
                continue
            t.param.grad.mul_(self.soft_factor(ctrl, t))

    def __repr__(self) -> str:
        return (f"DecayingMask(decay={self.decay!r}, start_step={self.start_step}, end_step={self.end_step}, "
                f"stages={self.stages})")
