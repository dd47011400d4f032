"""The callback as the one host of programs: stable state keys, loud resumes, one log name
per program, refusals, callable schedules, the optimizer check."""
import pytest
import torch
from pytorch_lightning.callbacks import ModelCheckpoint

from sparsity_core import Constant, Criterion, Cubic, Program, SparsityCallback, SparsityController, Target

from .helpers import TinyModule, loader, trainer


def fit(callbacks, max_steps, ckpt_path=None, model=None, **kw):
    torch.manual_seed(0)
    model = model or TinyModule()
    t = trainer(max_steps=max_steps, callbacks=callbacks, **kw)
    t.fit(model, loader(), ckpt_path=ckpt_path)
    return t, model


class AbsNoRepr(Criterion):  # a user's criterion: no __repr__, so its default repr holds an address
    def score(self, target, context):
        return target.layout.reduce_sum(context.weight(target).abs().float())


def test_state_key_is_stable_for_a_criterion_without_repr_and_resume_restores(tmp_path):
    a = SparsityCallback(Cubic(end_step=12, final_sparsity=0.8), criterion=AbsNoRepr(), update_every=4)
    b = SparsityCallback(Cubic(end_step=12, final_sparsity=0.8), criterion=AbsNoRepr(), update_every=4)
    assert "0x" not in a.state_key and a.state_key == b.state_key
    saver = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=8, save_top_k=-1)
    fit([a, saver], 12, enable_checkpointing=True)
    fit([b], 12, ckpt_path=str(tmp_path / "epoch=1-step=8.ckpt"))
    assert [h["step"] for h in b.controller.history] == [h["step"] for h in a.controller.history]
    for name, mask in a.controller.masks.items():
        assert torch.equal(mask, b.controller.masks[name])


def test_resume_from_a_checkpoint_without_this_callbacks_state_fails_loudly(tmp_path):
    t, _ = fit([SparsityCallback(0.5, include="fc")], 4)
    t.save_checkpoint(tmp_path / "fc.ckpt")
    with pytest.raises(ValueError, match="holds no state for"):
        fit([SparsityCallback(0.5, include="conv")], 6, ckpt_path=str(tmp_path / "fc.ckpt"))


def test_each_callback_logs_under_its_own_name_and_the_overall_once():
    conv = SparsityCallback(0.5, include="conv", name="conv")
    fc = SparsityCallback(0.8, include="fc", name="fc")
    t, model = fit([conv, fc], 2)
    m = t.callback_metrics
    assert float(m["sparsity/conv/global"]) == pytest.approx(0.5, abs=0.02)
    assert float(m["sparsity/fc/global"]) == pytest.approx(0.8, abs=0.001)
    n_conv, n_fc = model.conv.weight.numel(), model.fc.weight.numel()
    zeros = int((model.conv.weight == 0).sum() + (model.fc.weight == 0).sum())
    assert float(m["sparsity/global"]) == pytest.approx(zeros / (n_conv + n_fc), abs=1e-6)


def test_two_callbacks_with_one_name_are_refused():
    with pytest.raises(ValueError, match="distinct names"):
        fit([SparsityCallback(0.5, include="conv"), SparsityCallback(0.5, include="fc")], 1)


def test_two_callbacks_masking_the_same_weight_are_refused_before_any_change():
    torch.manual_seed(0)
    model = TinyModule()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="'fc.weight' is masked by both"):
        fit([SparsityCallback(0.5, include="fc", name="a"), SparsityCallback(0.8, name="b")], 2, model=model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_controller_load_state_dict_validates_the_whole_state_first():
    torch.manual_seed(0)
    model = TinyModule()
    targets = [Target(name="fc.weight", param=model.fc.weight)]
    ctrl = SparsityController(targets, schedule=0.5, model=model)
    ctrl.update(0)
    state = ctrl.state_dict()
    other = SparsityController([Target(name="fc.weight", param=model.fc.weight)], schedule=0.7, model=model)
    other.update(0)
    masks, history = other.masks.state_dict(), list(other.history)
    del state["generator"]
    with pytest.raises(ValueError, match="missing \\['generator'\\]"):
        other.load_state_dict(state)
    assert torch.equal(other.masks["fc.weight"], masks["fc.weight"]) and other.history == history


def test_a_callable_schedule_sets_the_sparsity_at_each_update():
    cb = SparsityCallback(lambda step: 0.25 if step < 4 else 0.5, include="fc", update_every=2)
    fit([cb], 6)
    ctrl = cb.controller
    assert [(h["step"], h["target_sparsity"]) for h in ctrl.history] == [(0, 0.25), (2, 0.25), (4, 0.5), (6, 0.5)]
    assert ctrl.masks.sparsity("fc.weight") == pytest.approx(0.5, abs=1 / ctrl.masks["fc.weight"].numel())


def test_a_callable_schedule_outside_0_1_is_an_error_at_the_update():
    with pytest.raises(ValueError, match=r"schedule\(0\) must be a number in \[0, 1\)"):
        fit([SparsityCallback(lambda step: 1.5)], 1)


def test_skip_head_false_prunes_the_named_last_layer():
    cb = SparsityCallback(0.5, include="head", skip_head=False)
    _, model = fit([cb], 1)
    assert [t.name for t in cb.controller.targets] == ["head.weight"]
    assert int((model.head.weight == 0).sum()) == model.head.weight.numel() // 2


class GateProgram(Program):
    """A program that adds a gate it needs trained."""

    name = "gate"

    def attach(self, host):
        self.gate = torch.nn.Parameter(torch.ones(3))

    def trained_parameters(self):
        return {"gate": self.gate}


def test_parameters_a_program_trains_must_be_in_an_optimizer():
    with pytest.raises(ValueError, match=r"trains \['gate'\] but no optimizer holds them"):
        fit([SparsityCallback(programs=[GateProgram()])], 1)


def test_weight_arguments_without_a_weight_schedule_are_refused():
    with pytest.raises(ValueError, match="criterion configure the weights"):
        SparsityCallback(criterion="taylor", programs=[GateProgram()])


class DenoisingProgram(Program):
    """A program on another clock: the callback checkpoints it but does not step it."""

    name = "denoise"
    clock = "denoising"

    def __init__(self):
        self.calls = 0

    def after_optimizer_step(self, step):
        self.calls += 1

    def state_dict(self):
        return {"calls": self.calls}

    def load_state_dict(self, state):
        self.calls = int(state["calls"])


def test_a_program_on_another_clock_is_checkpointed_but_not_stepped():
    prog = DenoisingProgram()
    cb = SparsityCallback(0.5, programs=[prog])
    fit([cb], 3)
    assert prog.calls == 0 and cb.clock == 3
    prog.after_optimizer_step(1)  # its owner steps it
    assert cb.state_dict()["programs"]["denoise"] == {"calls": 1}


def test_set_task_between_fits_gives_each_task_its_schedule_and_the_clock_goes_on():
    cb = SparsityCallback(Cubic(end_step=4, final_sparsity=0.5), criterion="random", include="fc", update_every=2)
    _, model = fit([cb], 4)
    first = cb.controller.masks["fc.weight"].clone()
    cb.set_task("second")
    trainer(max_steps=4, callbacks=[cb]).fit(model, loader())
    ctrl = cb.controller
    assert cb.clock == 8 and ctrl.task == "second" and ctrl.task_offset == 4
    second = [(h["step"], h["target_sparsity"]) for h in ctrl.history if h["event"] == "update"][-3:]
    assert second == [(4, 0.0), (6, pytest.approx(0.4375)), (8, 0.5)]
    cb.set_task("default")
    assert torch.equal(ctrl.masks["fc.weight"], first)


def test_programs_are_built_by_name_from_a_configuration():
    from sparsity_core.registry import UnknownNameError

    cb = SparsityCallback(programs=[{"program": "weights", "schedule": 0.5, "include": "fc", "name": "fc"}])
    assert cb.programs[0].name == "fc" and cb.programs[0].include == "fc"
    t, model = fit([cb], 1)
    assert float(t.callback_metrics["sparsity/fc/global"]) == 0.5
    with pytest.raises(UnknownNameError, match="Did you mean 'weights'"):
        SparsityCallback(programs=["weight"])
    with pytest.raises(ValueError, match="needs a 'program' key"):
        SparsityCallback(programs=[{"schedule": 0.5}])


def test_plugin_programs_register_through_the_entry_point_group():
    from sparsity_core.registry import PROGRAMS, load_plugins

    load_plugins(force=True)
    assert {"weights", "channels", "ugs", "gtsp", "hashgrid"} <= set(PROGRAMS.names())


def test_wanda_while_training_scores_with_the_training_forwards_inputs():
    """The program observes the inputs of training forwards for a criterion that reads them;
    the statistics restart after every update and travel in the checkpoint state."""
    inputs = []
    cb = SparsityCallback(Constant(sparsity=0.5, start_step=1), criterion="wanda", include="fc", enforcement="ste")
    torch.manual_seed(0)
    model = TinyModule()
    model.fc.register_forward_pre_hook(lambda m, args: inputs.append(args[0].detach().clone()) if m.training else None)
    t = trainer(max_steps=1, callbacks=[cb])
    t.fit(model, loader())
    ctrl = cb.controller
    dense = cb.weights.enforcement.dense["fc.weight"]
    scores = dense.abs().double() * inputs[0].double().pow(2).sum(0).sqrt()
    expected = torch.zeros(scores.numel(), dtype=torch.bool)
    expected[scores.flatten().topk(scores.numel() // 2).indices] = True
    assert torch.equal(ctrl.masks["fc.weight"].flatten(), expected)
    assert len(ctrl.activations) == 0  # reset after the update
    assert "activations" in cb.state_dict()["programs"]["weights"]
    observer = cb.weights.observer
    model.train()
    model(torch.zeros(1, 1, 8, 8))
    assert len(observer) == 1  # a training forward is observed ...
    observer.reset()
    cb.weights.detach()
    model(torch.zeros(1, 1, 8, 8))
    assert len(observer) == 0 and len(inputs) == 3  # ... until the program detaches its hooks
