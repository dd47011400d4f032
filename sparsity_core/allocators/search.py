"""Meeting a budget exactly under a non-linear cost model: bisection on the unit sparsity.

:class:`BudgetSearch` wraps any allocator (global ranking, uniform, ...) and a
:class:`~sparsity_core.cost.CostModel`. For a budget in units it is the inner allocator.
For parameters or MACs it bisects the *unit* sparsity handed to the inner allocator until
the cost model says the kept network costs at most ``(1 − s)`` of the dense one (the largest
kept set that fits: ``iterations`` halvings of [0, 1]). Kept counts can be rounded (to a
kernel-friendly width) by :meth:`BudgetSearch.round_keep`; floors always hold. When even the
floors exceed the budget every target keeps its floor, and the shortfall is logged, not
raised: structured budgets are approximate at the floors by nature.
"""
from __future__ import annotations

import logging
from typing import Dict, Mapping, Sequence

import torch

from ..cost import CostModel
from ..ranks import log_rank_zero
from ..targets import Target
from ..validation import check_int
from .base import Allocator
from .budget import Budget

log = logging.getLogger(__name__)


class BudgetSearch(Allocator):
    def __init__(self, inner: Allocator, cost_model: CostModel, iterations: int = 40) -> None:
        super().__init__(inner.min_keep_fraction, inner.min_keep_units, 1)
        if not isinstance(cost_model, CostModel):
            raise TypeError(f"cost_model must be a CostModel, got {type(cost_model).__name__}")
        self.inner, self.cost_model = inner, cost_model
        self.iterations = check_int(iterations, "iterations", minimum=1)

    def round_keep(self, targets: Sequence[Target], keep: Dict[str, int]) -> Dict[str, int]:
        """Kept counts as the cost model will see them (default: floors applied)."""
        return {t.name: min(max(keep[t.name], self.floor(t)), t.num_units) for t in targets}

    def keep_at(self, targets: Sequence[Target], scores: Mapping[str, torch.Tensor], unit_sparsity: float) -> Dict[str, int]:
        keep = self.inner.allocate(targets, scores, Budget(sparsity=unit_sparsity, measure="units"))
        return self.round_keep(targets, keep)

    def floors(self, targets: Sequence[Target]) -> Dict[str, int]:
        return self.round_keep(targets, {t.name: self.floor(t) for t in targets})

    def allocate(self, targets: Sequence[Target], scores: Mapping[str, torch.Tensor], budget: Budget) -> Dict[str, int]:
        if budget.sparsity is None:
            raise ValueError("a budget search needs a sparsity budget (fraction of the measure removed)")
        measure = budget.measure
        if measure == "units":
            try:
                return self.keep_at(targets, scores, budget.sparsity)
            except ValueError:  # the floors alone exceed the budget
                log_rank_zero(log, logging.WARNING, "a budget of %.1f%% sparsity removes whole targets; every target keeps its floor",
                            100 * budget.sparsity)
                return self.floors(targets)
        limit = (1.0 - budget.sparsity) * self.cost_model.dense[measure]
        keep = self.keep_at(targets, scores, 0.0)
        if self.cost_model.cost(keep)[measure] <= limit:
            return keep
        lo, hi, keep = 0.0, 1.0, self.floors(targets)
        for _ in range(self.iterations):
            mid = (lo + hi) / 2
            try:
                trial = self.keep_at(targets, scores, mid)
            except ValueError:  # the floors cannot go this far
                hi = mid
                continue
            if self.cost_model.cost(trial)[measure] <= limit:
                hi, keep = mid, trial
            else:
                lo = mid
        got = self.cost_model.kept_fraction(keep, measure)
        if got > (1.0 - budget.sparsity) * (1 + 1e-3):
            log_rank_zero(log, logging.WARNING, "keeping %.1f%% of the %s needs more than the per-target floors allow; %.1f%% kept",
                        100 * (1 - budget.sparsity), measure, 100 * got)
        return keep

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.inner!r}, cost_model={type(self.cost_model).__name__})"
