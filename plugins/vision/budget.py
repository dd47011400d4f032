"""Budgets for channel groups in parameters or MACs, exact to second order.

Removing a fraction of a convolution's input channels *and* of its output channels
shrinks it by the product of the kept fractions, so per-unit costs added up linearly
(what the core allocators use) overcount the savings: at half the channels everywhere they
predict 100 % of the MACs gone where 75 % are. :class:`CostModel` computes the exact
parameters and MACs of the pruned network from the kept units of every group, and
:class:`ChannelBudget` wraps any core allocator (``"global"`` ranks units of all groups
together, ``"uniform"`` prunes every group by the same ratio) and bisects the unit sparsity
it is given until the exact cost meets the budget. Kept channel counts are rounded to a
multiple of ``round_to`` (8 by default: vectorised kernels run best on such widths); heads
are rounded so that ``heads × head_dim`` is.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Sequence, Tuple

import torch

from sparsity_core.allocators.base import Allocator
from sparsity_core.allocators.budget import Budget
from sparsity_core.registry import ALLOCATORS

from .groups import ChannelGroup, ChannelGroups

log = logging.getLogger(__name__)


@dataclass
class _Entry:
    numel: int
    macs: float
    shape: Tuple[int, ...]
    cuts: Dict[int, List[Tuple[str, int, int]]] = field(default_factory=dict)  # dim -> (target, positions, units)


class CostModel:
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
        self.dense = self.cost({})

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
        return {"params": params, "macs": macs}

    def cost_of_masks(self, masks: Mapping[str, torch.Tensor]) -> Dict[str, float]:
        return self.cost({k: float(v.sum()) for k, v in masks.items()})


class ChannelBudget(Allocator):
    """A core allocator made exact for parameter/MAC budgets and rounded for kernels."""

    def __init__(self, inner: Allocator, cost_model: CostModel, targets: Sequence[ChannelGroup],
                 round_to: int = 8, iterations: int = 40) -> None:
        super().__init__(inner.min_keep_fraction, inner.min_keep_units, 1)
        if not (isinstance(round_to, int) and round_to >= 1):
            raise ValueError(f"round_to must be an int >= 1, got {round_to!r}")
        self.inner, self.cost_model, self.iterations = inner, cost_model, iterations
        self.round_to = round_to
        self._unit_size = {t.name: t.unit_size for t in targets}
        self.last_floored: List[str] = []

    def _rounded(self, targets, keep: Dict[str, int]) -> Dict[str, int]:
        out = {}
        for t in targets:
            k, n = keep[t.name], t.num_units
            step = self.round_to // math.gcd(self.round_to, self._unit_size.get(t.name, 1))
            if step > 1 and n >= step:
                k = max(step, int(math.floor(k / step + 0.5)) * step)
            out[t.name] = min(max(k, self.floor(t)), n)
        return out

    def _keep_at(self, targets, scores, unit_sparsity: float) -> Dict[str, int]:
        keep = self.inner.allocate(targets, scores, Budget(sparsity=unit_sparsity, measure="units"))
        return self._rounded(targets, keep)

    def _floors(self, targets) -> Dict[str, int]:
        return self._rounded(targets, {t.name: self.floor(t) for t in targets})

    def allocate(self, targets, scores, budget: Budget) -> Dict[str, int]:
        """Kept units per group. A budget that would remove whole groups keeps every
        group's floor instead; the groups left at their floor are listed in
        ``last_floored`` and the shortfall is logged."""
        measure = budget.measure
        if measure == "units":
            try:
                keep = self._keep_at(targets, scores, budget.sparsity)
            except ValueError:  # the floors alone exceed the budget
                keep = self._floors(targets)
                log.warning("channel budget of %.1f%% sparsity removes whole groups; every group keeps its floor",
                            100 * budget.sparsity)
        else:
            limit = (1.0 - budget.sparsity) * self.cost_model.dense[measure]
            keep = self._keep_at(targets, scores, 0.0)
            if self.cost_model.cost(keep)[measure] > limit:
                lo, hi, keep = 0.0, 1.0, self._floors(targets)
                for _ in range(self.iterations):
                    mid = (lo + hi) / 2
                    try:
                        trial = self._keep_at(targets, scores, mid)
                    except ValueError:  # the floors cannot go this far
                        hi = mid
                        continue
                    if self.cost_model.cost(trial)[measure] <= limit:
                        hi, keep = mid, trial
                    else:
                        lo = mid
                got = self.cost_model.cost(keep)[measure] / self.cost_model.dense[measure]
                if got > (1.0 - budget.sparsity) * (1 + 1e-3):
                    log.warning("channel budget: keeping %.1f%% of the %s needs more than the per-group floors "
                                "allow; %.1f%% kept", 100 * (1 - budget.sparsity), measure, 100 * got)
        self.last_floored = sorted(t.name for t in targets
                                   if keep[t.name] <= self._floors([t])[t.name] and keep[t.name] < t.num_units)
        return keep

    def distribute(self, *args, **kwargs):  # pragma: no cover - allocate is overridden
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"ChannelBudget({self.inner!r}, round_to={self.round_to})"


def channel_budget(inner: "str | Allocator", groups: ChannelGroups, round_to: int = 8) -> ChannelBudget:
    """Wrap ``inner`` (a registered allocator name or instance) for ``groups``."""
    alloc = ALLOCATORS.build(inner)
    if isinstance(alloc, type):
        alloc = alloc()
    if not isinstance(alloc, Allocator):
        raise TypeError(f"allocator must be one of {ALLOCATORS.names()} or an Allocator, got {type(alloc).__name__}")
    return ChannelBudget(alloc, CostModel(groups), groups.targets, round_to=round_to)
