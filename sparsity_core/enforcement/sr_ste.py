"""SR-STE: sparse-refined straight-through estimator (Zhou et al., 2021, "Learning N:M
Fine-grained Structured Sparse Neural Networks From Scratch", ICLR).

Forward with the mask, w̃ = m ⊙ w; the dense weights are updated with the straight-through
gradient plus a decay that pulls pruned weights toward zero:

    w ← w − η · ( ∂L/∂w̃ + λ · (1 − m) ⊙ w )

which damps the mask oscillation ("flip") that plain STE suffers. The paper uses λ = 2e-4.
"""
from __future__ import annotations

import torch

from ..registry import ENFORCEMENTS
from .base import weight_targets
from .straight_through import StraightThrough


@ENFORCEMENTS.register("sr_ste")
class SRSTE(StraightThrough):
    name = "sr_ste"

    def __init__(self, decay: float = 2e-4) -> None:
        super().__init__()
        if not decay >= 0:
            raise ValueError(f"SR-STE decay λ must be >= 0, got {decay!r}")
        self.decay = float(decay)

    @torch.no_grad()
    def before_optimizer_step(self, ctrl, optimizer) -> None:
        super().before_optimizer_step(ctrl, optimizer)  # the parameter now holds the dense w
        for t in weight_targets(ctrl, optimizer):
            if t.param.grad is not None and t.name in self.dense:
                pruned = 1.0 - self.factor(ctrl, t)
                t.param.grad.add_(self.dense[t.name] * pruned, alpha=self.decay)

    def __repr__(self) -> str:
        return f"SRSTE(decay={self.decay})"
