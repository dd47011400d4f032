"""The update mask: selected entries train, the others keep their values exactly (weight
decay and momentum included); nothing is zeroed; resume re-reads the frozen values."""
import torch
from torch import nn

from sparsity_core import SparsityController, Target
from sparsity_core.criteria import GivenScores
from sparsity_core.masks import MaskSet

from ..loops import train_steps


def controller(opt_cls=torch.optim.AdamW, **kw):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 1))
    scores = torch.arange(12, dtype=torch.float32)  # the 6 entries with the largest index train
    target = Target("0.weight", param=model[0].weight, module_name="0")
    opt = opt_cls(model.parameters(), lr=0.1, **kw)
    ctrl = SparsityController([target], schedule=0.5, criterion=GivenScores({"0.weight": scores}),
                              enforcement="update_mask", model=model, optimizers=[opt], allocator="global")
    return model, opt, ctrl


def test_frozen_entries_keep_their_values_under_decay_and_momentum():
    for opt_cls, kw in ((torch.optim.AdamW, {"weight_decay": 0.5}), (torch.optim.SGD, {"momentum": 0.9, "weight_decay": 0.5})):
        model, opt, ctrl = controller(opt_cls, **kw)
        before = model[0].weight.detach().clone()
        ctrl.update(0, force=True)
        mask = ctrl.masks["0.weight"]
        assert mask.reshape(-1).tolist() == [False] * 6 + [True] * 6
        assert torch.equal(model[0].weight, before)  # nothing zeroed
        train_steps(model, opt, ctrl, 5, (8, 4))
        w = model[0].weight.detach()
        assert torch.equal(w[~mask], before[~mask])
        assert (w[mask] != before[mask]).all()


def test_gradients_of_frozen_entries_are_zeroed_before_the_step():
    model, opt, ctrl = controller()
    ctrl.update(0, force=True)
    mask = ctrl.masks["0.weight"]
    model(torch.randn(5, 4)).sum().backward()
    ctrl.before_optimizer_step(opt)
    assert (model[0].weight.grad[~mask] == 0).all() and (model[0].weight.grad[mask] != 0).all()


def test_resume_reads_the_frozen_values_from_the_restored_weights():
    model, opt, ctrl = controller()
    ctrl.update(0, force=True)
    train_steps(model, opt, ctrl, 2, (8, 4))
    state, weights = ctrl.state_dict(), {k: v.clone() for k, v in model.state_dict().items()}
    model2, opt2, ctrl2 = controller()
    model2.load_state_dict(weights)
    ctrl2.load_state_dict(state)
    assert torch.equal(ctrl2.masks["0.weight"], ctrl.masks["0.weight"])
    train_steps(model2, opt2, ctrl2, 3, (8, 4), start=2)
    mask = ctrl2.masks["0.weight"]
    assert torch.equal(model2[0].weight[~mask], weights["0.weight"][~mask])


def test_mask_overlap_is_the_jaccard_index_of_kept_units():
    a = MaskSet({"w": torch.tensor([True, True, False, False]), "v": torch.tensor([True])})
    b = MaskSet({"w": torch.tensor([True, False, True, False]), "v": torch.tensor([True])})
    assert a.overlap(b) == 2 / 4  # kept: {w0, v0} ∩ {w0, v0} = 2; union {w0, w1, w2, v0} = 4
    assert a.overlap(a) == 1.0
    assert MaskSet({"w": torch.zeros(2, dtype=torch.bool)}).overlap(MaskSet({"w": torch.zeros(2, dtype=torch.bool)})) == 1.0
