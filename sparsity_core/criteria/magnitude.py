"""Magnitude criteria (Han et al., 2015, "Learning both Weights and Connections").

Per unit u: L1 score Σ_{e∈u} |w_e|; L2 score (Σ_{e∈u} w_e²)^½. For element layouts both
rank weights by |w|. A unit is whatever the target says (an element, an N:M group, a row,
a coupled channel group spanning many tensors, an attention head): the criterion reads it
through :meth:`~sparsity_core.targets.Target.unit_reduce`. With ``normalize=True`` the
scores of a target are divided by their mean (DepGraph's group normalisation, Fang et al.,
2023), so one global ranking treats targets of different scale alike.
"""
from __future__ import annotations

import torch

from ..registry import CRITERIA
from ..targets import Target
from .base import Criterion, ScoreContext


@CRITERIA.register("magnitude")
class Magnitude(Criterion):
    def __init__(self, p: int = 1, normalize: bool = False) -> None:
        if p not in (1, 2):
            raise ValueError(f"magnitude norm p must be 1 or 2, got {p!r}")
        self.p, self.normalize = p, bool(normalize)

    def score(self, target: Target, context: ScoreContext) -> torch.Tensor:
        if self.p == 1:
            s = target.unit_reduce(lambda w, g: w.float().abs(), context)
        else:
            s = target.unit_reduce(lambda w, g: w.float() * w.float(), context).sqrt()
        if self.normalize:
            s = s / s.mean().clamp_min(1e-30)
        return s.float()

    def __repr__(self) -> str:
        return f"Magnitude(p={self.p}, normalize={self.normalize})"


@CRITERIA.register("l1")
def _l1() -> Magnitude:
    return Magnitude(p=1)


@CRITERIA.register("l2")
def _l2() -> Magnitude:
    return Magnitude(p=2)
