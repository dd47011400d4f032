"""Tasks switched within one fit: the loader, the programs and the evaluation follow."""
import pytest
import pytorch_lightning as pl

from sparsity_core import SparsityCallback
from sparsity_core.program import build_program
from sparsity_plugins.continual import (DynamicDataRemoval, PackNet, StreamEvaluation, TaskAwareDynamicMasks,
                                        TaskSwitch, register)

from .helpers import module, stream, trainer


class Labels(pl.Callback):
    def __init__(self):
        self.epochs = []

    def on_train_epoch_start(self, trainer, pl_module):
        self.epochs.append(set())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.epochs[-1] |= set(batch[1].tolist())


def test_one_fit_walks_the_stream_and_programs_follow():
    s = stream()
    tdm = TaskAwareDynamicMasks(sparsity=0.5, every=4, gradient_keep=None)
    ddr = DynamicDataRemoval(fraction=0.25, every=6, rounds=1)
    sparsity = SparsityCallback(programs=[tdm, ddr])
    ev = StreamEvaluation()
    labels = Labels()
    t = trainer([sparsity, ev, TaskSwitch(2, sparsity, ev), labels], max_epochs=4, reload_dataloaders_every_n_epochs=1)
    t.fit(module(task_aware=True), datamodule=s)
    assert labels.epochs == [{0, 1}, {0, 1}, {2, 3}, {2, 3}]
    assert s.task == 1 and len(ev.class_il.rows) == 2
    assert ddr.task_index == 1 and ddr.controller.task == "task1"
    assert int(ddr.controller.masks["examples"].sum()) == 36  # task 1's own removal
    assert ddr.controller.scopes["default"]["masks"]["examples"].sum() == 36  # task 0's, kept aside
    assert tdm.regrow.task == 1 and tdm.regrow.task_start == 11  # 6 + 5 steps (one removal) in task 0
    assert [h["step"] for h in tdm.controller.history if h["event"] == "prune_regrow"] == [4, 8, 15, 19]


def test_packnet_closes_each_task_within_one_fit():
    s = stream(scenario="task")
    packnet = PackNet(keep=0.5)
    sparsity = SparsityCallback(programs=[packnet])
    t = trainer([sparsity, TaskSwitch(1, sparsity)], max_epochs=2, reload_dataloaders_every_n_epochs=1)
    t.fit(module(method="none", task_aware=True), datamodule=s)
    assert packnet.closed == 1
    assert {k: int(v.sum()) for k, v in packnet.task_mask(1).items()} == {"net.1.weight": 32}


def test_task_switch_needs_reloaded_loaders():
    sparsity = SparsityCallback(programs=[TaskAwareDynamicMasks(sparsity=0.5)])
    with pytest.raises(ValueError, match="reload_dataloaders_every_n_epochs=1"):
        trainer([sparsity, TaskSwitch(1, sparsity)], max_epochs=2).fit(module(), datamodule=stream())


def test_programs_are_registered_by_name():
    register()
    assert isinstance(build_program({"program": "sparcl_tdm", "sparsity": 0.8}), TaskAwareDynamicMasks)
    assert isinstance(build_program({"program": "sparcl_ddr", "fraction": 0.2}), DynamicDataRemoval)
    assert isinstance(build_program("packnet"), PackNet)
