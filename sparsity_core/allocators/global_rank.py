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
        pool_scores, pool_owner, pool_cost = [], [], []
        for i, t in enumerate(targets):
            s = self.transform(t, scores[t.name].reshape(-1).double().cpu())
            rest = torch.sort(s, descending=True, stable=True).values[floors[t.name]:]
            pool_scores.append(rest)
            pool_owner.append(torch.full_like(rest, i, dtype=torch.long))
            pool_cost.append(torch.full_like(rest, unit_cost(t, measure)))
        all_scores = torch.cat(pool_scores)
        if all_scores.numel() == 0 or budget <= 0:
            return keep
        order = torch.argsort(all_scores, descending=True, stable=True)
        owners, costs = torch.cat(pool_owner)[order], torch.cat(pool_cost)[order]
        taken = int(torch.searchsorted(torch.cumsum(costs, 0), torch.tensor([budget * (1 + 1e-9)], dtype=costs.dtype)).item())
        counts = torch.bincount(owners[:taken], minlength=len(targets))
        for i, t in enumerate(targets):
            keep[t.name] += int(counts[i])
        return keep
