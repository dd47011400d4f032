"""Dynamic gradient masking keeps exactly the top fraction of |gradient| among kept weights,
refreshed every k steps and cached in between."""
import torch
from torch import nn

from sparsity_core import HardMask, Regime, SparsityController, Target
from sparsity_core.masks import MaskSet
from sparsity_plugins.continual import DynamicGradientMask, top_gradient_mask


def test_top_fraction_among_active_entries_exactly():
    grad = torch.tensor([[0.1, -0.5, 0.3], [0.9, -0.2, 0.05]])
    active = torch.tensor([[True, True, True], [False, True, True]])
    # 5 active entries, keep 0.4 -> 2: |-0.5| and |0.3|; 0.9 is a pruned weight's gradient
    assert top_gradient_mask(grad, active, 0.4).tolist() == [[False, True, True], [False, False, False]]
    assert int(top_gradient_mask(grad, active, 0.01).sum()) == 1  # at least one entry
    assert int(top_gradient_mask(grad, active, 1.0).sum()) == 5


def make(every):
    torch.manual_seed(0)
    layer = nn.Linear(4, 2, bias=False)
    dgm = DynamicGradientMask(keep=0.5, every=every)
    ctrl = SparsityController([Target("w", param=layer.weight)], schedule=0.0, enforcement=Regime(HardMask(), dgm))
    mask = torch.tensor([[True, True, False, True], [True, False, True, True]])
    ctrl.replace_masks(MaskSet({"w": mask}), 0)
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    return layer, ctrl, dgm, opt, mask


def step(layer, ctrl, opt, grad, n):
    layer.weight.grad = grad.clone()
    ctrl.before_optimizer_step(opt)
    out = layer.weight.grad.clone()
    opt.step()
    ctrl.after_optimizer_step(n)
    return out


def test_gradient_mask_is_refreshed_every_k_steps_and_cached_in_between():
    layer, ctrl, dgm, opt, mask = make(every=2)
    g1 = torch.tensor([[1.0, 2.0, 9.0, 3.0], [4.0, 9.0, 0.5, 0.1]])
    out = step(layer, ctrl, opt, g1, 1)  # 6 kept weights, keep 3: |4|, |3|, |2|
    expected = torch.tensor([[0.0, 2.0, 0.0, 3.0], [4.0, 0.0, 0.0, 0.0]])
    assert torch.equal(out, expected)
    g2 = torch.tensor([[5.0, 0.1, 0.0, 0.2], [0.3, 0.0, 6.0, 7.0]])
    out = step(layer, ctrl, opt, g2, 2)  # cached mask from step 1
    assert torch.equal(out, g2 * (expected != 0))
    out = step(layer, ctrl, opt, g2, 3)  # refreshed: |7|, |6|, |5|
    assert torch.equal(out, torch.tensor([[5.0, 0.0, 0.0, 0.0], [0.0, 0.0, 6.0, 7.0]]))
    assert dgm.density("w", 8) == 3 / 8


def test_new_weight_masks_refresh_the_gradient_mask():
    layer, ctrl, dgm, opt, mask = make(every=100)
    g = torch.tensor([[1.0, 2.0, 9.0, 3.0], [4.0, 9.0, 0.5, 0.1]])
    step(layer, ctrl, opt, g, 1)
    ctrl.replace_masks(MaskSet({"w": torch.ones(2, 4, dtype=torch.bool)}), 1)
    out = step(layer, ctrl, opt, g, 2)  # 8 kept weights, keep 4: 9, 9, 4, 3
    assert torch.equal(out, torch.tensor([[0.0, 0.0, 9.0, 3.0], [4.0, 9.0, 0.0, 0.0]]))
    state = dgm.state_dict()
    other = DynamicGradientMask(keep=0.5, every=100)
    other.load_state_dict(state)
    assert other.steps == 2 and torch.equal(other.cached["w"], dgm.cached["w"])
