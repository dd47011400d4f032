"""Budget trees: each group of targets is split by its own sub-budget.

    Grouped({"edges": [r"^ugs_edge_mask\\."], "weights": [r"."]}, inner=GlobalRank(min_keep_units=0))

A target belongs to the first group one of whose regular expressions it matches
(``re.search`` on the target name); a target in no group is an error. The budget must carry
``groups`` (``Budget(..., groups={"edges": 0.2, "weights": 0.6})``, what
:meth:`~sparsity_core.schedules.Iterative.group_values` gives a schedule with per-group
rates); each group is then allocated by ``inner`` (global ranking by default) under its
sub-budget, in the budget's measure. Per-task sub-budgets of multi-task pruning take the
same form.
"""
from __future__ import annotations

import re
from typing import Dict, List, Mapping, Sequence, Union

import torch

from ..registry import ALLOCATORS
from ..targets import Target
from .base import Allocator
from .budget import Budget


@ALLOCATORS.register("grouped")
class Grouped(Allocator):
    def __init__(self, groups: Mapping[str, Union[str, Sequence[str]]], inner: Union[str, Allocator] = "global") -> None:
        super().__init__(min_keep_units=0)
        if not groups:
            raise ValueError("Grouped needs at least one group of target-name patterns")
        self.groups: Dict[str, List[re.Pattern]] = {}
        for name, patterns in groups.items():
            pats = [patterns] if isinstance(patterns, str) else list(patterns)
            try:
                self.groups[str(name)] = [re.compile(p) for p in pats]
            except re.error as err:
                raise ValueError(f"group {name!r}: invalid regular expression ({err})") from None
        inner = ALLOCATORS.build(inner)
        if isinstance(inner, type):
            inner = inner()
        if not isinstance(inner, Allocator) or isinstance(inner, Grouped):
            raise ValueError(f"inner must be a (non-grouped) allocator, got {inner!r}")
        self.inner = inner

    def group_of(self, target: Target) -> str:
        for name, patterns in self.groups.items():
            if any(p.search(target.name) for p in patterns):
                return name
        raise ValueError(f"target {target.name!r} is in no group of {sorted(self.groups)}")

    def allocate(self, targets: Sequence[Target], scores: Mapping[str, torch.Tensor], budget: Budget) -> Dict[str, int]:
        if budget.groups is None:
            raise ValueError(f"the grouped allocator needs sub-budgets for {sorted(self.groups)} (a schedule with "
                             "per-group values, e.g. Iterative(rates={...}))")
        members: Dict[str, List[Target]] = {}
        for t in targets:
            members.setdefault(self.group_of(t), []).append(t)
        missing = sorted(set(members) - set(budget.groups))
        if missing:
            raise ValueError(f"no sub-budget for groups {missing}; the budget has {sorted(budget.groups)}")
        keep: Dict[str, int] = {}
        for name, group in members.items():
            sub = Budget(sparsity=budget.groups[name], measure=budget.measure)
            keep.update(self.inner.allocate(group, scores, sub))
        return keep

    def __repr__(self) -> str:
        return (f"Grouped(groups={ {k: [p.pattern for p in v] for k, v in self.groups.items()} }, "
                f"inner={self.inner!r})")
