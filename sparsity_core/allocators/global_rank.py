"""Global ranking with a per-target floor ("Global MP with minimum threshold").

All units of all targets are ranked by score together and the best are kept until the
budget is spent (Han et al., 2015; Frankle & Carbin, 2019, global magnitude pruning). Each
target first keeps its floor (``min_keep_fraction`` of its units, its best ones), which
prevents a layer from collapsing (the minimum-threshold variant of global MP).
"""
from __future__ import annotations

from typing import Dict, Mapping, Sequence

import torch

from ..registry import ALLOCATORS
from ..layouts import top_k_mask
from ..targets import Target
from .base import Allocator
from .budget import unit_cost


@ALLOCATORS.register("global")
class GlobalRank(Allocator):
    def transform(self, target: Target, scores: torch.Tensor) -> torch.Tensor:
        """Scores used for the global ranking (LAMP overrides this)."""
        return scores

    def distribute(self, targets: Sequence[Target], scores: Mapping[str, torch.Tensor], keep_cost: float,
                   measure: str, floors: Mapping[str, int]) -> Dict[str, int]:
        keep = dict(floors)
        budget = keep_cost - sum(unit_cost(t, measure) * floors[t.name] for t in targets)
        pool, owners, costs = [], [], []
        for i, t in enumerate(targets):
            s = self.transform(t, scores[t.name].reshape(-1).float().cpu())
            if floors[t.name]:  # the floor units are kept already: take them out of the pool
                s = s.clone()
                s[torch.topk(s, floors[t.name], sorted=False).indices] = float("-inf")
            pool.append(s)
            owners.append(torch.full((s.numel(),), i, dtype=torch.int32))
            costs.append(unit_cost(t, measure))
        free = sum(t.num_units - floors[t.name] for t in targets)
        if free == 0 or budget <= 0:
            return keep
        all_scores, all_owners = torch.cat(pool), torch.cat(owners)
        if len(set(costs)) == 1:  # equal unit costs: the best `taken` units, found in O(n)
            taken = min(free, int(budget / costs[0] * (1 + 1e-9)))
            chosen = top_k_mask(all_scores, taken) if taken else torch.zeros_like(all_scores, dtype=torch.bool)
            counts = torch.bincount(all_owners[chosen].long(), minlength=len(targets))
        else:  # greedy by score, paying each unit's own cost
            order = torch.argsort(all_scores, descending=True, stable=True)[:free]
            unit_costs = torch.tensor(costs, dtype=torch.float64)[all_owners[order].long()]
            limit = torch.tensor([budget * (1 + 1e-9)], dtype=torch.float64)
            taken = int(torch.searchsorted(torch.cumsum(unit_costs, 0), limit, right=True).item())
            counts = torch.bincount(all_owners[order[:taken]].long(), minlength=len(targets))
        for i, t in enumerate(targets):
            keep[t.name] += int(counts[i])
        return keep
