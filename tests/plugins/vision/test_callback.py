"""ChannelPruning inside Trainer.fit: soft masks, removal at the end, resume, bad input."""
import pytest
import torch
from pytorch_lightning.callbacks import ModelCheckpoint

import pytorch_lightning as pl

from sparsity_core import SparsityCallback
from sparsity_core.schedules.ramps import Linear
from sparsity_plugins.vision import ChannelPruning, pruning_record

from ...lightning.helpers import trainer
from .models import TimmModule, image_loader


def fit(module, program, steps=6, **kwargs):
    cb = SparsityCallback(programs=[program])
    tr = trainer(max_steps=steps, callbacks=[cb, *kwargs.pop("callbacks", [])], **kwargs)
    tr.fit(module, image_loader())
    return tr


def test_fit_prunes_removes_and_keeps_training_on_the_smaller_model():
    module = TimmModule("resnet")
    dense = sum(p.numel() for p in module.parameters())
    cb = ChannelPruning(Linear(start_step=1, end_step=3, final_sparsity=0.5), measure="params", update_every=1)
    tr = fit(module, cb)
    assert cb.controller.finalized and cb.record is not None
    params = sum(p.numel() for p in module.parameters())
    assert 0.45 <= params / dense <= 0.51
    assert cb.sparsity_report()["global"] == pytest.approx(1 - params / dense, abs=1e-6)  # exact, not first-order
    owned = {id(p) for g in tr.optimizers[0].param_groups for p in g["params"]}
    assert all(id(p) in owned for p in module.parameters())
    assert pruning_record(module) is not None
    trainer(max_steps=2).fit(module, image_loader())  # a later fit trains the pruned model as it is
    trainer(max_steps=2, callbacks=[SparsityCallback(programs=[cb])]).fit(module, image_loader())  # finished program
    assert sum(p.numel() for p in module.parameters()) == params


def test_mid_training_removal_rebinds_the_trainer_optimizer():
    module = TimmModule("vit")

    cb = ChannelPruning(Linear(start_step=1, end_step=2, final_sparsity=0.5), measure="units", update_every=1)

    class RemoveAt3(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step == 3:
                cb.remove_now(trainer)

    tr = fit(module, cb, steps=6, callbacks=[RemoveAt3()])
    attn = module.model.blocks[0].attn
    assert attn.num_heads * attn.head_dim == attn.qkv.out_features // 3 == attn.proj.in_features
    opt = tr.optimizers[0]
    owned = {id(p) for g in opt.param_groups for p in g["params"]}
    assert all(id(p) in owned and p in opt.state for p in module.parameters())  # trained after removal


def test_resume_restores_masks(tmp_path):
    ckpt = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=4, save_top_k=-1)
    sched = Linear(start_step=1, end_step=6, final_sparsity=0.5)
    full = ChannelPruning(sched, measure="units", update_every=2, finalize=False)
    fit(TimmModule("convnext"), full, steps=8, callbacks=[ckpt], enable_checkpointing=True)
    path = next(tmp_path.glob("*step=4*.ckpt"))
    resumed = ChannelPruning(sched, measure="units", update_every=2, finalize=False)
    trainer(max_steps=8, callbacks=[SparsityCallback(programs=[resumed])]).fit(TimmModule("convnext"), image_loader(), ckpt_path=str(path))
    assert resumed.controller.sparsity("units") > 0.4
    for name, mask in full.controller.masks.items():
        assert torch.equal(mask, resumed.controller.masks[name]), name


def test_missing_example_input_is_a_clear_error():
    module = TimmModule("resnet")
    module.example_input_array = None
    with pytest.raises(ValueError, match="example_input_array"):
        fit(module, ChannelPruning(0.5))


def test_pruning_an_already_pruned_model_needs_allow_repruning():
    module = TimmModule("resnet")
    fit(module, ChannelPruning(Linear(start_step=1, end_step=2, final_sparsity=0.3), update_every=1), steps=3)
    shapes = {n: p.shape for n, p in module.named_parameters()}
    with pytest.raises(ValueError, match="already pruned"):
        fit(module, ChannelPruning(0.3))
    assert {n: p.shape for n, p in module.named_parameters()} == shapes
    cb = ChannelPruning(Linear(start_step=1, end_step=2, final_sparsity=0.3), update_every=1, allow_repruning=True)
    fit(module, cb, steps=3)
    assert pruning_record(module).rounds == 2


def test_wrong_enforcement_is_refused():
    with pytest.raises(TypeError, match="channel-group enforcement"):
        ChannelPruning(0.5, enforcement="hard")
