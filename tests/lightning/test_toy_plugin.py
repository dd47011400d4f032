"""A toy plugin written against the program protocol prunes a parameter-free target,
resumes bit-identically and keeps the ranks identical under 2-process DDP."""
import os

import torch
from pytorch_lightning.callbacks import ModelCheckpoint

from sparsity_core import Linear, SparsityCallback

from .helpers import TinyModule, loader, run_ddp_worker, trainer
from .toy_plugin import FeatureMask

WORKER = os.path.join(os.path.dirname(__file__), "toy_plugin_ddp.py")


def fit(program, steps, ckpt_path=None, extra=(), **kw):
    torch.manual_seed(0)
    model = TinyModule()
    t = trainer(max_steps=steps, callbacks=[SparsityCallback(programs=[program]), *extra], **kw)
    t.fit(model, loader(), ckpt_path=ckpt_path)
    return t, model


def make():
    return FeatureMask(Linear(start_step=1, end_step=12, final_sparsity=0.75), module="fc")


def test_toy_plugin_prunes_features_and_logs_under_its_name():
    program = make()
    t, model = fit(program, 12)
    assert program.kept() == {"fc.inputs": 36}  # 144 features, 75% removed
    mask = program.controller.masks["fc.inputs"]
    feats = torch.randn(2, 144)
    expected = torch.nn.functional.linear(feats * mask.float(), model.fc.weight, model.fc.bias)
    assert torch.equal(model.fc(feats), expected)  # the hook masks the layer's inputs
    assert float(t.callback_metrics["sparsity/features/global"]) == 0.75
    assert float(t.callback_metrics["sparsity/global"]) == 0.0  # no parameter was pruned


def test_toy_plugin_resumes_bit_identically(tmp_path):
    straight = make()
    saver = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=8, save_top_k=-1)
    fit(straight, 12, extra=[saver], enable_checkpointing=True)
    resumed = make()
    fit(resumed, 12, ckpt_path=str(tmp_path / "epoch=1-step=8.ckpt"))
    a, b = straight.controller, resumed.controller
    assert torch.equal(a.masks["fc.inputs"], b.masks["fc.inputs"])
    assert [h["step"] for h in a.history] == [h["step"] for h in b.history]
    assert a.criterion.state_dict()["counts"] == b.criterion.state_dict()["counts"]


def test_toy_plugin_ranks_hold_identical_masks_under_ddp(tmp_path):
    r0, r1 = run_ddp_worker(WORKER, tmp_path)
    assert not torch.equal(r0["first_usage"], r1["first_usage"])  # each rank measured other batches ...
    assert torch.equal(r0["masks"]["fc.inputs"], r1["masks"]["fc.inputs"])  # ... and holds the same mask
    assert int(r0["masks"]["fc.inputs"].sum()) == 72
    assert [h["step"] for h in r0["history"]] == [h["step"] for h in r1["history"]] == [1, 3, 5, 6]
