"""Targets over a weight, a computed tensor and slices of several tensors, read by the same
core criteria through Target.unit_reduce."""
import pytest
import torch

from sparsity_core import Magnitude, Target, Taylor, one_shot_prune
from sparsity_core.criteria import ScoreContext
from sparsity_core.layouts import Rows
from sparsity_core.targets import SliceTarget, TensorSlice


def test_a_computed_tensor_is_scored_like_a_weight():
    a = torch.nn.Parameter(torch.tensor([[1.0, -2.0]]))  # [1, 2]
    b = torch.nn.Parameter(torch.tensor([[1.0], [3.0]]))  # [2, 1]
    delta = Target("adapter.delta", shape=(2, 2), compute=lambda: b @ a, layout=Rows(0))
    assert delta.params_per_unit == 2.0
    # ΔW = [[1, -2], [3, -6]]: row L1 norms 3 and 9
    assert Magnitude().score(delta, ScoreContext()).tolist() == [3.0, 9.0]
    result = one_shot_prune(torch.nn.Module(), [delta], None, 0.5, apply=False)
    assert result.masks["adapter.delta"].tolist() == [False, True]


def test_a_computed_target_checks_what_compute_returns():
    bad = Target("d", shape=(2, 2), compute=lambda: torch.zeros(3))
    with pytest.raises(ValueError, match=r"compute\(\) returned shape \(3,\), expected \(2, 2\)"):
        bad.read()
    with pytest.raises(ValueError, match="a parameter or a computed tensor, not both"):
        Target("d", param=torch.nn.Parameter(torch.zeros(2)), compute=lambda: torch.zeros(2))
    with pytest.raises(ValueError, match="has no tensor to read"):
        Target("edges", shape=(4,)).read()


def test_a_sliced_target_sums_every_slice_a_unit_owns():
    w1 = torch.nn.Parameter(torch.tensor([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]]))  # rows = units 0, 1, 1
    w2 = torch.nn.Parameter(torch.tensor([[10.0, 20.0, 30.0]]))  # columns = units 0, 1, 1
    group = SliceTarget("g", shape=(2,), tensors={"w1": w1, "w2": w2}, slices=(
        TensorSlice("w1", 0, torch.tensor([0, 1, 2]), torch.tensor([0, 1, 1])),
        TensorSlice("w2", 1, torch.tensor([0, 1, 2]), torch.tensor([0, 1, 1]))))
    assert Magnitude().score(group, ScoreContext()).tolist() == [12.0, 60.0]  # 2 + 10; 4 + 6 + 20 + 30
    taylor = Taylor()
    taylor.observe(group, ScoreContext())  # no gradient yet: nothing observed
    assert taylor.state_dict()["counts"] == {}
    w1.grad, w2.grad = torch.ones_like(w1), torch.zeros_like(w2)
    taylor.observe(group, ScoreContext())
    assert taylor.score(group, ScoreContext()).tolist() == [4.0, 100.0]  # (Σ g·w)²: 2², (4 + 6)²
    pruned = group.unit_positions(group.slices[0], torch.tensor([True, False]))
    assert pruned.tolist() == [1, 2]
