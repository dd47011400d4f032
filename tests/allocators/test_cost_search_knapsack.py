"""Cost models, the budget search and the greedy knapsack, with exact values on tiny targets."""
import pytest
import torch

from sparsity_core.allocators import Budget, GlobalRank, Uniform
from sparsity_core.allocators.knapsack import GreedyKnapsack, InfeasibleBudget, greedy_removal
from sparsity_core.allocators.search import BudgetSearch
from sparsity_core.cost import CostModel, LinearCost
from sparsity_core.targets import Target


def targets():
    return [Target("a", shape=(4,), params_per_unit=1.0), Target("b", shape=(4,), params_per_unit=3.0)]


def test_linear_cost_is_units_times_their_cost():
    model = LinearCost(targets())
    assert model.dense == {"units": 8.0, "params": 16.0, "macs": 0.0}
    assert model.cost({"a": 1, "b": 2}) == {"units": 3.0, "params": 7.0, "macs": 0.0}


class ProductCost(CostModel):
    """A layer whose inputs are a's units and outputs b's: params = 4·keep_a·keep_b."""

    def cost(self, keep):
        a, b = keep.get("a", 4), keep.get("b", 4)
        return {"units": a + b, "params": 4.0 * a * b, "macs": 0.0}


def test_budget_search_meets_a_non_linear_budget():
    scores = {"a": torch.tensor([1.0, 2.0, 3.0, 4.0]), "b": torch.tensor([1.0, 2.0, 3.0, 4.0])}
    search = BudgetSearch(Uniform(), ProductCost())
    keep = search.allocate(targets(), scores, Budget(sparsity=0.75, measure="params"))
    assert keep == {"a": 2, "b": 2}  # 4·2·2 = 16 = 25% of 64; uniform unit sparsity 50%, not 75%
    assert search.allocate(targets(), scores, Budget(sparsity=0.5, measure="units")) == {"a": 2, "b": 2}


def test_greedy_knapsack_removes_the_least_importance_per_cost():
    scores = {"a": torch.tensor([1.0, 2.0, 3.0, 4.0]), "b": torch.tensor([2.0, 6.0, 9.0, 12.0])}
    knap = GreedyKnapsack(min_keep_units=0)
    keep = knap.allocate(targets(), scores, Budget(sparsity=0.5, measure="params"))
    # per cost: a 1,2,3,4 (cost 1 each); b 0.67, 2, 3, 4 (cost 3 each): b's 2 goes (3), then a's 1, 2 (2),
    # then b's 6 or a's 3 (ratio 2 vs 3): b's 6 (3) -> 8 params removed = 50%
    assert keep == {"a": 2, "b": 2}
    # ranking by score alone empties a (its units score lowest) although they cost a third as much
    assert GlobalRank(min_keep_units=0).allocate(targets(), scores, Budget(sparsity=0.5, measure="params")) \
        == {"a": 0, "b": 2}


def test_greedy_removal_prefers_no_overshoot_and_raises_when_moves_run_out():
    # one state = remaining cost; moves save 3 or 5 at value 1 each
    def moves(cost):
        return [3, 5]

    def apply(cost, m):
        return (cost - m, m) if cost - m >= 0 else None

    # from 10: saving 5 would overshoot the floor 6, so 3 is taken (7); then only overshooting
    # moves are left and the one that overshoots least (3 -> 4) is taken
    assert greedy_removal(10, 10, goal=6, moves=moves, apply=apply, value=lambda s, m, n: 1.0, floor=6) == (4, 4)
    # without a floor the best ratio (value 1 per 5 saved) wins at once
    assert greedy_removal(10, 10, goal=6, moves=moves, apply=apply, value=lambda s, m, n: 1.0) == (5, 5)
    with pytest.raises(InfeasibleBudget):
        greedy_removal(10, 10, goal=0, moves=lambda s: [], apply=apply, value=lambda s, m, n: 1.0)


def test_greedy_knapsack_refuses_a_budget_its_floors_cannot_meet():
    scores = {"a": torch.ones(4), "b": torch.ones(4)}
    with pytest.raises(ValueError, match="infeasible budget"):
        GreedyKnapsack(min_keep_units=3).allocate(targets(), scores, Budget(sparsity=0.9, measure="units"))
