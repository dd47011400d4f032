"""Per-head pattern choices from errors and costs."""
import itertools
import math

import pytest
import torch

from sparsity_plugins.video.allocation import knapsack, ranked_dense, within_budget

from sparsity_core.registry import ALLOCATORS
from sparsity_core.targets import Target

# 1 layer, 3 heads, candidates: cheap (0.1), mid (0.3), rich (0.6)
COSTS = torch.tensor([0.1, 0.3, 0.6], dtype=torch.float64)
REL = torch.tensor([[[0.50, 0.20, 0.01],    # head 0: needs the rich pattern
                     [0.02, 0.01, 0.00],    # head 1: fine with the cheap one
                     [0.90, 0.04, 0.03]]], dtype=torch.float64)  # head 2: the mid one
SHARE = torch.tensor([[0.4, 0.3, 0.3]], dtype=torch.float64)


def test_within_budget():
    assert within_budget(REL, SHARE, COSTS, 0.05).tolist() == [[2, 0, 1]]
    assert within_budget(REL, SHARE, COSTS, 0.005).tolist() == [[-1, 2, -1]]
    assert within_budget(REL, SHARE, COSTS, 0.005, negligible=0.35).tolist() == [[-1, 0, 0]]


def brute(sparsity):
    best = None
    for combo in itertools.product(range(-1, 3), repeat=3):
        cost = sum(1.0 if p < 0 else float(COSTS[p]) for p in combo)
        if cost > (1 - sparsity) * 3 + 1e-9:
            continue
        err = sum(0.0 if p < 0 else float(SHARE[0, h] * REL[0, h, p] ** 2) for h, p in enumerate(combo))
        best = min(best or (math.inf, None), (err, combo))
    return best


def test_knapsack_meets_budget_and_matches_brute_force_here():
    for sparsity in (0.45, 0.72, 0.88):  # capacities off the sums of costs (the DP rounds costs up)
        choice, tau = knapsack(REL, SHARE, COSTS, sparsity, tolerance=1.0)
        cost = sum(1.0 if p < 0 else float(COSTS[p]) for p in choice[0].tolist())
        assert cost <= (1 - sparsity) * 3 + 1e-9
        err = sum(0.0 if p < 0 else float(SHARE[0, h] * REL[0, h, p] ** 2) for h, p in enumerate(choice[0].tolist()))
        assert err == pytest.approx(brute(sparsity)[0], abs=1e-12)


def test_knapsack_lifts_the_error_restriction_only_when_needed():
    choice, tau = knapsack(REL, SHARE, COSTS, 0.5, tolerance=0.05)
    assert tau == 0.05 and choice.tolist() == [[2, 1, 2]]  # the optimum of the brute force, within τ
    choice, tau = knapsack(REL, SHARE, COSTS, 0.9, tolerance=0.05)
    assert tau == math.inf and choice.tolist() == [[0, 0, 0]]


def test_ranked_dense_keeps_the_most_sensitive_head_dense():
    targets = [Target("blocks.0.attn1.heads", shape=(3,))]
    alloc = ALLOCATORS.build("global", min_keep_units=0)
    choice, tau = ranked_dense(REL, SHARE, COSTS, 0.4, 0.05, alloc, targets)
    # choices at τ: [2, 0, 1] cost 1.0; one dense head fits in 1.8: the most sensitive (head 2: 0.3·0.04)
    assert choice.tolist() == [[2, 0, -1]]
