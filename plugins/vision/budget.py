"""Budgets for channel groups in parameters or MACs, exact to second order.

Removing a fraction of a convolution's input channels *and* of its output channels
shrinks it by the product of the kept fractions, so per-unit costs added up linearly
(the core's :class:`~sparsity_core.cost.LinearCost`) overcount the savings: at half the
channels everywhere they predict 100 % of the MACs gone where 75 % are.
:class:`ChannelCost` implements the core's cost-model protocol exactly: parameters and MACs
of the pruned network from the kept units of every group. :class:`ChannelBudget` is the
core's :class:`~sparsity_core.allocators.search.BudgetSearch` (bisection on the unit
sparsity of any core allocator: ``"global"`` ranks units of all groups together,
``"uniform"`` prunes every group by the same ratio) with channel rounding: kept counts are
multiples of ``round_to`` (8 by default: vectorised kernels run best on such widths); heads
are rounded so that ``heads × head_dim`` is.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Sequence, Tuple


from sparsity_core.allocators.base import Allocator
from sparsity_core.allocators.budget import Budget
from sparsity_core.allocators.search import BudgetSearch
from sparsity_core.cost import CostModel
from sparsity_core.registry import ALLOCATORS
from sparsity_core.validation import check_int

from .groups import ChannelGroup, ChannelGroups

log = logging.getLogger(__name__)


@dataclass
class _Entry:
    numel: int
    macs: float
    shape: Tuple[int, ...]
    cuts: Dict[int, List[Tuple[str, int, int]]] = field(default_factory=dict)  # dim -> (target, positions, units)


class ChannelCost(CostModel):
    """Exact parameters and MACs of the network for given kept units per group."""

    def __init__(self, groups: ChannelGroups) -> None:
        self.entries: Dict[str, _Entry] = {}
        model = groups.model
        for name, p in model.named_parameters():
            module = name.rsplit(".", 1)[0] if "." in name else ""
            macs = groups.module_macs.get(module, 0.0) if name.endswith("weight") else 0.0
            self.entries[name] = _Entry(p.numel(), macs, tuple(p.shape))
        for t in groups.targets:
            for s in t.slices:
                e = self.entries.get(s.tensor)
                if e is not None:
                    e.cuts.setdefault(s.dim, []).append((t.name, s.index.numel(), t.num_units))
        self.units = {t.name: t.num_units for t in groups.targets}
        self._dense = self.cost({})

    @property
    def dense(self) -> Dict[str, float]:
        return self._dense

    def cost(self, keep: Mapping[str, float]) -> Dict[str, float]:
        """``{"params": ..., "macs": ...}`` with ``keep[target]`` units kept (missing = all)."""
        params = macs = 0.0
        for e in self.entries.values():
            frac = 1.0
            for dim, cuts in e.cuts.items():
                removed = sum(pos * (1.0 - keep[t] / n) for t, pos, n in cuts if t in keep)
                frac *= max(0.0, 1.0 - removed / e.shape[dim])
            params += e.numel * frac
            macs += e.macs * frac
        return {"units": sum(float(keep.get(name, n)) for name, n in self.units.items()), "params": params,
                "macs": macs}


class ChannelBudget(BudgetSearch):
    """The core budget search with channel rounding and a record of the groups left at their floor."""

    def __init__(self, inner: Allocator, cost_model: ChannelCost, targets: Sequence[ChannelGroup],
                 round_to: int = 8, iterations: int = 40) -> None:
        super().__init__(inner, cost_model, iterations=iterations)
        self.round_to = check_int(round_to, "round_to", minimum=1)
        self._unit_size = {t.name: t.unit_size for t in targets}
        self.last_floored: List[str] = []

    def round_keep(self, targets, keep: Dict[str, int]) -> Dict[str, int]:
        out = {}
        for t in targets:
            k, n = keep[t.name], t.num_units
            step = self.round_to // math.gcd(self.round_to, self._unit_size.get(t.name, 1))
            if step > 1 and n >= step:
                k = max(step, int(math.floor(k / step + 0.5)) * step)
            out[t.name] = min(max(k, self.floor(t)), n)
        return out

    def allocate(self, targets, scores, budget: Budget) -> Dict[str, int]:
        """Kept units per group. A budget that would remove whole groups keeps every
        group's floor instead; the groups left at their floor are listed in
        ``last_floored`` and the shortfall is logged."""
        keep = super().allocate(targets, scores, budget)
        self.last_floored = sorted(t.name for t in targets
                                   if keep[t.name] <= self.floors([t])[t.name] and keep[t.name] < t.num_units)
        return keep

    def __repr__(self) -> str:
        return f"ChannelBudget({self.inner!r}, round_to={self.round_to})"


def channel_budget(inner: "str | Allocator", groups: ChannelGroups, round_to: int = 8) -> ChannelBudget:
    """Wrap ``inner`` (a registered allocator name or instance) for ``groups``."""
    alloc = ALLOCATORS.build(inner)
    if isinstance(alloc, type):
        alloc = alloc()
    if not isinstance(alloc, Allocator):
        raise TypeError(f"allocator must be one of {ALLOCATORS.names()} or an Allocator, got {type(alloc).__name__}")
    return ChannelBudget(alloc, ChannelCost(groups), groups.targets, round_to=round_to)
