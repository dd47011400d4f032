"""Movement pruning (Sanh et al., 2020, "Movement Pruning: Adaptive Sparsity by Fine-Tuning"):
weights moving away from zero are kept. The score accumulates

    S_u = − Σ_t Σ_{e∈u} w_e^(t) · g_e^(t)

over the optimizer steps observed since the last mask update (higher = keep)."""
from __future__ import annotations

import torch

from ..registry import CRITERIA
from ..targets import Target
from .base import AccumulatingCriterion, ScoreContext


@CRITERIA.register("movement")
class Movement(AccumulatingCriterion):
    def statistic(self, target: Target, weight: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        return -target.layout.reduce_sum(grad.float() * weight.float())

    def score(self, target: Target, context: ScoreContext) -> torch.Tensor:
        self.accumulated(target)  # raises when nothing was observed
        return self._sums[target.name].clone()  # a sum over steps, as in the paper

    def __repr__(self) -> str:
        return "Movement()"
