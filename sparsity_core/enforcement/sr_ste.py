"""SR-STE: sparse-refined straight-through estimator (Zhou et al., 2021, "Learning N:M
Fine-grained Structured Sparse Neural Networks From Scratch", ICLR).

Forward with the mask, w̃ = m ⊙ w; the dense weights are updated with the straight-through
gradient plus a decay that pulls pruned weights toward zero:

    w ← w − η · ( ∂L/∂w̃ + λ · (1 − m) ⊙ w )

which damps the mask oscillation ("flip") that plain STE suffers. The paper uses λ = 2e-4.

A regime part (a gradient rule): alone it runs on straight-through masking; with another
action or other parts, compose it, e.g. ``Regime(DecayingMask(...), SRSTE(2e-4))`` or
``Regime(StraightThrough(), SRSTE(), PruneRegrow("gradient", ...))``.
"""
from __future__ import annotations

import torch

from ..registry import ENFORCEMENTS
from ..validation import check_nonnegative
from .base import Enforcement, weight_targets
from .regime import RegimePart
from .straight_through import StraightThrough


@ENFORCEMENTS.register("sr_ste")
class SRSTE(RegimePart):
    name = "sr_ste"

    def __init__(self, decay: float = 2e-4) -> None:
        self.decay = check_nonnegative(decay, "SR-STE decay λ")

    def default_action(self) -> Enforcement:
        return StraightThrough()

    @torch.no_grad()
    def adjust_gradients(self, regime, ctrl, optimizer) -> None:
        for t in weight_targets(ctrl, optimizer):  # the action put the dense w in the parameter
            if t.param.grad is not None:
                pruned = 1.0 - regime.factor(ctrl, t)
                t.param.grad.add_(regime.dense_weight(t) * pruned, alpha=self.decay)

    def __repr__(self) -> str:
        return f"SRSTE(decay={self.decay})"
