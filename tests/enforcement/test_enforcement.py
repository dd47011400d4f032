import pytest
import torch
from torch import nn

from sparsity_core import Cubic, SparsityController, Target, discover_targets
from sparsity_core.enforcement import HardMask, StraightThrough
from sparsity_core.enforcement.base import weight_targets

from ..loops import train_steps


def linear_ctrl(enforcement, sparsity=0.5, lr=0.1, opt_cls=torch.optim.SGD, **opt_kwargs):
    torch.manual_seed(0)
    lin = nn.Linear(4, 2, bias=False)
    model = nn.Sequential(lin, nn.Linear(2, 1))  # lin is not the head
    opt = opt_cls(model.parameters(), lr=lr, **opt_kwargs)
    ctrl = SparsityController(discover_targets(model), schedule=sparsity, enforcement=enforcement,
                              model=model, optimizers=[opt], allocator="uniform")
    return model, lin, opt, ctrl


def train_step(model, opt, ctrl, step):
    train_steps(model, opt, ctrl, 1, (8, 4), start=step, seed=step)


def test_hard_zeroes_weights_grads_and_moments():
    model, lin, opt, ctrl = linear_ctrl("hard", opt_cls=torch.optim.AdamW, weight_decay=0.1)
    train_step(model, opt, ctrl, 1)  # builds Adam state
    ctrl.update(0, force=True)
    mask = ctrl.masks["0.weight"]
    assert int(mask.sum()) == 4
    assert (lin.weight[~mask] == 0).all()
    assert (opt.state[lin.weight]["exp_avg"][~mask] == 0).all()
    for step in range(2, 6):
        train_step(model, opt, ctrl, step)
        assert (lin.weight[~mask] == 0).all()
    # gradients of pruned weights are zeroed before the step
    loss = model(torch.randn(3, 4)).sum()
    opt.zero_grad()
    loss.backward()
    ctrl.before_optimizer_step(opt)
    assert (lin.weight.grad[~mask] == 0).all() and (lin.weight.grad[mask] != 0).any()


def test_gradual_magnitude_pruning_trains_the_same_whether_pruned_moments_are_zeroed_or_stale():
    """Hard masks zero a pruned entry's gradient before and its value after every step, and a
    magnitude criterion never ranks a zero above a kept weight, so gradual pruning's masks only
    grow and its weights do not depend on what happens to the pruned entries' moments: zeroing
    them at a mask update (what the core does) and leaving them stale train bit-identical
    weights (bench/gradual_ablation.py, rows issue2 and opt:keep)."""

    class StaleMoments(HardMask):
        @torch.no_grad()
        def apply_masks(self, ctrl, previous):
            for t in weight_targets(ctrl):
                t.param.data.mul_(self.factor(ctrl, t))

    def train(enforcement):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 1))
        opt = torch.optim.AdamW(model.parameters(), lr=0.05, weight_decay=0.1)
        ctrl = SparsityController(discover_targets(model), Cubic(start_step=2, end_step=20, final_sparsity=0.8),
                                  enforcement=enforcement, update_every=3, model=model, optimizers=[opt])
        train_steps(model, opt, ctrl, 30, (16, 8))
        return model, opt, ctrl

    zeroed, opt_z, ctrl_z = train(HardMask())
    stale, opt_s, ctrl_s = train(StaleMoments())
    assert ctrl_z.sparsity() == pytest.approx(0.8, abs=0.01) and len(ctrl_z.history) == 7
    for a, b in zip(zeroed.parameters(), stale.parameters()):
        assert torch.equal(a, b)
    w_z, w_s = zeroed[0].weight, stale[0].weight
    pruned = ~ctrl_z.masks["0.weight"]
    assert torch.equal(ctrl_z.masks["0.weight"], ctrl_s.masks["0.weight"])
    assert (opt_z.state[w_z]["exp_avg"][pruned] == 0).all()
    assert (opt_s.state[w_s]["exp_avg"][pruned] != 0).any()  # the moments did differ


def test_ste_keeps_dense_weights_and_masks_forward():
    model, lin, opt, ctrl = linear_ctrl("ste")
    ctrl.update(0, force=True)
    mask = ctrl.masks["0.weight"]
    enf = ctrl.enforcement
    dense_before = enf.dense["0.weight"].clone()
    assert (lin.weight[~mask] == 0).all()
    assert torch.equal(lin.weight.data, dense_before * mask)
    # one step: the dense update equals  w - lr * grad taken at the masked weights
    x = torch.randn(8, 4)
    loss = model(x).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    grad = lin.weight.grad.clone()
    assert (grad[~mask] != 0).any()  # straight-through: pruned weights get gradients
    ctrl.before_optimizer_step(opt)
    opt.step()
    ctrl.after_optimizer_step(1)
    assert torch.allclose(enf.dense["0.weight"], dense_before - 0.1 * grad)
    assert torch.equal(lin.weight.data, enf.dense["0.weight"] * mask)


def test_ste_scores_dense_weights_so_pruned_ones_can_return():
    model, lin, opt, ctrl = linear_ctrl("ste")
    ctrl.update(0, force=True)
    mask = ctrl.masks["0.weight"].clone()
    pruned = (~mask).nonzero()[0].tolist()
    ctrl.enforcement.dense["0.weight"][tuple(pruned)] = 100.0
    ctrl.update(1, force=True)
    assert ctrl.masks["0.weight"][tuple(pruned)]


def test_finalize_leaves_plain_sparse_weights():
    model, lin, opt, ctrl = linear_ctrl("ste")
    ctrl.update(0, force=True)
    for step in range(1, 4):
        train_step(model, opt, ctrl, step)
    ctrl.finalize()
    assert ctrl.enforcement.dense == {}
    assert float((lin.weight == 0).float().mean()) == 0.5
    before = lin.weight.clone()
    train_step(model, opt, ctrl, 5)  # masks no longer act after finalize
    assert not torch.equal(before, lin.weight)
    fresh = nn.Sequential(nn.Linear(4, 2, bias=False), nn.Linear(2, 1))
    fresh.load_state_dict(model.state_dict())  # same keys as the unmodified class


def test_enforcement_state_round_trip():
    model, lin, opt, ctrl = linear_ctrl("ste")
    ctrl.update(0, force=True)
    s = StraightThrough()
    s.load_state_dict(ctrl.enforcement.state_dict())
    assert torch.equal(s.dense["0.weight"], ctrl.enforcement.dense["0.weight"])
    assert HardMask().state_dict() == {}


def test_projected_l0_steps_densely_then_projects_onto_the_l0_ball():
    model, lin, opt, ctrl = linear_ctrl("projected_l0", sparsity=0.5, lr=0.1)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, -2.0, 3.0, -4.0], [0.5, 6.0, -7.0, 0.1]]))
    ctrl.update(0, force=True)
    assert lin.weight.tolist() == [[0.0, 0.0, 3.0, -4.0], [0.0, 6.0, -7.0, 0.0]]
    for p in model.parameters():
        p.grad = None
    lin.weight.grad = torch.tensor([[0.0, 0.0, 0.0, 0.0], [-90.0, 0.0, 0.0, 0.0]])
    ctrl.before_optimizer_step(opt)
    assert lin.weight.grad[1, 0] == -90.0  # gradients of pruned weights are kept
    opt.step()  # w[1,0] = 0 + 0.1 * 90 = 9: now among the 4 largest magnitudes, 3.0 is not
    ctrl.after_optimizer_step(1)
    assert lin.weight.tolist() == [[0.0, 0.0, 0.0, -4.0], [9.0, 6.0, -7.0, 0.0]]
    assert ctrl.masks["0.weight"].tolist() == [[False, False, False, True], [True, True, True, False]]


def test_weight_enforcements_refuse_targets_without_a_parameter_and_masks_acts_on_nothing():
    edges = Target(name="edges", shape=(6,))
    with pytest.raises(ValueError, match=r"HardMask masks parameters, but \['edges'\] have none"):
        SparsityController([edges], 0.5)
    with pytest.raises(ValueError, match="use enforcement='masks'"):
        SparsityController([edges], 0.5, enforcement="ste")
    lin = torch.nn.Linear(3, 2)
    before = lin.weight.detach().clone()
    ctrl = SparsityController([edges, Target(name="w", param=lin.weight)], 0.5, criterion="random",
                              enforcement="masks")
    ctrl.update(0)
    assert ctrl.masks.kept("edges") + ctrl.masks.kept("w") == 6  # one global budget over both
    assert torch.equal(lin.weight, before)  # the masks were computed, nothing was zeroed
