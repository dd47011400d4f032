import pytest
import torch
from torch import nn

from sparsity_core.layouts import Channels
from sparsity_core.masks import MaskSet, apply_mask_, mask_optimizer_state_
from sparsity_core.targets import Target


def test_sparsity_accounting():
    a = Target("a", param=nn.Parameter(torch.ones(2, 2)))
    b = Target("b", layout=Channels(), param=nn.Parameter(torch.ones(4, 3)))
    ms = MaskSet({"a": torch.tensor([[True, False], [False, False]]), "b": torch.tensor([1, 1, 0, 0])})
    assert ms.sparsity("a") == 0.75 and ms.sparsity("b") == 0.5
    assert ms["b"].dtype == torch.bool
    # params: a removes 3 of 4, b removes 2 channels x 3 = 6 of 12 -> 9/16
    assert ms.weighted_sparsity([a, b], "params") == pytest.approx(9 / 16)
    assert ms.weighted_sparsity([a, b], "units") == pytest.approx(5 / 8)


def test_apply_mask_in_place_keeps_storage():
    p = nn.Parameter(torch.arange(1.0, 7.0).reshape(3, 2))
    t = Target("p", layout=Channels(), param=p)
    ptr = p.data.data_ptr()
    apply_mask_(p.data, t, torch.tensor([True, False, True]))
    assert p.data.tolist() == [[1, 2], [0, 0], [5, 6]] and p.data.data_ptr() == ptr


def test_optimizer_state_is_masked():
    p = nn.Parameter(torch.ones(2, 2))
    opt = torch.optim.Adam([p])
    p.grad = torch.ones(2, 2)
    opt.step()
    t = Target("p", param=p)
    n = mask_optimizer_state_(opt, p, t, torch.tensor([[True, False], [True, True]]))
    assert n == 2  # exp_avg, exp_avg_sq (step is a scalar)
    assert opt.state[p]["exp_avg"][0, 1] == 0 and opt.state[p]["exp_avg_sq"][0, 1] == 0
    assert opt.state[p]["exp_avg"][0, 0] != 0


def test_resize_flat_masks_and_change_fraction():
    ms = MaskSet({"g": torch.tensor([True, False, True, True])})
    old = ms.copy()
    ms.select_units("g", torch.tensor([0, 1, 3]))
    assert ms["g"].tolist() == [True, False, True]
    ms.append_units("g", 2, kept=False)
    assert ms["g"].tolist() == [True, False, True, False, False]
    a, b = MaskSet({"x": torch.tensor([1, 0, 1, 0])}), MaskSet({"x": torch.tensor([1, 1, 1, 0])})
    assert a.changed_fraction(b) == 0.25
    assert old.state_dict()["g"].tolist() == [True, False, True, True]


def test_mask_must_be_tensor():
    with pytest.raises(TypeError, match="must be a tensor"):
        MaskSet({"x": [1, 0]})
