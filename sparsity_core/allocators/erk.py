"""Erdős–Rényi-kernel densities (Evci et al., 2020, RigL; Liu et al., 2022, "The Unreasonable
Effectiveness of Random Pruning").

Target t with shape (n_out, n_in, k_1, ...) gets density  d_t = ε · (Σ dims) / (Π dims)
(for a matrix: ε·(n_in + n_out)/(n_in·n_out)), with ε chosen so the kept cost equals the
budget. Targets whose density would exceed 1 become dense and ε is solved again for the
rest; targets that would fall under their floor are held at the floor the same way.
Scores only decide *which* units a target keeps, not how many.
"""
from __future__ import annotations

from typing import Dict, Mapping, Sequence

import torch

from ..registry import ALLOCATORS
from ..targets import Target
from ..validation import check_positive
from .base import Allocator
from .budget import unit_cost


def erk_raw_density(shape: Sequence[int], power: float = 1.0) -> float:
    numel = 1
    for s in shape:
        numel *= s
    return (sum(shape) / numel) ** power if numel else 0.0


@ALLOCATORS.register("erk")
class ERK(Allocator):
    def __init__(self, power: float = 1.0, **kwargs) -> None:
        super().__init__(**kwargs)
        check_positive(power, "ERK power")
        self.power = power

    def densities(self, targets: Sequence[Target], keep_cost: float, measure: str,
                  floors: Mapping[str, int]) -> Dict[str, float]:
        cost = {t.name: unit_cost(t, measure) * t.num_units for t in targets}
        raw = {t.name: erk_raw_density(t.dims, self.power) for t in targets}
        lower = {t.name: floors[t.name] / t.num_units if t.num_units else 1.0 for t in targets}
        pinned: Dict[str, float] = {}
        while True:
            free = [t.name for t in targets if t.name not in pinned]
            rest = keep_cost - sum(pinned[n] * cost[n] for n in pinned)
            denom = sum(raw[n] * cost[n] for n in free)
            eps = rest / denom if denom > 0 else 0.0
            dense = [n for n in free if eps * raw[n] > 1.0]
            floored = [n for n in free if eps * raw[n] < lower[n]]
            if not dense and not floored:
                pinned.update({n: eps * raw[n] for n in free})
                return pinned
            # Saturated targets are pinned dense first; floors only once nothing saturates.
            pinned.update({n: 1.0 for n in dense} if dense else {n: lower[n] for n in floored})

    def distribute(self, targets: Sequence[Target], scores: Mapping[str, torch.Tensor], keep_cost: float,
                   measure: str, floors: Mapping[str, int]) -> Dict[str, int]:
        dens = self.densities(targets, keep_cost, measure, floors)
        return {t.name: int(round(dens[t.name] * t.num_units)) for t in targets}
