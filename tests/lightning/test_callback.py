import pytest
import torch
from pytorch_lightning.callbacks import ModelCheckpoint

from sparsity_core import Cubic, HardMask, SparsityCallback
from sparsity_core.registry import UnknownNameError

from .helpers import TinyModule, loader, trainer


def fit(cb, max_steps, ckpt_path=None, model=None, extra=(), **kw):
    torch.manual_seed(0)
    model = model or TinyModule()
    t = trainer(max_steps=max_steps, callbacks=[cb, *extra], **kw)
    t.fit(model, loader(), ckpt_path=ckpt_path)
    return t, model


def test_fit_prunes_on_schedule_and_logs():
    cb = SparsityCallback(Cubic(end_step=8, final_sparsity=0.75), update_every=2)
    t, model = fit(cb, 10)
    ctrl = cb.controller
    assert [h["step"] for h in ctrl.history] == [0, 2, 4, 6, 8]
    assert ctrl.history[-1]["target_sparsity"] == 0.75
    assert float((model.fc.weight == 0).float().mean()) > 0.7
    assert (model.head.weight != 0).all()  # the classifier head is left dense
    assert t.callback_metrics["sparsity/global"] == pytest.approx(ctrl.sparsity("params"))
    assert "sparsity/weights/fc.weight" in t.callback_metrics
    assert t.callback_metrics["sparsity/weights/global"] == pytest.approx(ctrl.sparsity("params"))


@pytest.mark.parametrize("criterion,enforcement", [("random", "ste"), ("taylor", "hard"), ("magnitude", "ste")])
def test_resume_gives_bit_identical_masks(tmp_path, criterion, enforcement):
    def make():
        return SparsityCallback(Cubic(end_step=12, final_sparsity=0.8), criterion=criterion, enforcement=enforcement,
                                update_every=2)

    full_cb = make()
    saver = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=8, save_top_k=-1)
    _, full_model = fit(full_cb, 16, extra=[saver], enable_checkpointing=True)

    resumed_cb = make()
    _, resumed_model = fit(resumed_cb, 16, ckpt_path=tmp_path / "epoch=1-step=8.ckpt")

    a, b = full_cb.controller, resumed_cb.controller
    assert a.history == b.history and a.step == b.step == 16
    for name in a.masks:
        assert torch.equal(a.masks[name], b.masks[name]), name
    for (k, v), (_, w) in zip(full_model.state_dict().items(), resumed_model.state_dict().items()):
        assert torch.equal(v, w), k


def test_checkpoint_holds_plain_model_keys_and_loads_weights_only(tmp_path):
    cb = SparsityCallback(0.5, enforcement="ste")
    t, model = fit(cb, 4)
    t.save_checkpoint(tmp_path / "c.ckpt")
    ckpt = torch.load(tmp_path / "c.ckpt", weights_only=True)
    assert set(ckpt["state_dict"]) == set(TinyModule().state_dict())
    state = next(v for k, v in ckpt["callbacks"].items() if k.startswith("SparsityCallback"))
    assert set(state["programs"]["weights"]["controller"]["masks"]) == {"conv.weight", "fc.weight"}


def test_gradient_accumulation_reapplies_once_per_optimizer_step():
    class Counting(HardMask):
        calls = 0

        def after_optimizer_step(self, ctrl):
            Counting.calls += 1
            super().after_optimizer_step(ctrl)

    cb = SparsityCallback(0.5, enforcement=Counting(), update_every=1)
    t, model = fit(cb, 6, accumulate_grad_batches=2)
    assert t.global_step == 6
    assert Counting.calls == 6  # not 12 (batches)
    m = cb.controller.masks["fc.weight"]
    assert (model.fc.weight[~m] == 0).all()


def test_finalize_gives_a_model_loadable_by_the_plain_class():
    cb = SparsityCallback(0.6, enforcement="ste", finalize=True)
    _, model = fit(cb, 4)
    assert cb.controller.finalized
    plain = TinyModule()
    plain.load_state_dict(model.state_dict())
    zeros = int((plain.fc.weight == 0).sum() + (plain.conv.weight == 0).sum())
    assert zeros == 1188 - 475  # global ranking keeps floor(0.4 * 1188) weights


def test_macs_measure_uses_example_input_array():
    cb = SparsityCallback(0.5, measure="macs", allocator="uniform")
    fit(cb, 1)
    conv = next(t for t in cb.controller.targets if t.name == "conv.weight")
    assert conv.macs_per_unit == 36


def test_bad_arguments_raise_in_init():
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        SparsityCallback(1.0)
    with pytest.raises(UnknownNameError, match="Did you mean 'random'"):
        SparsityCallback(0.5, criterion="randon")
    with pytest.raises(UnknownNameError, match="Valid names"):
        SparsityCallback(0.5, enforcement="soft")
    with pytest.raises(ValueError, match="0 < N < M"):
        SparsityCallback(0.5, layout="4:4")
    with pytest.raises(ValueError, match="update_every"):
        SparsityCallback(0.5, update_every=0)


def test_include_matching_nothing_fails_before_training():
    torch.manual_seed(0)
    model = TinyModule()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="matches no prunable module"):
        fit(SparsityCallback(0.5, include="transformer"), 2, model=model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_resume_with_mismatched_targets_is_an_error(tmp_path):
    t, _ = fit(SparsityCallback(0.5, include="fc"), 4)
    t.save_checkpoint(tmp_path / "fc.ckpt")
    callbacks = torch.load(tmp_path / "fc.ckpt", weights_only=True)["callbacks"]
    fc_only_state = next(iter(callbacks.values()))
    cb = SparsityCallback(0.5)
    fit(cb, 1)
    masks_before = cb.controller.masks.state_dict()
    with pytest.raises(ValueError, match="missing targets \\['conv.weight'\\]"):
        cb.load_state_dict(fc_only_state)
    assert all(torch.equal(masks_before[k], v) for k, v in cb.controller.masks.state_dict().items())
    with pytest.raises(ValueError, match="not a SparsityCallback state"):
        cb.load_state_dict({"masks": {}})


def test_a_callback_is_bound_to_one_model():
    cb = SparsityCallback(0.5)
    _, model = fit(cb, 2)
    events = []
    cb.controller.enforcement.after_optimizer_step = lambda ctrl: events.append(ctrl.step)
    trainer(max_steps=4, callbacks=[cb]).fit(model, loader())  # continuing on the same model is fine
    assert events == [3, 4, 5, 6]  # the callback's clock goes on: a new Trainer does not restart the schedules
    with pytest.raises(ValueError, match="one callback per model"):
        fit(cb, 2)
