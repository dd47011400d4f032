"""Resuming mid-stream from a Lightning checkpoint restores the task index, the replay buffer,
the sparse masks, the removed examples and the counters, and the run then ends exactly as
the uninterrupted one."""
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint

from sparsity_core import SparsityCallback
from sparsity_plugins.continual import (DynamicDataRemoval, StreamEvaluation, TaskAwareDynamicMasks, TrainingFlops,
                                        run_stream)

from .helpers import module, stream, trainer


def setup():
    s = stream()
    m = module(method="derpp", buffer_size=12, task_aware=True)
    tdm = TaskAwareDynamicMasks(sparsity=0.75, every=4, gradient_keep=0.5, gradient_every=3)
    ddr = DynamicDataRemoval(fraction=0.25, every=6, rounds=1)
    cbs = [SparsityCallback(programs=[tdm, ddr]), TrainingFlops([tdm]), StreamEvaluation()]
    return s, m, tdm, ddr, cbs


class Probe(pl.Callback):
    def on_train_start(self, trainer, pl_module):
        self.task = trainer.datamodule.task
        self.buffer = {k: v.clone() for k, v in pl_module.buffer.state_dict().items()}
        sparsity = next(cb for cb in trainer.callbacks if isinstance(cb, SparsityCallback))
        self.masks = {p.name: {k: v.clone() for k, v in p.controller.masks.items()} for p in sparsity.programs}


def test_resume_mid_stream_restores_task_buffer_and_masks(tmp_path):
    s, m, tdm, ddr, cbs = setup()
    saver = ModelCheckpoint(dirpath=tmp_path, every_n_epochs=1, save_top_k=-1)
    trainer(cbs, max_epochs=2).fit(m, datamodule=s)
    s.set_task(1)
    trainer(cbs + [saver], max_epochs=3, enable_checkpointing=True).fit(m, datamodule=s)
    ckpt_file = tmp_path / "epoch=0-step=6.ckpt"
    ckpt = torch.load(ckpt_file, weights_only=True)  # plain data only
    assert ckpt["TaskStream"]["task"] == 1

    s2, m2, tdm2, ddr2, cbs2 = setup()
    probe = Probe()
    run_stream(m2, s2, lambda: trainer(cbs2 + [probe], max_epochs=3), ckpt_path=str(ckpt_file))
    assert probe.task == 1
    saved = {k[len("buffer."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("buffer.")}
    assert set(saved) == set(probe.buffer) and all(torch.equal(saved[k], probe.buffer[k]) for k in saved)
    programs = next(v for k, v in ckpt["callbacks"].items() if "SparsityCallback" in k)["programs"]
    for name in ("tdm", "ddr"):
        saved_masks = programs[name]["controller"]["masks"]
        assert saved_masks and all(torch.equal(saved_masks[k], probe.masks[name][k]) for k in saved_masks)
    assert int(probe.masks["ddr"]["examples"].sum()) == 36  # task 1's removal (after its first epoch) survived

    # ... and the resumed run ends where the uninterrupted one did
    for a, b in ((tdm, tdm2), (ddr, ddr2)):
        assert all(torch.equal(a.controller.masks[k], b.controller.masks[k]) for k in a.controller.masks)
    assert all(torch.equal(v, m2.buffer.state_dict()[k]) for k, v in m.buffer.state_dict().items())
    assert torch.equal(m.net[1].weight, m2.net[1].weight)
    assert cbs[1].sparse == cbs2[1].sparse and cbs[2].class_il.rows == cbs2[2].class_il.rows
    assert s2.task == 1 and len(cbs2[2].class_il.rows) == 2
