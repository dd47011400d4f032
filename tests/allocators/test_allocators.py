import pytest
import torch
from torch import nn

from sparsity_core.allocators import ERK, LAMP, Budget, GlobalRank, Uniform, lamp_scores
from sparsity_core.allocators.erk import erk_raw_density
from sparsity_core.layouts import NM, Channels, Elements
from sparsity_core.targets import Target


def target(name, shape, layout=None, macs=0.0):
    return Target(name, layout=layout or Elements(), param=nn.Parameter(torch.zeros(shape)),
                  macs_per_unit=macs)


def test_budget_validation():
    for bad in (-0.1, 1.0, 1.5, float("nan"), "x"):
        with pytest.raises(ValueError, match=r"\[0, 1\)"):
            Budget(sparsity=bad)
    with pytest.raises(ValueError, match="exactly one"):
        Budget()
    with pytest.raises(ValueError, match="units, params, macs"):
        Budget(sparsity=0.5, measure="flops")


def test_uniform_keeps_same_fraction():
    ts = [target("a", (10, 10)), target("b", (4, 5))]
    keep = Uniform(min_keep_units=0).allocate(ts, {}, Budget(sparsity=0.75))
    assert keep == {"a": 25, "b": 5}


def test_global_rank_exact_on_tiny_scores():
    ts = [target("a", (4,)), target("b", (4,))]
    scores = {"a": torch.tensor([9.0, 8.0, 7.0, 6.0]), "b": torch.tensor([1.0, 2.0, 10.0, 0.5])}
    assert GlobalRank(min_keep_units=0).allocate(ts, scores, Budget(sparsity=0.5)) == {"a": 3, "b": 1}
    # floor: each keeps at least half of its units -> b keeps its best 2, a gets 2 more
    assert GlobalRank(min_keep_fraction=0.5).allocate(ts, scores, Budget(sparsity=0.5)) == {"a": 2, "b": 2}


def test_global_rank_budget_in_params_and_macs():
    a = target("a", (2, 3), layout=Channels(), macs=3.0)   # 2 channels, 3 params each
    b = target("b", (2, 1), layout=Channels(), macs=100.0)  # 2 channels, 1 param each
    scores = {"a": torch.tensor([5.0, 1.0]), "b": torch.tensor([4.0, 3.0])}
    al = GlobalRank(min_keep_units=0)
    # 8 params; keep 4: a0 (3) then b0 (1) -> 4
    assert al.allocate([a, b], scores, Budget(keep=4, measure="params")) == {"a": 1, "b": 1}
    # MACs: a channel 9, b channel 100; total 218; keep 50% = 109 -> a0 (9) + b0 (100)
    assert al.allocate([a, b], scores, Budget(sparsity=0.5, measure="macs")) == {"a": 1, "b": 1}


def test_macs_budget_without_macs_is_an_error():
    with pytest.raises(ValueError, match="needs MACs per unit"):
        GlobalRank().allocate([target("a", (4,))], {"a": torch.ones(4)}, Budget(sparsity=0.5, measure="macs"))


def test_infeasible_floor_is_an_error():
    ts = [target("a", (10,)), target("b", (10,))]
    scores = {"a": torch.ones(10), "b": torch.ones(10)}
    with pytest.raises(ValueError, match="infeasible budget"):
        GlobalRank(min_keep_fraction=0.2).allocate(ts, scores, Budget(sparsity=0.9))


def test_fixed_nm_targets_take_their_share():
    nm = target("nm", (2, 8), layout=NM(2, 4))
    free = target("free", (16,))
    keep = GlobalRank(min_keep_units=0).allocate([nm, free], {"nm": torch.ones(16), "free": torch.arange(16.0)},
                                                 Budget(sparsity=0.5))
    assert keep == {"nm": 8, "free": 8}


def test_round_to():
    t = target("a", (64, 2), layout=Channels())
    keep = Uniform(round_to=8).allocate([t], {}, Budget(sparsity=0.7))  # 19.2 -> 16
    assert keep == {"a": 16}


def test_lamp_scores_formula():
    s = lamp_scores(torch.tensor([1.0, 3.0, 2.0]))
    # squares 1, 9, 4 ; sorted asc 1,4,9; tails 14, 13, 9
    assert s.tolist() == pytest.approx([1 / 14, 1.0, 4 / 13])


def test_lamp_keeps_every_layers_largest():
    ts = [target("a", (3,)), target("b", (3,))]
    scores = {"a": torch.tensor([100.0, 90.0, 80.0]), "b": torch.tensor([0.1, 0.2, 0.3])}
    keep = LAMP(min_keep_units=0).allocate(ts, scores, Budget(keep=2))
    assert keep["b"] >= 1


def test_erk_densities_and_dense_fallback():
    assert erk_raw_density((4, 6)) == pytest.approx(10 / 24)
    small, big = target("small", (2, 2)), target("big", (100, 100))
    al = ERK(min_keep_units=0)
    keep = al.allocate([small, big], {"small": torch.ones(4), "big": torch.ones(10000)}, Budget(sparsity=0.9))
    # small: raw 1.0, big: raw 0.02 ; eps*1 > 1 -> small dense, big takes the rest
    assert keep["small"] == 4
    assert keep["big"] == round(0.1 * 10004) - 4
    # total kept matches the budget
    assert sum(keep.values()) == pytest.approx(0.1 * 10004, abs=1)


def test_allocator_argument_validation():
    with pytest.raises(ValueError, match="min_keep_fraction"):
        GlobalRank(min_keep_fraction=1.5)
    with pytest.raises(ValueError, match="round_to"):
        Uniform(round_to=0)
    with pytest.raises(ValueError, match="power"):
        ERK(power=0)
