"""Magnitude criteria (Han et al., 2015, "Learning both Weights and Connections").

Per unit u: L1 score Σ_{e∈u} |w_e|; L2 score (Σ_{e∈u} w_e²)^½. For element layouts both
rank weights by |w|.
"""
from __future__ import annotations

import torch

from ..registry import CRITERIA
from ..targets import Target
from .base import Criterion, ScoreContext


@CRITERIA.register("magnitude")
class Magnitude(Criterion):
    def __init__(self, p: int = 1) -> None:
        if p not in (1, 2):
            raise ValueError(f"magnitude norm p must be 1 or 2, got {p!r}")
        self.p = p

    def score(self, target: Target, context: ScoreContext) -> torch.Tensor:
        w = context.weight(target).to(torch.float32)
        if self.p == 1:
            return target.layout.reduce_sum(w.abs())
        return target.layout.reduce_sum(w * w).sqrt()

    def __repr__(self) -> str:
        return f"Magnitude(p={self.p})"


@CRITERIA.register("l1")
def _l1() -> Magnitude:
    return Magnitude(p=1)


@CRITERIA.register("l2")
def _l2() -> Magnitude:
    return Magnitude(p=2)
