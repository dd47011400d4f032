"""The decision every masking program makes: score targets, check the scores, split a
budget, keep the best units. Shared by the controller (during training) and the one-shot
driver (without training), so both decide identically."""
from __future__ import annotations

from typing import Any, Dict, Mapping, Sequence

import torch

from .allocators.base import Allocator
from .allocators.budget import Budget
from .criteria.base import Criterion, ScoreContext
from .masks import MaskSet
from .registry import Registry
from .targets import Target


def build_component(registry: Registry, spec: Any, base: type, what: str) -> Any:
    """A component from a registered name (built with its defaults), a class or an instance."""
    obj = registry.build(spec)
    if isinstance(obj, type):
        obj = obj()
    if not isinstance(obj, base):
        raise TypeError(f"{what} must be a name in {registry.names()} or a {base.__name__}, got {type(obj).__name__}")
    return obj


def score_targets(criterion: Criterion, targets: Sequence[Target], context: ScoreContext) -> Dict[str, torch.Tensor]:
    """``{target name: float scores}``, checked: one finite score per unit."""
    scores = {}
    for t in targets:
        s = criterion.score(t, context).reshape(-1).float()
        if s.numel() != t.num_units:
            raise ValueError(f"criterion {criterion!r} returned {s.numel()} scores for {t.describe()}")
        if not torch.isfinite(s).all():
            bad = int((~torch.isfinite(s)).sum())
            raise ValueError(f"criterion {criterion!r} produced {bad} NaN/Inf score(s) for {t.name!r}; "
                             "masks left unchanged (check the weights, gradients or calibration inputs)")
        scores[t.name] = s
    return scores


def select_masks(allocator: Allocator, targets: Sequence[Target], scores: Mapping[str, torch.Tensor],
                 budget: Budget) -> MaskSet:
    """Masks keeping, per target, the best units of the count the allocator gives it."""
    keep = allocator.allocate(targets, scores, budget)
    masks = MaskSet()
    for t in targets:
        dev = t.param.device if t.param is not None else None
        masks[t.name] = t.layout.select(scores[t.name], keep[t.name], t.shape).to(dev)
    return masks
