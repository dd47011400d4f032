"""LAMP: layer-adaptive magnitude-based pruning (Lee et al., 2021, ICLR).

Within a target, sort the squared scores ascending, s_1² ≤ ... ≤ s_n²; the LAMP score of
unit u is   s_u² / Σ_{v ≥ u} s_v²   (its share of the mass of the units at least as large).
The largest unit of every target scores 1, so no layer is emptied; units are then ranked
globally as in :class:`GlobalRank`.
"""
from __future__ import annotations

import torch

from ..registry import ALLOCATORS
from ..targets import Target
from .global_rank import GlobalRank


def lamp_scores(scores: torch.Tensor) -> torch.Tensor:
    sq = scores.reshape(-1).double().pow(2)
    order = torch.argsort(sq, stable=True)
    sorted_sq = sq[order]
    tail = torch.flip(torch.cumsum(torch.flip(sorted_sq, [0]), 0), [0])
    out = torch.empty_like(sq)
    out[order] = sorted_sq / tail.clamp_min(torch.finfo(torch.float64).tiny)
    return out


@ALLOCATORS.register("lamp")
class LAMP(GlobalRank):
    def transform(self, target: Target, scores: torch.Tensor) -> torch.Tensor:
        return lamp_scores(scores)
