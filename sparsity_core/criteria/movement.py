"""Movement pruning (Sanh et al., 2020, "Movement Pruning: Adaptive Sparsity by Fine-Tuning"):
weights moving away from zero are kept. The score accumulates

    S_u = − Σ_t Σ_{e∈u} w_e^(t) · g_e^(t)

over the optimizer steps observed since the last mask update (higher = keep)."""
from __future__ import annotations

from typing import Optional

import torch

from ..registry import CRITERIA
from ..targets import Target
from .base import AccumulatingCriterion, ScoreContext
from .taylor import grad_times_weight


@CRITERIA.register("movement")
class Movement(AccumulatingCriterion):
    def statistic(self, target: Target, context: ScoreContext) -> Optional[torch.Tensor]:
        gw = target.unit_reduce(grad_times_weight, context)
        return None if gw is None else -gw

    def score(self, target: Target, context: ScoreContext) -> torch.Tensor:
        self.accumulated(target)  # raises when nothing was observed
        return self._sums[target.name].clone()  # a sum over steps, as in the paper

    def __repr__(self) -> str:
        return "Movement()"
