import math

import pytest
import torch
from torch import nn

from sparsity_core import (SRSTE, Constant, DecayingMask, PruneRegrow, SoftShrink, SparsityController, StepwiseNM,
                           Target, discover_targets)
from sparsity_core.layouts import NM

from ..loops import train_steps


def one_linear(weight, layout=None):
    lin = nn.Linear(len(weight[0]), len(weight), bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor(weight))
    model = nn.Sequential(lin, nn.Linear(len(weight), 1))
    return model, lin


def test_sr_ste_gradient_is_dense_gradient_plus_decay():
    model, lin = one_linear([[1.0, -2.0, 3.0, 0.5]])
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    ctrl = SparsityController(discover_targets(model, layout="2:4"), 0.5, enforcement=SRSTE(decay=0.1),
                              model=model, optimizers=[opt])
    ctrl.update(0)
    assert ctrl.masks["0.weight"].tolist() == [[False, True, True, False]]
    assert lin.weight.tolist() == [[0.0, -2.0, 3.0, 0.0]]
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    lin(x).sum().backward()  # dL/dw~ = x
    ctrl.before_optimizer_step(opt)
    # dense weights are in the parameter for the step; grad = x + 0.1 * (1 - m) * w
    assert lin.weight.tolist() == [[1.0, -2.0, 3.0, 0.5]]
    assert torch.allclose(lin.weight.grad, torch.tensor([[1.1, 2.0, 3.0, 4.05]]))


def test_sr_ste_decoupled_shrinks_pruned_dense_weights_by_lr_times_decay():
    model, lin = one_linear([[1.0, -2.0, 3.0, 0.5]])
    opt = torch.optim.SGD([{"params": [lin.weight], "lr": 0.5}, {"params": model[1].parameters(), "lr": 0.0}])
    enf = SRSTE(decay=0.1, decoupled=True)
    ctrl = SparsityController(discover_targets(model, layout="2:4"), 0.5, enforcement=enf, model=model,
                              optimizers=[opt])
    ctrl.update(0)
    assert ctrl.masks["0.weight"].tolist() == [[False, True, True, False]]
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    lin(x).sum().backward()  # dL/dw~ = x
    ctrl.before_optimizer_step(opt)
    # the gradient is the plain straight-through one; pruned dense weights shrunk by 1 - 0.5 * 0.1
    assert torch.equal(lin.weight.grad, x)
    assert torch.allclose(lin.weight, torch.tensor([[0.95, -2.0, 3.0, 0.475]]))
    opt.step()
    ctrl.after_optimizer_step(1)
    dense = ctrl.enforcement.dense_weight(ctrl.target_map["0.weight"])
    assert torch.allclose(dense, torch.tensor([[0.45, -3.0, 1.5, -1.525]]))
    assert torch.allclose(lin.weight, torch.tensor([[0.0, -3.0, 1.5, 0.0]]))


@pytest.mark.parametrize("decoupled", [False, True])
def test_sr_ste_under_adam_matches_the_formula(decoupled):
    """Coupled: Adam steps on g + λ(1-m)w. Decoupled: w(1 - ηλ(1-m)), then Adam on g alone."""
    w0 = torch.tensor([[1.0, -2.0, 3.0, 0.5]])
    m = torch.tensor([[0.0, 1.0, 1.0, 0.0]])
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    lr, lam = 0.01, 0.5
    model, lin = one_linear(w0.tolist())
    opt = torch.optim.Adam(lin.parameters(), lr=lr)
    ctrl = SparsityController(discover_targets(model, layout="2:4"), 0.5,
                              enforcement=SRSTE(decay=lam, decoupled=decoupled), model=model, optimizers=[opt])
    ctrl.update(0)
    ref = w0.clone().requires_grad_(True)
    ref_opt = torch.optim.Adam([ref], lr=lr)
    for step in range(1, 4):
        opt.zero_grad()
        lin(x).sum().backward()
        ctrl.before_optimizer_step(opt)
        opt.step()
        ctrl.after_optimizer_step(step)
        with torch.no_grad():
            if decoupled:
                ref.mul_(1.0 - lr * lam * (1.0 - m))
                ref.grad = x.clone()
            else:
                ref.grad = x + lam * (1.0 - m) * ref
        ref_opt.step()
    dense = ctrl.enforcement.dense_weight(ctrl.target_map["0.weight"])
    assert torch.allclose(dense, ref.detach(), rtol=1e-6, atol=1e-7)
    assert ctrl.masks["0.weight"].tolist() == [[False, True, True, False]]


def test_sr_ste_options_are_validated():
    with pytest.raises(ValueError, match="decoupled must be True or False"):
        SRSTE(decoupled=1)
    with pytest.raises(ValueError, match="decay"):
        SRSTE(decay=-1.0)
    assert repr(SRSTE(1e-3, decoupled=True)) == "SRSTE(decay=0.001, decoupled=True)"
    assert repr(SRSTE()) == "SRSTE(decay=0.0002)"


def test_nm_training_keeps_exactly_n_per_group():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 8), nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    ctrl = SparsityController(discover_targets(model, layout="1:4"), Constant(sparsity=0.75, end_step=20),
                              enforcement="sr_ste", update_every=1, model=model, optimizers=[opt])
    ctrl.update(0)
    for step in range(1, 21):
        model(torch.randn(4, 16)).pow(2).mean().backward()
        ctrl.before_optimizer_step(opt)
        opt.step()
        opt.zero_grad()
        ctrl.after_optimizer_step(step)
    for name in ("0.weight", "2.weight"):
        w = dict(model.named_parameters())[name]
        groups = (w != 0).reshape(w.shape[0], -1, 4).sum(-1)
        assert (groups == 1).all()
    assert len(ctrl.history) == 21


@pytest.mark.parametrize("decay,expected", [
    ("linear", [1.0, 0.75, 0.5, 0.25, 0.0, 0.0]),
    ("step", [1.0, 1.0, 0.5, 0.5, 0.0, 0.0]),
    ("exponential", [1.0] + [(math.exp(-5 * p) - math.exp(-5)) / (1 - math.exp(-5)) for p in (0.25, 0.5, 0.75)]
     + [0.0, 0.0]),
])
def test_decaying_mask_beta(decay, expected):
    d = DecayingMask(decay=decay, start_step=0, end_step=4, stages=2)
    assert [d.beta(s) for s in range(6)] == pytest.approx(expected)


def test_decaying_mask_forward_and_gradient():
    model, lin = one_linear([[1.0, -2.0, 3.0, 0.5]])
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    enf = DecayingMask(decay="linear", start_step=0, end_step=4)
    ctrl = SparsityController(discover_targets(model, layout="2:4"), 0.5, enforcement=enf, model=model,
                              optimizers=[opt])
    ctrl.update(0)
    ctrl.after_optimizer_step(1)  # beta(1) = 0.75 for the next forward
    assert torch.allclose(lin.weight, torch.tensor([[0.75, -2.0, 3.0, 0.375]]))
    lin(torch.tensor([[1.0, 1.0, 1.0, 1.0]])).sum().backward()
    ctrl.before_optimizer_step(opt)
    assert torch.allclose(lin.weight.grad, torch.tensor([[0.75, 1.0, 1.0, 0.75]]))


def test_stepwise_nm_moves_through_patterns():
    sched = StepwiseNM(m=8, n_stages=(4, 2, 1), steps_per_stage=3, start_step=1)
    assert [sched.value(s) for s in (0, 1, 3, 4, 7, 100)] == [0.0, 0.5, 0.5, 0.75, 0.875, 0.875]
    assert sched.layout_at(4) == NM(2, 8) and sched.end_step == 7
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 4), nn.Linear(4, 2))
    ctrl = SparsityController(discover_targets(model), sched, enforcement="ste", update_every=100, model=model)
    per_group = []
    for step in range(0, 9):
        if ctrl.update(step):
            w = model[0].weight
            per_group.append(int((w != 0).reshape(4, 2, 8).sum(-1).max()))
    assert per_group == [4, 2, 1]


def test_stepwise_nm_validation():
    with pytest.raises(ValueError, match="must decrease"):
        StepwiseNM(m=8, n_stages=(2, 4))
    with pytest.raises(ValueError, match="0 < N < M"):
        StepwiseNM(m=8, n_stages=(8, 4))
    model = nn.Sequential(nn.Linear(12, 4), nn.Linear(4, 2))
    with pytest.raises(ValueError, match="not divisible by M=8"):
        SparsityController(discover_targets(model), StepwiseNM(m=8))


def test_soft_shrink_shrinks_pruned_weights_and_finalize_zeroes():
    model, lin = one_linear([[1.0, -2.0, 3.0, 0.5]])
    ctrl = SparsityController(discover_targets(model), 0.5, enforcement=SoftShrink(shrink=0.25), model=model,
                              allocator="uniform")
    ctrl.update(0)
    assert lin.weight.tolist() == [[0.75, -2.0, 3.0, 0.375]]
    ctrl.finalize()
    assert lin.weight.tolist() == [[0.0, -2.0, 3.0, 0.0]]


def dst_setup(regrow, redistribute=False, seed=0, every=2, sparsity=0.75):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 2))
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    enf = PruneRegrow(regrow=regrow, every=every, drop_fraction=0.5, end_step=20, redistribute=redistribute)
    ctrl = SparsityController(discover_targets(model), sparsity, criterion="random", allocator="erk",
                              enforcement=enf, model=model, optimizers=[opt])
    ctrl.update(0)
    return model, opt, ctrl


def run_steps(model, opt, ctrl, steps, start=1):
    train_steps(model, opt, ctrl, steps, (16, 8), start=start, seed=start)


@pytest.mark.parametrize("regrow", ["random", "gradient", "hebbian"])
def test_prune_regrow_keeps_count_and_regrown_weights_start_at_zero(regrow):
    model, opt, ctrl = dst_setup(regrow)
    counts = {k: int(m.sum()) for k, m in ctrl.masks.items()}
    params = dict(model.named_parameters())
    for step in range(1, 9):
        before = {k: m.clone() for k, m in ctrl.masks.items()}
        run_steps(model, opt, ctrl, 1, start=step)
        assert {k: int(m.sum()) for k, m in ctrl.masks.items()} == counts
        for k, m in ctrl.masks.items():
            grown = m & ~before[k]
            assert (params[k].data[grown] == 0).all()
            assert (opt.state[params[k]]["exp_avg"][grown] == 0).all()
            assert (params[k].data[~m] == 0).all()
    events = [h for h in ctrl.history if h["event"] == "prune_regrow"]
    assert [h["step"] for h in events] == [2, 4, 6, 8]
    assert all(h["changed"] > 0 for h in events)


def test_cosine_drop_fraction():
    enf = PruneRegrow(regrow="random", every=10, drop_fraction=0.4, end_step=100)
    assert enf.drop_fraction_at(0) == pytest.approx(0.4)
    assert enf.drop_fraction_at(50) == pytest.approx(0.2)
    assert enf.drop_fraction_at(100) == pytest.approx(0.0)
    assert [s for s in range(0, 130) if enf.is_regrow_step(s)] == list(range(10, 101, 10))


def test_gradient_regrowth_picks_largest_dense_gradients():
    p = nn.Parameter(torch.tensor([[4.0, 3.0, 0.0, 0.0, 0.0, 0.0]]))
    t = Target("w", param=p)
    enf = PruneRegrow(regrow="gradient", every=1, drop_fraction=0.5, decay="constant")
    opt = torch.optim.SGD([p], lr=0.0)
    ctrl = SparsityController([t], Constant(sparsity=2 / 3), enforcement=enf, optimizers=[opt],
                              allocator="uniform")
    ctrl.update(0)
    assert ctrl.masks["w"].tolist() == [[True, True, False, False, False, False]]
    p.grad = torch.tensor([[0.0, 0.0, 0.1, -5.0, 0.2, 0.3]])
    ctrl.before_optimizer_step(opt)
    opt.step()
    ctrl.after_optimizer_step(1)
    # drops the smaller active weight (3.0), regrows the largest |grad| (index 3)
    assert ctrl.masks["w"].tolist() == [[True, False, False, True, False, False]]
    assert p.data.tolist() == [[4.0, 0.0, 0.0, 0.0, 0.0, 0.0]]


def test_redistribution_moves_units_between_layers_at_constant_total():
    a = nn.Parameter(torch.tensor([[0.1, 0.2, 0.0, 0.0]]))  # small active weights
    b = nn.Parameter(torch.tensor([[5.0, 6.0, 0.0, 0.0]]))  # large active weights
    targets = [Target("a", param=a), Target("b", param=b)]
    opt = torch.optim.SGD([a, b], lr=0.0)
    enf = PruneRegrow(regrow="gradient", every=1, drop_fraction=0.5, decay="constant", redistribute=True)
    ctrl = SparsityController(targets, Constant(sparsity=0.5), enforcement=enf, optimizers=[opt], allocator="uniform")
    ctrl.update(0)
    a.grad = torch.tensor([[0.0, 0.0, 0.1, 0.1]])
    b.grad = torch.tensor([[0.0, 0.0, 3.0, 2.0]])
    ctrl.before_optimizer_step(opt)
    opt.step()
    ctrl.after_optimizer_step(1)
    # 2 of 4 active units move: the globally smallest unprotected ones (a's 0.1, b's 5.0; each target's
    # largest is protected) drop, the two largest gradients anywhere (both in b) grow: a 2 -> 1, b 2 -> 3
    assert ctrl.masks["a"].tolist() == [[False, True, False, False]]
    assert ctrl.masks["b"].tolist() == [[False, True, True, True]]
    assert sum(int(m.sum()) for m in ctrl.masks.values()) == 4


@pytest.mark.parametrize("kwargs,msg", [
    (dict(drop_fraction=0.0), r"drop_fraction must be in \(0, 1\)"),
    (dict(drop_fraction=1.0), r"drop_fraction must be in \(0, 1\)"),
    (dict(regrow="momentum"), "regrow must be one of random, gradient, hebbian"),
    (dict(every=0), "every"),
    (dict(end_step=None), "needs end_step"),
])
def test_prune_regrow_argument_errors(kwargs, msg):
    args = dict(regrow="random", every=10, drop_fraction=0.3, end_step=100)
    args.update(kwargs)
    with pytest.raises(ValueError, match=msg):
        PruneRegrow(**args)


def test_regrowth_needing_what_is_missing_fails_at_construction():
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 2))
    with pytest.raises(ValueError, match="pass the controller's model="):
        SparsityController(discover_targets(model), 0.5, enforcement=PruneRegrow("hebbian", end_step=100))
    model[0].weight.requires_grad_(False)
    targets = [Target("0.weight", param=model[0].weight, module_name="0")]
    with pytest.raises(ValueError, match="needs gradients"):
        SparsityController(targets, 0.5, enforcement=PruneRegrow("gradient", end_step=100))
    model2 = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 2))
    with pytest.raises(ValueError, match="fixed N:M pattern"):
        SparsityController(discover_targets(model2, layout="2:4"), 0.5, enforcement=PruneRegrow("random", end_step=900))


def test_decaying_mask_with_sr_ste_is_a_two_part_regime():
    from sparsity_core import Regime

    model, lin = one_linear([[1.0, -2.0, 3.0, 0.5]])
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    regime = Regime(DecayingMask(decay="linear", start_step=0, end_step=4), SRSTE(decay=0.1))
    ctrl = SparsityController(discover_targets(model, layout="2:4"), 0.5, enforcement=regime, model=model,
                              optimizers=[opt])
    ctrl.update(0)
    ctrl.after_optimizer_step(1)
    lin(torch.tensor([[1.0, 1.0, 1.0, 1.0]])).sum().backward()
    ctrl.before_optimizer_step(opt)
    # β(1) = 0.75 scales the pruned gradients, then λ(1 − m)w is added: 0.75 + 0.1·1, 0.75 + 0.1·0.5
    assert torch.allclose(lin.weight.grad, torch.tensor([[0.85, 1.0, 1.0, 0.8]]))


def test_rigl_on_straight_through_keeps_the_count_and_the_pruned_dense_weights():
    """A combination no class was written for: regrowth by gradient under STE."""
    from sparsity_core import Regime, StraightThrough

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    regime = Regime(StraightThrough(), PruneRegrow("gradient", every=2, drop_fraction=0.5, decay="constant"))
    ctrl = SparsityController(discover_targets(model), 0.5, enforcement=regime, model=model, optimizers=[opt])
    ctrl.update(0)
    first = ctrl.masks["0.weight"].clone()
    train_steps(model, opt, ctrl, 4, (4, 8))
    mask = ctrl.masks["0.weight"]
    assert [h["event"] for h in ctrl.history] == ["update", "prune_regrow", "prune_regrow"]
    assert int(mask.sum()) == int(first.sum()) == 32 and not torch.equal(mask, first)
    dense = regime.dense["0.weight"]
    assert (dense[~mask] != 0).any()  # STE: pruned weights keep their values and may return
    assert torch.equal(model[0].weight.data, dense * mask)


def test_a_regime_needs_an_action_and_parts_of_the_right_kind():
    from sparsity_core import HardMask, Regime

    with pytest.raises(ValueError, match="needs a mask action"):
        Regime()
    with pytest.raises(TypeError, match="parts must be RegimePart"):
        Regime(HardMask(), HardMask())
    assert isinstance(Regime(SRSTE()).action, __import__("sparsity_core").StraightThrough)
