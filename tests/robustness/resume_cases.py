"""One small stateful fit per plugin, for the crash-resume and DDP runs of
``resume_worker.py`` (issue 19, items 1 and 2).

A case is a function ``case(make_trainer, ckpt_path)`` that builds its module, data and
callbacks from fixed seeds, runs its fit(s) and returns ``(trainer, module)`` of the last
fit. ``make_trainer(callbacks, **kwargs)`` adds the worker's own callbacks (the checkpoint
saver, the killer, the state recorder; none with ``harness=False``) and its device
settings; ``ckpt_path`` is ``None`` for a fresh run and the checkpoint to resume from
otherwise. ``CASES`` maps a name to a :class:`Plan`: the case, when the crash run checkpoints
(``ModelCheckpoint`` arguments) and the global step after which it is killed (always after
a checkpoint and in the middle of an epoch), and how its DDP run is judged.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Tuple

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from sparsity_core import Cubic, Linear, PruneRegrow, RandomScores, SparsityCallback

MakeTrainer = Callable[..., pl.Trainer]
Result = Tuple[pl.Trainer, pl.LightningModule]


def core(make_trainer: MakeTrainer, ckpt_path: Optional[str]) -> Result:
    """Gradual Taylor pruning with hard masks on the conv layer, RigL (random start, gradient
    regrowth: both use the RNG) on the fully connected one; 8 batches an epoch."""
    from tests.lightning.helpers import TinyModule, loader

    torch.manual_seed(0)
    gradual = SparsityCallback(Cubic(end_step=18, final_sparsity=0.7), criterion="taylor", update_every=3,
                               include="conv")
    rigl = SparsityCallback(0.7, criterion=RandomScores(seed=1), include="fc",
                            enforcement=PruneRegrow("gradient", every=4, end_step=20), name="rigl")
    module = TinyModule()
    trainer = make_trainer([gradual, rigl], max_epochs=3)
    trainer.fit(module, loader(n=64), ckpt_path=ckpt_path)
    return trainer, module


def core_uneven(make_trainer: MakeTrainer, ckpt_path: Optional[str]) -> Result:
    """The core case with per-rank data of different lengths (no distributed sampler): rank 0
    has 8 batches an epoch, rank 1 five; ``max_steps`` bounds both. Mask updates are keyed to
    the global step, so the ranks meet at every collective although their epochs end apart."""
    from tests.lightning.helpers import TinyModule, loader

    torch.manual_seed(0)
    gradual = SparsityCallback(Cubic(end_step=12, final_sparsity=0.7), criterion="taylor", update_every=3)
    rank = int(os.environ.get("LOCAL_RANK", 0))
    module = TinyModule()
    trainer = make_trainer([gradual], max_steps=16, use_distributed_sampler=False)
    trainer.fit(module, loader(n=64 if rank == 0 else 40, seed=rank), ckpt_path=ckpt_path)
    return trainer, module


def vision(make_trainer: MakeTrainer, ckpt_path: Optional[str]) -> Result:
    """ChannelPruning of a tiny timm ResNet, Taylor scores, soft masks along a linear ramp
    (channels are removed at the end of the fit); 4 batches an epoch."""
    from sparsity_plugins.vision import ChannelPruning
    from tests.plugins.vision.models import TimmModule, image_loader

    torch.manual_seed(0)
    program = ChannelPruning(Linear(start_step=1, end_step=9, final_sparsity=0.5), criterion="taylor",
                             measure="params", update_every=2)
    module = TimmModule("resnet")
    trainer = make_trainer([SparsityCallback(programs=[program])], max_epochs=3)
    trainer.fit(module, image_loader(), ckpt_path=ckpt_path)
    return trainer, module


def graph(make_trainer: MakeTrainer, ckpt_path: Optional[str]) -> Result:
    """UGS (edge and weight masks, rounds with rewinding) on a stochastic-block-model graph,
    full batch: one step an epoch."""
    from sparsity_plugins.graph import UGS, node_datamodule
    from tests.plugins.graph.test_ugs import NodeModule, graph as sbm

    program = UGS(rounds=3, steps_per_round=4, edge_rate=0.2, weight_rate=0.3)
    module = NodeModule()
    trainer = make_trainer([SparsityCallback(programs=[program])], max_steps=12)
    trainer.fit(module, datamodule=node_datamodule(sbm()), ckpt_path=ckpt_path)
    return trainer, module


def splat(make_trainer: MakeTrainer, ckpt_path: Optional[str]) -> Result:
    """Gaussian splatting with BudgetedStrategy growing 10 -> 40 Gaussians over 24 one-view
    steps in one epoch (the module's own loader)."""
    from tests.plugins.splat.test_module_resume import module as splat_module

    torch.manual_seed(0)
    module = splat_module()
    trainer = make_trainer([], max_epochs=1, limit_val_batches=0)
    trainer.fit(module, ckpt_path=ckpt_path, weights_only=True)
    return trainer, module


def video(make_trainer: MakeTrainer, ckpt_path: Optional[str]) -> Result:
    """The per-head pattern search observing a tiny Wan transformer's attention during a fit
    (its error sums are the state); 4 batches an epoch."""
    from sparsity_plugins.video.search import PatternSearch
    from tests.plugins.video.test_lightning import Holder

    torch.manual_seed(0)
    search = PatternSearch(block_size=16, error_budget=0.5, measure=False, transformer="transformer")
    module = Holder()
    module.transformer.requires_grad_(False)  # observed, not trained (DDP needs every trained parameter used)
    data = DataLoader(TensorDataset(torch.arange(4.0)[:, None]), batch_size=1)
    trainer = make_trainer([SparsityCallback(programs=[search])], max_epochs=3)
    trainer.fit(module, data, ckpt_path=ckpt_path)
    return trainer, module


def continual(make_trainer: MakeTrainer, ckpt_path: Optional[str]) -> Result:
    """SparCL on a 2-task stream (TDM masks with gradient masking, DDR data removal, DER++
    buffer, training-FLOPs counter, stream evaluation); the worker's callbacks ride on task
    1's fit (6 batches an epoch before removal). A resume goes through ``run_stream``."""
    from sparsity_plugins.continual import (DynamicDataRemoval, StreamEvaluation, TaskAwareDynamicMasks,
                                            TrainingFlops, run_stream)
    from tests.plugins.continual.helpers import module as cl_module, stream

    s = stream()
    module = cl_module(method="derpp", buffer_size=12, task_aware=True)
    tdm = TaskAwareDynamicMasks(sparsity=0.75, every=4, gradient_keep=0.5, gradient_every=3)
    ddr = DynamicDataRemoval(fraction=0.25, every=6, rounds=1)
    callbacks = [SparsityCallback(programs=[tdm, ddr]), TrainingFlops([tdm]), StreamEvaluation()]
    last: Dict[str, pl.Trainer] = {}

    def task_trainer() -> pl.Trainer:
        last["trainer"] = make_trainer(callbacks, max_epochs=3)
        return last["trainer"]

    if ckpt_path is None:
        make_trainer(callbacks, harness=False, max_epochs=2).fit(module, datamodule=s)
        s.set_task(1)
        task_trainer().fit(module, datamodule=s)
    else:
        run_stream(module, s, task_trainer, ckpt_path=ckpt_path)
    return last["trainer"], module


def peft(make_trainer: MakeTrainer, ckpt_path: Optional[str]) -> Result:
    """PST adapters (data-driven importance, TopK with a straight-through estimator) on a small
    MLP, sparsity along a linear ramp; 4 batches an epoch."""
    from sparsity_plugins.peft import SparseAdapters
    from tests.plugins.peft.models import lit_mlp

    g = torch.Generator().manual_seed(0)
    data = DataLoader(TensorDataset(torch.randn(32, 6, generator=g), torch.randint(0, 3, (32,), generator=g)),
                      batch_size=8)
    program = SparseAdapters(r"net\.fc\d", method="pst", modules_to_save=r"net\.head", r=2, r_score=2,
                             schedule=Linear(start_step=0, end_step=8, final_sparsity=0.5))
    module = lit_mlp()
    trainer = make_trainer([SparsityCallback(programs=[program])], max_epochs=3)
    trainer.fit(module, data, ckpt_path=ckpt_path)
    return trainer, module


@dataclass(frozen=True)
class Plan:
    case: Callable[[MakeTrainer, Optional[str]], Result]
    checkpoint: Optional[Dict[str, Any]] = None  # ModelCheckpoint arguments of the crash run (None: no crash run)
    kill_after: Optional[int] = None  # the crash run SIGKILLs itself after this global step
    extra: Optional[str] = None  # the optional dependency, for the skip message
    ddp: Optional[str] = ""  # why the case has no DDP run ("": it has one)
    ddp_local: Tuple[str, ...] = ()  # state paths (suffixes) that are per-rank by design under DDP


FULL_BATCH = "PyG's full-batch LightningNodeData refuses more than one device; UGS masks the whole graph"
# DDR's per-example "last presentation correct" is seen on the rank that drew the example; the
# scores built from it are averaged over ranks before the masks are chosen (as in the core)
DDR_LOCAL = ("ddr.controller.criterion.last", "ddr.controller.scopes.default.criterion.last")

CASES: Dict[str, Plan] = {
    "core": Plan(core, {"every_n_epochs": 1}, kill_after=11),       # saved at step 8, killed in epoch 2
    "core_uneven": Plan(core_uneven),
    "vision": Plan(vision, {"every_n_epochs": 1}, kill_after=6),    # saved at 4, mid-ramp
    "graph": Plan(graph, {"every_n_train_steps": 6}, kill_after=7, extra="torch_geometric", ddp=FULL_BATCH),
    "splat": Plan(splat, {"every_n_train_steps": 10}, kill_after=14, extra="gsplat"),
    "video": Plan(video, {"every_n_epochs": 1}, kill_after=6, extra="diffusers"),
    "continual": Plan(continual, {"every_n_epochs": 1}, kill_after=8, ddp_local=DDR_LOCAL),  # task 1: saved at 6
    "peft": Plan(peft, {"every_n_epochs": 1}, kill_after=6),
}
