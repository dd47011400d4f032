"""The keep rules of the sparse adapters, in the core's vocabulary.

An adapter's sparse tensor (SNELL's ΔW, PST's updated weight W′, DSEE's decomposition
residual S) is a core :class:`~sparsity_core.targets.Target` over a computed tensor
(``Target(name, shape=..., compute=...)``, element layout). Deciding what it keeps is the
decision every core masking program makes, restricted to one target:

- score: the core's :class:`~sparsity_core.criteria.magnitude.Magnitude` (``|x|`` per
  element), read through ``Target.unit_reduce`` with a ``ScoreContext`` whose ``weight`` is
  the tensor the forward already holds (no second evaluation of ``compute``); or a score
  tensor a method learns (PST's importance);
- allocate: the entries of one matrix compete only with each other (SNELL's and PST's rule is
  per matrix: a budget ``Budget(sparsity=s)`` per target), so the kept count is the core's
  one rounding rule :func:`~sparsity_core.allocators.budget.kept_count`, ``⌊(1 − s)·n⌋``
  (computed directly: a forward pass cannot afford an allocator's host-side bookkeeping,
  e.g. ``GlobalRank`` moves scores to the CPU);
- select: ``target.layout.select`` (:func:`~sparsity_core.layouts.top_k_mask`: the ``k``
  largest scores, ties broken by position, O(n) with ``kthvalue``, on the tensor's device).
"""
from __future__ import annotations

from typing import Optional

import torch

from sparsity_core.allocators.budget import kept_count
from sparsity_core.criteria.base import ScoreContext
from sparsity_core.criteria.magnitude import Magnitude
from sparsity_core.targets import Target

MAGNITUDE = Magnitude(p=1)


def magnitude_scores(target: Target, value: torch.Tensor) -> torch.Tensor:
    """The core magnitude criterion's scores of ``target`` when its tensor is ``value``
    (flat, one per element; differentiable when ``value`` is)."""
    return MAGNITUDE.score(target, ScoreContext(weight=lambda _t: value))


def keep_top(target: Target, scores: torch.Tensor, sparsity: Optional[float] = None,
             keep: Optional[int] = None) -> torch.Tensor:
    """Boolean mask shaped like ``target`` keeping its ``keep`` best units, or
    ``kept_count(n, sparsity)`` of them."""
    n = target.num_units
    k = kept_count(n, sparsity) if keep is None else int(keep)
    return target.layout.select(scores.detach().reshape(-1), k, target.shape)
