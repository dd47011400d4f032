"""Uniform allocation: every target keeps the same fraction of its units."""
from __future__ import annotations

from typing import Dict, Mapping, Sequence

import torch

from ..registry import ALLOCATORS
from ..targets import Target
from .base import Allocator
from .budget import unit_cost


@ALLOCATORS.register("uniform")
class Uniform(Allocator):
    """keep_t = max(floor_t, round(d · n_t)), with d the kept fraction of the budget's measure."""

    def distribute(self, targets: Sequence[Target], scores: Mapping[str, torch.Tensor], keep_cost: float,
                   measure: str, floors: Mapping[str, int]) -> Dict[str, int]:
        total = sum(unit_cost(t, measure) * t.num_units for t in targets)
        density = keep_cost / total if total else 1.0
        return {t.name: max(floors[t.name], int(round(density * t.num_units))) for t in targets}
