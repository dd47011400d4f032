"""Sparse-training regimes behind the same callback: resume, per-target configuration."""
import pytest
import torch
from pytorch_lightning.callbacks import ModelCheckpoint

from sparsity_core import SRSTE, Constant, DecayingMask, PruneRegrow, RandomScores, SparsityCallback, StepwiseNM

from .helpers import TinyModule, loader, trainer


def fit(callbacks, max_steps, ckpt_path=None, **kw):
    torch.manual_seed(0)
    model = TinyModule()
    t = trainer(max_steps=max_steps, callbacks=callbacks, **kw)
    t.fit(model, loader(), ckpt_path=ckpt_path)
    return t, model


REGIMES = {
    "set": lambda: SparsityCallback(0.8, criterion=RandomScores(seed=1), allocator="erk",
                                    enforcement=PruneRegrow("random", every=2, end_step=14)),
    "rigl": lambda: SparsityCallback(0.8, criterion="random", allocator="erk",
                                     enforcement=PruneRegrow("gradient", every=2, end_step=14, redistribute=True)),
    "hebbian": lambda: SparsityCallback(0.8, enforcement=PruneRegrow("hebbian", every=3, end_step=14)),
    "sr_ste_nm": lambda: SparsityCallback(Constant(sparsity=0.5, end_step=16), layout="2:4", include="fc",
                                          enforcement=SRSTE(), update_every=1),
    "sr_ste_decoupled": lambda: SparsityCallback(Constant(sparsity=0.5, end_step=16), layout="2:4", include="fc",
                                                 enforcement=SRSTE(0.5, decoupled=True), update_every=1),
    "decaying": lambda: SparsityCallback(Constant(sparsity=0.5, end_step=16), layout="1:4", include="fc",
                                         enforcement=DecayingMask("exponential", end_step=12), update_every=1),
    "stepwise": lambda: SparsityCallback(StepwiseNM(m=8, n_stages=(4, 2, 1), steps_per_stage=4, start_step=2),
                                         include="fc", enforcement="ste", update_every=1),
    "soft_shrink": lambda: SparsityCallback(Constant(sparsity=0.7, end_step=12), enforcement="soft_shrink",
                                            update_every=3),
}


@pytest.mark.parametrize("regime", sorted(REGIMES))
def test_resume_mid_run_reproduces_masks(tmp_path, regime):
    full_cb = REGIMES[regime]()
    saver = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=8, save_top_k=-1)
    _, full_model = fit([full_cb, saver], 16, enable_checkpointing=True)
    resumed_cb = REGIMES[regime]()
    _, resumed_model = fit([resumed_cb], 16, ckpt_path=tmp_path / "epoch=1-step=8.ckpt")
    a, b = full_cb.controller, resumed_cb.controller
    assert len(a.history) > 1 and a.history == b.history
    for name in a.masks:
        assert torch.equal(a.masks[name], b.masks[name]), name
    for (k, v), (_, w) in zip(full_model.state_dict().items(), resumed_model.state_dict().items()):
        assert torch.equal(v, w), k


def test_dst_keeps_budget_and_logs_mask_change():
    cb = REGIMES["set"]()
    t, model = fit([cb], 10)
    events = [h for h in cb.controller.history if h["event"] == "prune_regrow"]
    assert [h["step"] for h in events] == [2, 4, 6, 8, 10]
    kept = [int(m.sum()) for m in cb.controller.masks.values()]
    first = cb.controller.history[0]
    assert first["event"] == "update" and abs(first["sparsity"] - 0.8) < 0.01
    assert abs(cb.controller.sparsity("units") - first["sparsity"]) < 1e-9 and sum(kept) > 0
    assert "sparsity/weights/mask_change" in t.callback_metrics


def test_random_erk_at_init_is_one_line_and_rigl_goes_on_top():
    static = SparsityCallback(0.9, criterion="random", allocator="erk")
    fit([static], 2)
    ctrl = static.controller
    assert [h["step"] for h in ctrl.history] == [0]
    dens = {t.name: 1 - ctrl.masks.sparsity(t.name) for t in ctrl.targets}
    assert dens["conv.weight"] > dens["fc.weight"]  # ERK: small layers stay denser
    assert abs(ctrl.sparsity("units") - 0.9) < 0.002


def test_two_callbacks_configure_targets_separately():
    nm = SparsityCallback(Constant(sparsity=0.5, end_step=8), layout="2:4", include="fc", enforcement="sr_ste",
                          update_every=1, name="nm")
    dst = SparsityCallback(0.5, include="conv", enforcement=PruneRegrow("random", every=2, end_step=8), name="dst")
    _, model = fit([nm, dst], 8)
    assert nm.state_key != dst.state_key
    assert [t.name for t in nm.controller.targets] == ["fc.weight"]
    assert [t.name for t in dst.controller.targets] == ["conv.weight"]
    groups = (model.fc.weight != 0).reshape(8, -1, 4).sum(-1)
    assert (groups == 2).all()
    assert int((model.conv.weight != 0).sum()) == 18
