"""Cost models: what a network costs when each target keeps some of its units.

``cost(keep) -> {"units": ..., "params": ..., "macs": ...}`` with ``keep[target]`` the units
kept (a target missing from ``keep`` keeps all). The core allocators assume the first-order
model :class:`LinearCost`, where each unit carries a fixed cost; structured pruning is not
linear (removing a fraction of a convolution's inputs *and* of its outputs shrinks it by the
product of the kept fractions), so plugins implement :class:`CostModel` exactly (vision's
channel groups) and the core's budget search
(:class:`~sparsity_core.allocators.search.BudgetSearch`) and greedy knapsack
(:class:`~sparsity_core.allocators.knapsack.GreedyKnapsack`) meet a budget under any of them.
"""
from __future__ import annotations

from typing import Dict, Mapping, Sequence

import torch

from .targets import Target

MEASURES = ("units", "params", "macs")


class CostModel:
    """Base class: subclasses implement :meth:`cost`."""

    def cost(self, keep: Mapping[str, float]) -> Dict[str, float]:
        raise NotImplementedError

    @property
    def dense(self) -> Dict[str, float]:
        """The cost with every unit kept."""
        return self.cost({})

    def cost_of_masks(self, masks: Mapping[str, torch.Tensor]) -> Dict[str, float]:
        return self.cost({k: float(v.sum()) for k, v in masks.items()})

    def kept_fraction(self, keep: Mapping[str, float], measure: str) -> float:
        dense = self.dense[measure]
        return self.cost(keep)[measure] / dense if dense else 1.0


class LinearCost(CostModel):
    """``Σ_t c_t · keep_t``: every unit of target ``t`` costs ``c_t`` (its ``params_per_unit``,
    ``macs_per_unit``, or 1 for units)."""

    def __init__(self, targets: Sequence[Target]) -> None:
        self.units = {t.name: t.num_units for t in targets}
        self.per_unit = {t.name: {"units": 1.0, "params": float(t.params_per_unit or 0.0),
                                  "macs": float(t.macs_per_unit or 0.0)} for t in targets}

    def cost(self, keep: Mapping[str, float]) -> Dict[str, float]:
        out = dict.fromkeys(MEASURES, 0.0)
        for name, n in self.units.items():
            k = float(keep.get(name, n))
            for m in MEASURES:
                out[m] += self.per_unit[name][m] * k
        return out
