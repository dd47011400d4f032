"""Group criteria and the regularising enforcements, with exact values on a tiny net."""
import pytest
import torch
from torch import nn

from sparsity_core.allocators.budget import Budget
from sparsity_core.controller import SparsityController
from sparsity_core.criteria import Magnitude, Taylor
from sparsity_core.criteria.base import ScoreContext
from sparsity_plugins.vision import (BNScale, GroupEnvelope, HeadSensitivity,
                                     MaskSparsity, channel_budget, discover_channel_groups)

from .models import example, tiny

pytest.importorskip("torch_pruning")


class ConvBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 1, bias=False)
        self.bn = nn.BatchNorm2d(3)
        self.fc = nn.Linear(3, 2)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([1.0, -2.0, 3.0]).reshape(3, 1, 1, 1))
            self.bn.weight.copy_(torch.tensor([0.5, -4.0, 1.0]))
            self.fc.weight.copy_(torch.tensor([[1.0, 0.0, 2.0], [0.0, 1.0, 0.0]]))

    def forward(self, x):
        return self.fc(self.bn(self.conv(x)).mean((2, 3)))


def conv_bn_group():
    model = ConvBN()
    groups = discover_channel_groups(model, torch.ones(1, 1, 2, 2))
    (group,) = groups.targets
    return model, groups, group


def test_group_covers_conv_bn_and_consumer_inputs():
    _, _, g = conv_bn_group()
    assert g.name == "conv:out" and g.num_units == 3
    assert {(s.tensor, s.dim) for s in g.slices} == {("conv.weight", 0), ("bn.weight", 0), ("bn.bias", 0),
                                                     ("fc.weight", 1)}


def test_group_magnitude_l1_and_bn_scale_exact():
    _, _, g = conv_bn_group()
    ctx = ScoreContext()
    l1 = Magnitude(p=1).score(g, ctx)
    # |conv| + |gamma| + |beta|=0 + |fc column|
    assert torch.allclose(l1, torch.tensor([1 + 0.5 + 1, 2 + 4 + 1, 3 + 1 + 2.0]))
    assert torch.allclose(Magnitude(p=1, normalize=True).score(g, ctx), l1 / l1.mean())
    assert torch.allclose(BNScale().score(g, ctx), torch.tensor([0.5, 4.0, 1.0]))


def test_bn_scale_without_batchnorm_is_a_clear_error():
    groups = discover_channel_groups(tiny("vit"), example())
    with pytest.raises(ValueError, match="no BatchNorm"):
        BNScale().score(groups.targets[0], ScoreContext())


def test_group_taylor_is_the_squared_gate_gradient():
    model, _, g = conv_bn_group()
    model.train()
    x = torch.randn(4, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    model(x).sum().backward()
    crit = Taylor()
    crit.observe(g, ScoreContext())
    expected = torch.zeros(3, dtype=torch.float64)
    for name, dim in (("conv.weight", 0), ("bn.weight", 0), ("bn.bias", 0), ("fc.weight", 1)):
        p = model.get_parameter(name)
        expected += (p.grad * p).detach().double().movedim(dim, 0).reshape(3, -1).sum(1)
    assert torch.allclose(crit.score(g, ScoreContext()), expected.pow(2).float())


def test_head_sensitivity_calibrates_on_batches_and_restores_gradients():
    model = tiny("vit")
    groups = discover_channel_groups(model, example())
    heads = [t for t in groups.targets if t.kind == "head"]
    crit = HeadSensitivity()
    n = crit.calibrate(model, heads, [example(2), example(3)], lambda m, x: m(x).square().mean())
    assert n == 2
    scores = crit.score(heads[0], ScoreContext())
    assert scores.shape == (4,) and bool((scores > 0).all())
    assert all(p.grad is None for p in model.parameters())
    with pytest.raises(ValueError, match="no batches"):
        HeadSensitivity().calibrate(model, heads, [], lambda m, x: m(x).sum())


def _ctrl(model, groups, enforcement, opt):
    return SparsityController(groups.targets, schedule=1 / 3, criterion="bn_scale",
                              allocator=channel_budget("uniform", groups, round_to=1), enforcement=enforcement,
                              model=model, optimizers=[opt])


def test_mask_sparsity_adds_l1_only_to_scales_marked_for_removal():
    model, groups, g = conv_bn_group()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ctrl = _ctrl(model, groups, MaskSparsity(strength=0.01), opt)
    ctrl.update(0, force=True)
    assert ctrl.masks[g.name].tolist() == [False, True, True]  # smallest |gamma| marked
    assert model.bn.weight[0] == 0.5  # not zeroed during training
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    ctrl.before_optimizer_step(opt)
    assert torch.allclose(model.bn.weight.grad, torch.tensor([0.01, 0.0, 0.0]))
    assert model.conv.weight.grad.abs().sum() == 0
    ctrl.finalize()
    assert model.bn.weight[0] == 0 and model.conv.weight[0].abs().sum() == 0


def test_group_envelope_proximal_step_shrinks_groups_outside_top_k():
    model, groups, g = conv_bn_group()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    env = GroupEnvelope(strength=2.0, weighting="none")
    ctrl = _ctrl(model, groups, env, opt)
    ctrl.update(0, force=True)
    before = model.conv.weight.detach().clone()
    ctrl.after_optimizer_step(1)
    shrink = 1 / (1 + 0.5 * 2.0)
    assert torch.allclose(model.conv.weight[0], before[0] * shrink)
    assert torch.equal(model.conv.weight[1:], before[1:])
    assert torch.allclose(model.fc.weight[:, 0], torch.tensor([1.0, 0.0]) * shrink)


@pytest.mark.parametrize("bad", [0.0, -1.0])
def test_regulariser_strength_must_be_positive(bad):
    with pytest.raises(ValueError):
        MaskSparsity(strength=bad)
    with pytest.raises(ValueError):
        GroupEnvelope(strength=bad)


def test_head_sensitivity_with_global_allocation_moves_heads_to_the_sensitive_layer():
    model = tiny("vit")
    groups = discover_channel_groups(model, example())
    first, second = [t for t in groups.targets if t.kind == "head"]
    crit = HeadSensitivity()
    crit.calibrate(model, [first, second], [example(4)], lambda m, x: m(x).square().mean())
    assert crit._counts == {first.name: 1, second.name: 1}
    crit._sums[first.name] = torch.tensor([10.0, 11.0, 12.0, 13.0])  # layer 0's heads matter more
    crit._sums[second.name] = torch.tensor([1.0, 2.0, 3.0, 4.0])
    scores = {t.name: crit.score(t, ScoreContext()) for t in (first, second)}
    half = Budget(sparsity=0.5, measure="units")
    glob = channel_budget("global", groups, round_to=1).inner.allocate([first, second], scores, half)
    assert glob == {first.name: 3, second.name: 1}  # the floor keeps one head in layer 1
    unif = channel_budget("uniform", groups, round_to=1).inner.allocate([first, second], scores, half)
    assert unif == {first.name: 2, second.name: 2}
