import pytest
import torch
from torch import nn

from sparsity_core.allocators.budget import Budget
from sparsity_core.controller import SparsityController
from sparsity_core.discovery import discover_targets
from sparsity_core.layouts import Elements
from sparsity_core.registry import ALLOCATORS
from sparsity_core.schedules.constant import Constant
from sparsity_core.targets import Target
from sparsity_plugins.vision.sparse_ift import (
    IsoFlopAllocator,
    SparseWide,
    dense_nonzero_budget,
    iso_flop_sparsity,
    nonzero_weights,
    sparse_wide,
    sparse_wide_mlp,
    sparse_wide_widths,
    widen_factor,
    widen_width,
)


def test_widen_factor_and_width():
    assert widen_factor(0.75) == 2.0
    assert widen_factor(0.0) == 1.0
    assert widen_width(16, 0.75) == 32
    assert widen_width(16, 0.0) == 16
    assert widen_width(10, 0.5) == 14  # 10 * sqrt(2) = 14.14
    assert widen_width(10, 0.5, multiple_of=8) == 16
    assert SparseWide(0.75).factor == 2.0
    assert SparseWide(0.75).width(16) == 32


def test_widths_keep_input_and_output():
    assert sparse_wide_widths([3, 16, 32, 10], 0.75) == [3, 32, 64, 10]
    assert sparse_wide_widths([3, 10], 0.75) == [3, 10]
    assert SparseWide(0.5, multiple_of=8).widths([3, 10, 10]) == [3, 16, 10]


def test_iso_flop_sparsity():
    assert iso_flop_sparsity((16, 8), (32, 8)) == 0.5
    assert iso_flop_sparsity((16, 16), (32, 32)) == 0.75
    assert iso_flop_sparsity((4, 3, 3, 3), (4, 3, 3, 3)) == 0.0
    assert iso_flop_sparsity([3, 5], [4, 5]) == pytest.approx(0.25)


def test_mlp_widths_and_layer_sparsity():
    model, s = sparse_wide_mlp([8, 16, 16, 4], 0.75)
    linears = [m for m in model if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(8, 32), (32, 32), (32, 4)]
    assert s == {"0": 0.5, "2": 0.75, "4": 0.5}
    assert isinstance(model[1], nn.ReLU) and isinstance(model[3], nn.ReLU)
    assert model(torch.zeros(2, 8)).shape == (2, 4)
    k = widen_factor(0.75)
    assert s["0"] == 1 - 1 / k and s["2"] == 1 - 1 / k**2
    # nonzeros at these sparsities equal the dense weights of every layer
    dense = [8 * 16, 16 * 16, 16 * 4]
    assert [(1 - s[n]) * m.weight.numel() for n, m in zip(s, linears)] == dense


def test_mlp_without_activation():
    model, s = sparse_wide_mlp([2, 3], 0.75, activation=None, bias=False)
    assert len(model) == 1 and model[0].bias is None and s == {"0": 0.0}


def test_dense_nonzero_budget():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4, 2), nn.BatchNorm1d(2))
    assert dense_nonzero_budget(net) == 4 * 3 * 9 + 4 * 2
    assert nonzero_weights(net) == dense_nonzero_budget(net)


@pytest.mark.parametrize("sparsity", [0.75, 0.6])
def test_controller_with_iso_flop_allocator_matches_dense_weights(sparsity):
    dims = [8, 16, 16, 4]
    dense, _ = sparse_wide_mlp(dims, 0.0)
    model, layer_sparsity = sparse_wide_mlp(dims, sparsity)
    targets = discover_targets(model, skip_head=False)
    assert [t.name for t in targets] == ["0.weight", "2.weight", "4.weight"]
    ctrl = SparsityController(targets, schedule=Constant(sparsity=0.3), criterion="magnitude",
                              allocator=IsoFlopAllocator(layer_sparsity), model=model)
    assert ctrl.update(0)
    nonzero = {t.name: int(torch.count_nonzero(t.param)) for t in targets}
    dense_counts = {"0.weight": 128, "2.weight": 256, "4.weight": 64}
    for name, n in nonzero.items():
        assert abs(n - dense_counts[name]) <= 1
    assert abs(nonzero_weights(model) - dense_nonzero_budget(dense)) <= len(targets)
    if sparsity == 0.75:  # exact widths: exact counts
        assert nonzero == dense_counts
        assert nonzero_weights(model) == dense_nonzero_budget(dense) == 448


def test_allocator_by_module_or_target_name_and_floors():
    a = Target("a.weight", layout=Elements(), param=nn.Parameter(torch.ones(4, 5)), module_name="a")
    b = Target("b.weight", layout=Elements(), param=nn.Parameter(torch.ones(3)), module_name="b")
    budget = Budget(sparsity=0.99)  # ignored
    al = IsoFlopAllocator({"a": 0.75, "b.weight": 0.5})
    assert al.allocate([a, b], {}, budget) == {"a.weight": 5, "b.weight": 2}  # 1.5 rounds up
    # target name wins over module name
    assert IsoFlopAllocator({"a": 0.0, "a.weight": 0.9, "b": 0.0}).allocate([a, b], {}, budget) == {
        "a.weight": 2, "b.weight": 3}
    # floors still apply
    al = IsoFlopAllocator({"a": 0.99, "b": 0.99}, min_keep_fraction=0.5)
    assert al.allocate([a, b], {}, budget) == {"a.weight": 10, "b.weight": 2}
    assert IsoFlopAllocator({"a": 0.5, "b": 0.0}, round_to=4).allocate([a, b], {}, budget)["a.weight"] == 12


def test_allocator_is_registered_and_missing_target_is_named():
    assert "iso_flop" in ALLOCATORS
    assert ALLOCATORS.get("iso_flop") is IsoFlopAllocator
    a = Target("a.weight", layout=Elements(), param=nn.Parameter(torch.ones(4)), module_name="a")
    with pytest.raises(ValueError, match=r"'a\.weight'"):
        IsoFlopAllocator({"other": 0.5}).allocate([a], {}, Budget(sparsity=0.5))
    with pytest.raises(ValueError, match=r"'a\.weight'"):
        SparsityController([a], schedule=Constant(sparsity=0.5), allocator="iso_flop")


def test_sparse_wide_generic_model_fn():
    def make(mult: float) -> nn.Module:
        c = round(4 * mult)
        return nn.Sequential(nn.Conv2d(3, c, 3, padding=1), nn.ReLU(), nn.Conv2d(c, c, 3, padding=1, groups=c),
                             nn.Conv2d(c, c, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 10))

    wide, s = SparseWide(0.75).model(make)
    assert wide[0].out_channels == 8
    assert s == {"0": 0.5, "2": 0.5, "3": 0.75, "6": 0.5}
    for name, m in dict(wide.named_modules()).items():
        if name in s:
            assert (1 - s[name]) * m.weight.numel() == dict(make(1.0).named_modules())[name].weight.numel()
    assert sparse_wide(make, 0.0)[1] == {"0": 0.0, "2": 0.0, "3": 0.0, "6": 0.0}


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, float("nan"), "x", None, True])
def test_bad_sparsity(bad):
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        widen_factor(bad)
    with pytest.raises(ValueError):
        widen_width(16, bad)
    with pytest.raises(ValueError):
        sparse_wide_mlp([8, 16, 4], bad)
    with pytest.raises(ValueError):
        IsoFlopAllocator({"a": bad})


def test_bad_widths_and_shapes():
    for width in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="must be an int >= 1"):
            widen_width(width, 0.5)
    with pytest.raises(ValueError, match="multiple_of"):
        widen_width(16, 0.5, multiple_of=0)
    with pytest.raises(ValueError, match="empty"):
        sparse_wide_mlp([], 0.5)
    with pytest.raises(ValueError, match="at least"):
        sparse_wide_mlp([8], 0.5)
    with pytest.raises(ValueError, match="must be an int >= 1"):
        sparse_wide_mlp([8, 0, 4], 0.5)
    with pytest.raises(ValueError, match="at least"):
        sparse_wide_widths([3], 0.5)
    with pytest.raises(ValueError, match="non-empty"):
        iso_flop_sparsity((), (4,))
    with pytest.raises(ValueError, match="must be an int >= 1"):
        iso_flop_sparsity((4, 0), (4, 4))
    with pytest.raises(ValueError, match="fewer weights"):
        iso_flop_sparsity((8, 8), (4, 8))
    with pytest.raises(ValueError):
        SparseWide(1.0)

    def mismatched(mult: float) -> nn.Module:
        return nn.Linear(2, 2) if mult == 1.0 else nn.Sequential(nn.Linear(2, 2))

    with pytest.raises(ValueError, match="same Linear/Conv layers"):
        sparse_wide(mismatched, 0.5)


def test_widen_width_rounding_is_exact_on_float_noise():
    # k = 1/sqrt(1 - s) is not exact in floating point: widths must not drop by one
    expected = {0.5: 141, 0.75: 200, 0.9: 316, 0.96: 500, 0.99: 1000}
    assert {s: widen_width(100, s) for s in expected} == expected
