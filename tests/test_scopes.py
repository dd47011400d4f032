"""Task scopes: each task of a stream keeps its masks, criterion state and schedule clock."""
import pytest
import torch
from torch import nn

from sparsity_core import Linear, RandomScores, SparsityController, Target


def controller(seed=0):
    torch.manual_seed(seed)
    fc = nn.Linear(8, 4)
    ctrl = SparsityController([Target(name="fc.weight", param=fc.weight)],
                              schedule=Linear(start_step=0, end_step=4, final_sparsity=0.75),
                              criterion=RandomScores(seed=1), enforcement="ste", update_every=2, model=fc)
    return ctrl


def run(ctrl, steps):
    for step in steps:
        ctrl.after_optimizer_step(step)


def test_each_task_keeps_its_masks_and_its_own_schedule_clock():
    ctrl = controller()
    ctrl.update(0)
    run(ctrl, range(1, 5))
    a_masks = ctrl.masks.state_dict()
    assert ctrl.masks.sparsity("fc.weight") == 0.75
    ctrl.set_task("b", step=4)
    assert not ctrl.masks and ctrl.local_step(4) == 0
    ctrl.update(4)
    run(ctrl, range(5, 9))
    b_updates = [(h["step"], h["target_sparsity"]) for h in ctrl.history if h.get("event") == "update"][-3:]
    assert b_updates == [(4, 0.0), (6, 0.375), (8, 0.75)]  # b's schedule ran from its own step 0
    assert not torch.equal(ctrl.masks["fc.weight"].cpu(), a_masks["fc.weight"])  # other random draws
    ctrl.set_task("default", step=9)
    assert torch.equal(ctrl.masks["fc.weight"].cpu(), a_masks["fc.weight"])
    assert ctrl.local_step(9) == 4  # a's clock continues where it stopped (its schedule is over)
    assert ctrl.update(10) is False


def test_task_scopes_survive_state_dict():
    ctrl = controller()
    ctrl.update(0)
    run(ctrl, range(1, 5))
    ctrl.set_task("b", step=4)
    ctrl.update(4)
    b_masks = ctrl.masks.state_dict()
    state = ctrl.state_dict()
    fresh = controller()
    fresh.load_state_dict(state)
    assert fresh.task == "b" and fresh.task_offset == 4 and set(fresh.scopes) == {"default"}
    fresh.set_task("default", step=5)
    ctrl.set_task("default", step=5)
    assert torch.equal(fresh.masks["fc.weight"], ctrl.masks["fc.weight"])
    fresh.set_task("b", step=6)
    assert torch.equal(fresh.masks["fc.weight"].cpu(), b_masks["fc.weight"])


def test_a_task_must_be_named():
    with pytest.raises(ValueError, match="non-empty string"):
        controller().set_task(3)
