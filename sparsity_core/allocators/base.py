"""Allocator interface: scores of many targets + one budget -> kept units per target.

Every allocator honours a per-target floor (``min_keep_fraction`` of the units, and at
least ``min_keep_units``; prevents layer collapse), targets whose layout fixes the kept
count (N:M), and an optional ``round_to`` (kept counts that are multiples of it). A budget
the floors cannot meet raises ``ValueError`` before any mask changes.
"""
from __future__ import annotations

import math
from typing import Dict, Mapping, Sequence

import torch

from ..targets import Target
from ..validation import check_int, check_range
from .budget import Budget, unit_cost


class Allocator:
    """Base class: subclasses implement :meth:`distribute`."""

    def __init__(self, min_keep_fraction: float = 0.0, min_keep_units: int = 1, round_to: int = 1) -> None:
        check_range(min_keep_fraction, "min_keep_fraction")
        check_int(min_keep_units, "min_keep_units", 0)
        check_int(round_to, "round_to", 1)
        self.min_keep_fraction = min_keep_fraction
        self.min_keep_units = min_keep_units
        self.round_to = round_to

    # -- the public entry point -------------------------------------------------------
    #: whether the budget decides the kept counts (an allocator with per-target sparsities of
    #: its own, like Sparse-IFT's, sets this to False: the budget is then not checked)
    follows_budget: bool = True

    def allocate(self, targets: Sequence[Target], scores: Mapping[str, torch.Tensor], budget: Budget) -> Dict[str, int]:
        """Kept units per target name."""
        self.check_targets(targets)
        fixed = {t.name: t.layout.fixed_keep(t.shape) for t in targets if t.layout.fixed_keep(t.shape) is not None}
        free = [t for t in targets if t.name not in fixed]
        keep_cost = 0.0
        floors = {t.name: self.floor(t) for t in free}
        if self.follows_budget:
            total = sum(unit_cost(t, budget.measure) * t.num_units for t in targets)
            keep_cost = budget.keep_cost(total)
            keep_cost -= sum(unit_cost(t, budget.measure) * fixed[t.name] for t in targets if t.name in fixed)
            self._check_floors(free, floors, keep_cost, budget.measure)
        keep = self.distribute(free, scores, keep_cost, budget.measure, floors) if free else {}
        keep = {t.name: self._round(keep[t.name], floors[t.name], t.num_units) for t in free}
        keep.update(fixed)
        return keep

    def check_targets(self, targets: Sequence[Target]) -> None:
        """Raise ``ValueError`` for targets this allocator cannot handle (default: none)."""

    @staticmethod
    def _check_floors(free: Sequence[Target], floors: Mapping[str, int], keep_cost: float, measure: str) -> None:
        floor_cost = sum(unit_cost(t, measure) * floors[t.name] for t in free)
        if floor_cost > keep_cost + 1e-6 * max(1.0, keep_cost):
            raise ValueError(
                f"infeasible budget: the per-target floors keep {floor_cost:.6g} {measure} but the "
                f"budget allows {max(keep_cost, 0):.6g}; lower min_keep_fraction/min_keep_units or the sparsity"
            )

    def floor(self, target: Target) -> int:
        n = target.num_units
        return min(n, max(self.min_keep_units, math.ceil(self.min_keep_fraction * n - 1e-9)))

    def _round(self, k: int, floor: int, n: int) -> int:
        k = max(int(k), floor)
        if self.round_to > 1 and n >= self.round_to:
            r = self.round_to
            k = max(r, int(math.floor(k / r + 0.5)) * r)
            if k < floor:  # rounding to the nearest multiple must not undercut the floor: the next one up
                k = -(-floor // r) * r
        return min(k, n)

    # -- what subclasses implement ----------------------------------------------------
    def distribute(
        self,
        targets: Sequence[Target],
        scores: Mapping[str, torch.Tensor],
        keep_cost: float,
        measure: str,
        floors: Mapping[str, int],
    ) -> Dict[str, int]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(min_keep_fraction={self.min_keep_fraction}, "
            f"min_keep_units={self.min_keep_units}, round_to={self.round_to})"
        )
