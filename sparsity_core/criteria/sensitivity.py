"""Gradient sensitivity (SPT: He et al., 2023, "Sensitivity-Aware Visual Parameter-Efficient
Fine-Tuning", ICCV; the diagonal empirical Fisher of Kirkpatrick et al., 2017).

Tuning entry ``e`` by one gradient step ``Δw_e = −ε·g_e`` lowers the loss by ``ε·g_e²`` to
first order, so the units worth tuning are those with the largest accumulated

    S_u = mean over observed steps of  Σ_{e∈u} g_e²

(gradients of the loss on the task's data at the pretrained weights; observed once per
optimizer step in training, or per calibration batch by ``one_shot_prune``'s gradient pass).
Unlike Taylor's ``(Σ g·w)²`` it does not vanish at ``w = 0``: an entry may matter to tune
whatever its current value.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..registry import CRITERIA
from ..targets import Target
from .base import AccumulatingCriterion, ScoreContext


def squared_gradient(w: torch.Tensor, g: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return None if g is None else g.float().pow(2)


@CRITERIA.register("sensitivity")
class Sensitivity(AccumulatingCriterion):
    def statistic(self, target: Target, context: ScoreContext) -> Optional[torch.Tensor]:
        return target.unit_reduce(squared_gradient, context)

    def score(self, target: Target, context: ScoreContext) -> torch.Tensor:
        return self.accumulated(target)

    def __repr__(self) -> str:
        return "Sensitivity()"
