"""sparsity_core.ops: parameter replacement with the optimizer state carried along."""
import pytest
import torch
from torch import nn

from sparsity_core.ops import append_rows, rebind_optimizer, replace_parameter, select_rows


class Owner(nn.Module):
    """Parameters at a plain name, in a ParameterList and inside a ModuleList."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor([1.0, 2.0]))
        self.tables = nn.ParameterList([nn.Parameter(torch.zeros(2, 2)), nn.Parameter(torch.arange(8.).view(4, 2))])
        self.layers = nn.ModuleList([nn.Linear(2, 3)])


def stepped(owner, steps=2, opt_cls=torch.optim.Adam, **kw):
    """An optimizer over ``owner`` after ``steps`` steps with fixed gradients."""
    opt = opt_cls([{"params": [owner.scale]}, {"params": list(owner.tables) + list(owner.layers.parameters())}],
                  lr=0.1, **kw)
    for s in range(steps):
        for p in owner.parameters():
            p.grad = torch.arange(p.numel(), dtype=p.dtype).view(p.shape) * (s + 1) - 1.5
        opt.step()
    return opt


def test_select_and_append_rows():
    v = torch.arange(12.).view(4, 3)
    mask = torch.tensor([True, False, False, True])
    assert torch.equal(select_rows(mask)(v), torch.tensor([[0., 1, 2], [9, 10, 11]]))
    assert torch.equal(select_rows(torch.tensor([2, 0]))(v), torch.tensor([[6., 7, 8], [0, 1, 2]]))
    assert torch.equal(select_rows(torch.tensor([False, True, False]), dim=1)(v), torch.tensor([[1.], [4], [7], [10]]))
    assert torch.equal(append_rows(2, fill=-1)(v[:1]), torch.tensor([[0., 1, 2], [-1, -1, -1], [-1, -1, -1]]))
    assert torch.equal(append_rows(1, dim=1)(v[:2]), torch.tensor([[0., 1, 2, 0], [3, 4, 5, 0]]))
    with pytest.raises(ValueError, match="mask of length 3"):
        select_rows(torch.ones(3, dtype=torch.bool))(v)
    with pytest.raises(ValueError):
        select_rows(torch.tensor([0.5]))
    with pytest.raises(ValueError):
        append_rows(-1)


@pytest.mark.parametrize("name", ["tables.1", "layers.0.weight"])
def test_replace_moves_the_parameter_and_its_moments_into_the_same_slot(name):
    owner = Owner()
    opt = stepped(owner)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1)
    old = owner.get_parameter(name)
    group = opt.param_groups[1]
    slot = next(i for i, p in enumerate(group["params"]) if p is old)
    state = {k: v.clone() for k, v in opt.state[old].items()}
    keep = torch.tensor([True, False, True] + [False] * (old.shape[0] - 3))

    new = replace_parameter(owner, name, old.detach()[keep], [opt], select_rows(keep))

    assert owner.get_parameter(name) is new and isinstance(new, nn.Parameter) and new.requires_grad
    assert torch.equal(new, old.detach()[[0, 2]]) and new.grad is None
    assert opt.param_groups[1] is group and group["params"][slot] is new  # in place: the scheduler's groups
    assert old not in opt.state and all(p is not old for p in group["params"])
    assert torch.equal(opt.state[new]["exp_avg"], state["exp_avg"][[0, 2]])
    assert torch.equal(opt.state[new]["exp_avg_sq"], state["exp_avg_sq"][[0, 2]])
    assert float(opt.state[new]["step"]) == 2.0
    for p in owner.parameters():
        p.grad = torch.ones_like(p)
    opt.step()
    sched.step()  # the scheduler still drives the group that now holds the new parameter
    assert group["lr"] == pytest.approx(0.01) and float(opt.state[new]["step"]) == 3.0


def test_a_step_after_replacement_equals_the_dense_step_on_the_kept_rows():
    dense, pruned = Owner(), Owner()
    opt_d, opt_p = stepped(dense), stepped(pruned)
    keep = torch.tensor([3, 1])
    new = replace_parameter(pruned, "tables.1", pruned.tables[1].detach()[keep], opt_p, select_rows(keep))
    grad = torch.tensor([[1., -2], [3, 4], [-5, 6], [7, -8]])
    dense.tables[1].grad, new.grad = grad, grad[keep]
    before = new.detach().clone()
    opt_d.step()
    opt_p.step()
    assert not torch.equal(new.detach(), before)
    assert torch.equal(new.detach(), dense.tables[1].detach()[keep])
    assert float(opt_p.state[new]["step"]) == 3.0


def test_requires_grad_is_kept_and_an_optimizer_not_holding_it_is_left_alone():
    owner = Owner()
    owner.tables[0].requires_grad_(False)
    other = torch.optim.SGD([owner.scale], lr=0.1)
    new = replace_parameter(owner, "tables.0", torch.ones(3, 2, requires_grad=True), [other])
    assert owner.tables[0] is new and not new.requires_grad and new.is_leaf
    assert other.param_groups[0]["params"] == [owner.scale]


def test_without_remap_state_is_kept_for_the_same_shape_and_reset_otherwise():
    owner = Owner()
    opt = stepped(owner, opt_cls=torch.optim.SGD, momentum=0.9)
    momentum = opt.state[owner.scale]["momentum_buffer"]
    kept = replace_parameter(owner, "scale", torch.tensor([5.0, 6.0]), opt)
    assert opt.state[kept]["momentum_buffer"] is momentum
    grown = replace_parameter(owner, "tables.1", torch.zeros(6, 2), opt)
    assert grown not in opt.state and opt.param_groups[1]["params"][1] is grown
    grown.grad = torch.ones(6, 2)
    opt.step()  # re-initialised like a fresh parameter: the buffer is the gradient
    assert torch.equal(opt.state[grown]["momentum_buffer"], torch.ones(6, 2))


def test_append_rows_gives_new_rows_zero_moments():
    owner = Owner()
    opt = stepped(owner)
    old = owner.tables[1]
    moments = opt.state[old]["exp_avg"].clone()
    new = replace_parameter(owner, "tables.1", torch.cat([old.detach(), torch.ones(1, 2)]), [opt], append_rows(1))
    assert torch.equal(opt.state[new]["exp_avg"], torch.cat([moments, torch.zeros(1, 2)]))


def test_invalid_requests_change_nothing():
    owner = Owner()
    opt, other = stepped(owner), torch.optim.Adam([owner.tables[1]])
    other.state[owner.tables[1]] = {"step": torch.tensor(1.), "exp_avg": torch.zeros(4, 2),
                                    "exp_avg_sq": torch.zeros(4, 2)}
    old, state, values = owner.tables[1], opt.state[owner.tables[1]], owner.tables[1].detach().clone()
    for bad in ("tables.7", "nope", "missing.weight", "layers.0"):
        with pytest.raises(ValueError, match="no parameter"):
            replace_parameter(owner, bad, torch.zeros(1))
    with pytest.raises(ValueError, match=r"gave \(3, 2\), expected the new parameter's shape \(2, 2\)"):
        replace_parameter(owner, "tables.1", torch.zeros(2, 2), [opt, other], select_rows(torch.tensor([0, 1, 2])))
    with pytest.raises(ValueError, match="mask of length"):
        replace_parameter(owner, "tables.1", torch.zeros(2, 2), [opt, other], select_rows(torch.ones(3).bool()))
    # fits the first optimizer's state, not the second's: the first must stay untouched too
    with pytest.raises(ValueError, match="gave \\(4, 2\\)"):
        replace_parameter(owner, "tables.1", torch.zeros(2, 2), [opt, other],
                          lambda v: v[:2] if bool(v.abs().sum() > 0) else v)
    with pytest.raises(ValueError, match="other than the current"):
        replace_parameter(owner, "tables.1", old, [opt])
    assert owner.tables[1] is old and torch.equal(old.detach(), values)
    assert opt.state[old] is state and opt.param_groups[1]["params"][1] is old
    assert other.param_groups[0]["params"] == [old] and old in other.state


def test_rebind_optimizer_for_parameters_installed_elsewhere():
    owner = Owner()
    opt = stepped(owner)
    old = owner.layers[0].bias
    moments = opt.state[old]["exp_avg"].clone()
    owner.layers[0].bias = new = nn.Parameter(old.detach()[1:])  # e.g. Torch-Pruning did this
    assert rebind_optimizer(opt, old, new, select_rows(torch.tensor([1, 2])))
    assert opt.param_groups[1]["params"][-1] is new and torch.equal(opt.state[new]["exp_avg"], moments[1:])
    assert not rebind_optimizer(torch.optim.SGD([owner.scale], lr=1.0), old, new)
    with pytest.raises(ValueError):
        rebind_optimizer(opt, new, new)


def test_state_that_cannot_be_remapped_is_reset_with_a_warning():
    owner = Owner()
    opt = stepped(owner, opt_cls=torch.optim.Adafactor)
    old = owner.tables[1]
    assert set(opt.state[old]) == {"step", "row_var", "col_var"}  # factored: (4, 1) and (1, 2)
    with pytest.warns(UserWarning, match="'row_var' of shape \\(4, 1\\)"):
        new = replace_parameter(owner, "tables.1", old.detach()[:2], opt, select_rows(torch.tensor([0, 1])))
    assert new not in opt.state and opt.param_groups[1]["params"][1] is new
