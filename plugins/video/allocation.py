"""From measured per-head errors and pattern costs to a pattern per head.

Inputs, for ``L`` layers of ``H`` heads and ``P`` candidate patterns: relative errors
``rel[l,h,p] = ‖O_p − O‖ / ‖O‖`` of the head's output, the head's share of its layer's output
energy ``share[l,h]`` and the relative cost ``c_p`` of each pattern (dense = 1). Choices are
indices into the candidates, ``-1`` for dense.

* :func:`within_budget` (Sparse-vDiT, Chen et al., 2025): per head the cheapest candidate with
  ``rel ≤ τ``; dense when none is (heads with ``share < negligible`` take the cheapest).
* :func:`knapsack` (one global attention budget ``Σ c ≤ (1−s)·L·H``): a multiple-choice
  knapsack over heads minimising the layers' summed squared relative output error
  ``Σ_l Σ_h share[l,h]·rel[l,h,p]²`` (the head's error weighted by its contribution, as
  HeSS-style sensitivity does), one option per head (dense or a candidate), solved by the
  core's multiple-choice knapsack DP (:func:`sparsity_core.allocators.rocket.multiple_choice_knapsack`,
  costs rounded up to a grid of ``resolution`` steps so the result always fits). Options are
  first restricted to patterns with ``rel ≤ τ``; if that cannot meet the budget the
  restriction is lifted (the returned ``τ`` is then ``inf``).
* :func:`ranked_dense` (a core allocator over parameter-free head targets): every head takes
  its :func:`within_budget`-style choice at ``τ``; the allocator (``global`` by default) ranks
  heads by sensitivity ``share·rel`` and keeps the most sensitive dense, as many as the budget
  allows (bisection over the allocator's sparsity); ``τ`` doubles while even all heads sparse
  miss the budget.
"""
from __future__ import annotations

import math
from typing import Sequence, Tuple

import torch
from torch import Tensor

from sparsity_core.allocators.base import Allocator
from sparsity_core.allocators.budget import Budget
from sparsity_core.allocators.knapsack import InfeasibleBudget
from sparsity_core.allocators.rocket import multiple_choice_knapsack
from sparsity_core.targets import Target


def within_budget(rel: Tensor, share: Tensor, costs: Tensor, tolerance: float, negligible: float = 0.0) -> Tensor:
    """Cheapest candidate with ``rel ≤ tolerance`` per head, else ``-1`` (dense)."""
    ok = rel <= tolerance
    masked = torch.where(ok, costs.expand_as(rel), torch.full_like(rel, math.inf))
    choice = torch.where(ok.any(2), masked.argmin(2), torch.full(rel.shape[:2], -1))
    return torch.where(share < negligible, costs.argmin().expand_as(choice), choice)


def _cost(choice: Tensor, costs: Tensor) -> Tensor:
    return torch.where(choice < 0, torch.ones(()), costs.double()[choice.clamp_min(0)])


def knapsack(rel: Tensor, share: Tensor, costs: Tensor, sparsity: float, tolerance: float,
             resolution: int = 2000) -> Tuple[Tensor, float]:
    """Choices meeting the budget with the least weighted error (see the module), and the ``τ`` used."""
    weighted = (share[..., None] * rel.pow(2)).reshape(-1, rel.shape[2]).tolist()
    flat_rel = rel.reshape(-1, rel.shape[2]).tolist()
    c = [float(x) for x in costs]
    n = len(weighted)

    def run(tau: float) -> Tuple[list, list]:
        options = [[-1] + [p for p in range(len(c)) if flat_rel[h][p] <= tau] for h in range(n)]
        picks, _ = multiple_choice_knapsack([[1.0 if p < 0 else c[p] for p in opts] for opts in options],
                                            [[0.0 if p < 0 else weighted[h][p] for p in opts]
                                             for h, opts in enumerate(options)],
                                            (1.0 - sparsity) * n, resolution)
        return [options[h][i] for h, i in enumerate(picks)], options

    try:
        picks, _ = run(tolerance)
    except InfeasibleBudget:
        tolerance = math.inf
        picks, _ = run(tolerance)
    return torch.tensor(picks).reshape(rel.shape[:2]), tolerance


def ranked_dense(rel: Tensor, share: Tensor, costs: Tensor, sparsity: float, tolerance: float,
                 allocator: Allocator, targets: Sequence[Target], negligible: float = 0.0) -> Tuple[Tensor, float]:
    """Choices where the core ``allocator`` keeps the most sensitive heads dense (see the module)."""
    goal = (1.0 - sparsity) * rel.shape[0] * rel.shape[1]

    def sparse_choice(tau: float) -> Tensor:
        choice = within_budget(rel, share, costs, tau, negligible)
        return torch.where(choice < 0, rel.argmin(2), choice)  # no pattern within τ: the least-error one

    choice = sparse_choice(tolerance)
    while float(_cost(choice, costs).sum()) > goal and tolerance < float(rel.max()):
        tolerance *= 2.0
        choice = sparse_choice(tolerance)
    sens = rel.gather(2, choice[..., None])[..., 0] * share
    scores = {t.name: sens[i].float() for i, t in enumerate(targets)}

    def at(s: float) -> Tensor:
        keep = allocator.allocate(targets, scores, Budget(sparsity=s))
        out = choice.clone()
        for i, t in enumerate(targets):
            out[i, sens[i].argsort(descending=True, stable=True)[:keep[t.name]]] = -1
        return out

    lo, hi = 0.0, 1.0 - 1e-9
    if float(_cost(at(hi), costs).sum()) > goal:
        return at(hi), tolerance
    for _ in range(30):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if float(_cost(at(mid), costs).sum()) <= goal else (mid, hi)
    return at(hi), tolerance
