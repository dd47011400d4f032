import pytest
import torch

from sparsity_core import Cubic, GlobalRank, Iterative, SparsityController, discover_targets
from sparsity_core.criteria import Criterion
from sparsity_core.registry import UnknownNameError

from .loops import train_steps


def loop(model, opt, ctrl, steps, start=1):
    train_steps(model, opt, ctrl, steps, (8, 1, 8, 8), start=start)


def test_cubic_schedule_reaches_final_sparsity_at_update_steps(tiny_net):
    opt = torch.optim.SGD(tiny_net.parameters(), lr=0.01)
    ctrl = SparsityController(discover_targets(tiny_net), Cubic(end_step=20, final_sparsity=0.8), update_every=5,
                              model=tiny_net, optimizers=[opt])
    loop(tiny_net, opt, ctrl, 25)
    assert [h["step"] for h in ctrl.history] == [5, 10, 15, 20]
    assert ctrl.history[-1]["target_sparsity"] == 0.8
    assert ctrl.sparsity("units") == pytest.approx(0.8, abs=1 / 324)
    zeros = sum(int((t.param == 0).sum()) for t in ctrl.targets)
    assert zeros == sum(t.num_units for t in ctrl.targets) - sum(int(m.sum()) for m in ctrl.masks.values())


@pytest.mark.parametrize("kwargs,err,msg", [
    (dict(criterion="magnitud"), UnknownNameError, "Did you mean 'magnitude'"),
    (dict(allocator="globl"), UnknownNameError, "Did you mean 'global'"),
    (dict(enforcement="hrd"), UnknownNameError, "Did you mean 'hard'"),
    (dict(update_every=0), ValueError, "update_every"),
    (dict(measure="flops"), ValueError, "units, params, macs"),
    (dict(schedule=1.2), ValueError, r"\[0, 1\)"),
    (dict(allocator=GlobalRank(min_keep_fraction=0.5), schedule=0.9), ValueError, "infeasible budget"),
])
def test_bad_configuration_raises_before_any_change(tiny_net, kwargs, err, msg):
    before = {k: v.clone() for k, v in tiny_net.state_dict().items()}
    args = dict(schedule=0.5)
    args.update(kwargs)
    with pytest.raises(err, match=msg):
        SparsityController(discover_targets(tiny_net), **args)
    assert all(torch.equal(before[k], v) for k, v in tiny_net.state_dict().items())


class NaNScores(Criterion):
    def score(self, target, context):
        s = torch.ones(target.num_units)
        s[0] = float("nan")
        return s


def test_nan_scores_are_an_error_and_leave_model_untouched(tiny_net):
    ctrl = SparsityController(discover_targets(tiny_net), 0.5, criterion=NaNScores())
    before = {k: v.clone() for k, v in tiny_net.state_dict().items()}
    with pytest.raises(ValueError, match="NaN/Inf score"):
        ctrl.update(0)
    assert not ctrl.masks
    assert all(torch.equal(before[k], v) for k, v in tiny_net.state_dict().items())


def test_state_round_trip_and_mismatch(tiny_net):
    opt = torch.optim.SGD(tiny_net.parameters(), lr=0.01)
    ctrl = SparsityController(discover_targets(tiny_net), 0.5, criterion="random", model=tiny_net, optimizers=[opt])
    ctrl.update(0)
    state = ctrl.state_dict()
    other = SparsityController(discover_targets(tiny_net), 0.5, criterion="random")
    other.load_state_dict(state)
    assert all(torch.equal(other.masks[k], ctrl.masks[k]) for k in ctrl.masks)
    assert other.last_update_step == 0 and other.history == ctrl.history
    # the random generator continues where it was
    assert torch.equal(other.criterion.score(other.targets[0], other.context()),
                       ctrl.criterion.score(ctrl.targets[0], ctrl.context()))
    only_fc = SparsityController(discover_targets(tiny_net, include="fc"), 0.5)
    with pytest.raises(ValueError, match="unexpected targets \\['conv.weight'\\]"):
        only_fc.load_state_dict(state)
    assert not only_fc.masks


def test_state_is_loadable_with_weights_only(tmp_path, tiny_net):
    ctrl = SparsityController(discover_targets(tiny_net), Iterative(final_sparsity=0.5, rounds=1, steps_per_round=2,
                                                                   rewind_step=0), model=tiny_net, enforcement="ste")
    ctrl.update(0)
    ctrl.update(2)
    torch.save(ctrl.state_dict(), tmp_path / "s.pt")
    loaded = torch.load(tmp_path / "s.pt", weights_only=True)
    assert loaded["snapshot"] is not None and set(loaded["masks"]) == {"conv.weight", "fc.weight"}


def test_lottery_ticket_rewind_restores_kept_weights(tiny_net):
    opt = torch.optim.SGD(tiny_net.parameters(), lr=0.1, momentum=0.9)
    sched = Iterative(final_sparsity=0.75, rounds=2, steps_per_round=4, rewind_step=1)
    ctrl = SparsityController(discover_targets(tiny_net), sched, model=tiny_net, optimizers=[opt])
    loop(tiny_net, opt, ctrl, 1)
    snap = {k: v.clone() for k, v in tiny_net.state_dict().items()}
    assert all(torch.equal(snap[k], v) for k, v in ctrl.snapshot.items())
    loop(tiny_net, opt, ctrl, 3, start=2)  # step 4: round 1 prunes 50% then rewinds
    assert [h["step"] for h in ctrl.history] == [4]
    m = ctrl.masks["fc.weight"]
    assert torch.equal(tiny_net.fc.weight.data, snap["fc.weight"] * m)
    assert torch.equal(tiny_net.fc.bias.data, snap["fc.bias"])  # everything rewinds
    assert opt.state == {} or all(len(s) == 0 for s in opt.state.values())
    loop(tiny_net, opt, ctrl, 4, start=5)
    assert ctrl.history[-1]["target_sparsity"] == pytest.approx(0.75)
    assert torch.equal(tiny_net.fc.weight.data, snap["fc.weight"] * ctrl.masks["fc.weight"])


def test_rewind_without_model_is_an_error(tiny_net):
    ctrl = SparsityController(discover_targets(tiny_net), Iterative(rounds=1, steps_per_round=2, rewind_step=0))
    with pytest.raises(ValueError, match="model="):
        ctrl.update(0)


def test_taylor_needs_observed_gradients(tiny_net):
    opt = torch.optim.SGD(tiny_net.parameters(), lr=0.01)
    ctrl = SparsityController(discover_targets(tiny_net), Cubic(end_step=4, final_sparsity=0.5), criterion="taylor",
                              update_every=2, model=tiny_net, optimizers=[opt])
    with pytest.raises(ValueError, match="before any training step"):
        SparsityController(discover_targets(tiny_net), 0.5, criterion="taylor")
    ctrl.update(0)  # Cubic is at 0% at step 0: dense masks, no scores needed
    assert ctrl.history[0]["sparsity"] == 0.0
    loop(tiny_net, opt, ctrl, 4)
    assert [h["step"] for h in ctrl.history] == [0, 2, 4]


def test_mask_change_fraction_recorded(tiny_net):
    ctrl = SparsityController(discover_targets(tiny_net), Cubic(end_step=2, final_sparsity=0.5), update_every=1,
                              criterion="random")
    for s in range(3):
        ctrl.update(s)
    assert "changed" not in ctrl.history[0] and 0 < ctrl.history[2]["changed"] < 1


def test_rewind_under_ste_resets_the_dense_weights(tiny_net):
    opt = torch.optim.SGD(tiny_net.parameters(), lr=0.1)
    sched = Iterative(final_sparsity=0.75, rounds=2, steps_per_round=2, rewind_step=1)
    ctrl = SparsityController(discover_targets(tiny_net), sched, enforcement="ste", model=tiny_net,
                              optimizers=[opt])
    loop(tiny_net, opt, ctrl, 1)
    snap = tiny_net.fc.weight.detach().clone()
    loop(tiny_net, opt, ctrl, 3, start=2)  # step 2: round 1; step 4: round 2 rewinds with dense weights held
    assert torch.equal(ctrl.enforcement.dense["fc.weight"], snap)
    assert torch.equal(tiny_net.fc.weight.data, snap * ctrl.masks["fc.weight"])
