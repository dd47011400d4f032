"""First-order Taylor importance (Molchanov et al., 2019, "Importance Estimation for Neural
Network Pruning"): the squared first-order change of the loss when a unit is removed,

    I_u = ( Σ_{e∈u} g_e · w_e )²,

averaged over the optimizer steps observed since the last mask update."""
from __future__ import annotations

import torch

from ..registry import CRITERIA
from ..targets import Target
from .base import AccumulatingCriterion, ScoreContext


@CRITERIA.register("taylor")
class Taylor(AccumulatingCriterion):
    def statistic(self, target: Target, weight: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        return target.layout.reduce_sum(grad.float() * weight.float()).pow(2)

    def score(self, target: Target, context: ScoreContext) -> torch.Tensor:
        return self.accumulated(target)

    def __repr__(self) -> str:
        return "Taylor()"
