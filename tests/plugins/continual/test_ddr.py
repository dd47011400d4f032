"""Dynamic data removal: forgetting events counted exactly; an example forgotten more than a
kept one is never removed; the loader then yields exactly the kept examples."""
import pytorch_lightning as pl
import torch
from torch import nn

from sparsity_core import SparsityController, Target
from sparsity_core.schedules.iterative import Iterative
from sparsity_plugins.continual import DynamicDataRemoval, ForgettingEvents

from .helpers import module, stream, trainer

OPT = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)


def present(ctrl, crit, pos, correct):
    crit.pending = (torch.tensor(pos), torch.tensor(correct, dtype=torch.bool))
    ctrl.before_optimizer_step(OPT)


def test_forgetting_events_are_counted_by_hand():
    crit = ForgettingEvents()
    ctrl = SparsityController([Target("examples", shape=(4,))], schedule=0.0, criterion=crit, enforcement="masks")
    present(ctrl, crit, [0, 1, 2], [1, 1, 0])
    present(ctrl, crit, [0, 1, 2], [0, 1, 1])   # 0 forgotten
    present(ctrl, crit, [0, 1, 2], [1, 0, 0])   # 1 and 2 forgotten
    present(ctrl, crit, [0, 1], [0, 0])          # 0 forgotten again; 1 was wrong already
    assert crit.events.tolist() == [2, 1, 1, 0]
    # + 1/2 where the last presentation was wrong or there was none
    assert crit.score(ctrl.targets[0], ctrl.context()).tolist() == [2.5, 1.5, 1.5, 0.5]


def test_never_removes_an_example_forgotten_more_than_a_kept_one():
    for seed in range(20):
        g = torch.Generator().manual_seed(seed)
        n = 30
        crit = ForgettingEvents()
        ctrl = SparsityController([Target("examples", shape=(n,))],
                                  schedule=Iterative(final_sparsity=0.4, rounds=1, steps_per_round=1),
                                  criterion=crit, enforcement="masks", update_every=1)
        for _ in range(8):
            pos = torch.randperm(n, generator=g)[:20]
            present(ctrl, crit, pos.tolist(), (torch.rand(20, generator=g) < 0.6).tolist())
        ctrl.after_optimizer_step(1)
        kept = ctrl.masks["examples"]
        assert int(kept.sum()) == 18  # 40% of 30 removed
        assert crit.events[~kept].max() <= crit.events[kept].min()


class Positions(pl.Callback):
    def __init__(self):
        self.epochs = []

    def on_train_epoch_start(self, trainer, pl_module):
        self.epochs.append([])

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.epochs[-1] += batch[2].tolist()


def test_the_loader_yields_exactly_the_kept_examples_after_a_removal():
    from sparsity_core import SparsityCallback

    s = stream()
    ddr = DynamicDataRemoval(fraction=0.25, every=6, rounds=1)  # one removal after the first epoch (6 steps)
    seen = Positions()
    trainer([SparsityCallback(programs=[ddr]), seen], max_epochs=3).fit(module(method="none"), datamodule=s)
    kept = ddr.controller.masks["examples"]
    assert int(kept.sum()) == 36
    assert sorted(seen.epochs[0]) == list(range(48))
    for epoch in seen.epochs[1:]:
        assert sorted(epoch) == torch.nonzero(kept).reshape(-1).tolist()
    assert s.kept() is kept
    s.set_task(1)
    assert s.kept() is None  # the mask belongs to task 0
