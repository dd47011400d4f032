"""First-order Taylor importance (Molchanov et al., 2019, "Importance Estimation for Neural
Network Pruning"): the squared first-order change of the loss when a unit is removed,

    I_u = ( Σ_{e∈u} g_e · w_e )²,

averaged over the optimizer steps observed since the last mask update."""
from __future__ import annotations

from typing import Optional

import torch

from ..registry import CRITERIA
from ..targets import Target
from .base import AccumulatingCriterion, ScoreContext


def grad_times_weight(w: torch.Tensor, g: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """``g ⊙ w`` (the gradient with respect to a gate on the unit), ``None`` without a gradient."""
    return None if g is None else g.float() * w.float()


@CRITERIA.register("taylor")
class Taylor(AccumulatingCriterion):
    def statistic(self, target: Target, context: ScoreContext) -> Optional[torch.Tensor]:
        gw = target.unit_reduce(grad_times_weight, context)
        return None if gw is None else gw.pow(2)

    def score(self, target: Target, context: ScoreContext) -> torch.Tensor:
        return self.accumulated(target)

    def __repr__(self) -> str:
        return "Taylor()"
