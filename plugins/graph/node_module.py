"""``NodeClassifier``: a LightningModule for node classification, full-batch or on
neighbour-sampled mini-batches.

Wraps any model called as ``model(x, edge_index)`` (PyG convention) and trains it with
cross-entropy. Two kinds of batches are accepted:

- the whole graph (:func:`~.datasets.node_datamodule`, no ``batch_size`` attribute): the loss
  is taken on ``batch.train_mask``, accuracies on ``val_mask`` / ``test_mask``;
- a ``NeighborLoader``-style mini-batch (:func:`~.sampling.neighbor_loader`, PyG's
  ``NeighborLoader``): only its first ``batch.batch_size`` nodes, the seeds, count; the loss
  is taken on the seeds that are training nodes (all of them when the training loader's
  ``input_nodes`` is ``train_mask``), the accuracies on the seeds in ``val_mask`` /
  ``test_mask``, so build the validation loader over ``val_mask | test_mask`` (a mini-batch
  without masks counts all its seeds as training or validation nodes, none as test nodes).

Every validation epoch logs ``val_acc`` and ``test_acc`` (correct seeds over all seeds of
each split, summed over the epoch's batches) and appends ``(global_step, val_acc, test_acc)``
to ``history``, so the test accuracy at the best validation epoch (the Planetoid protocol)
can be read with :meth:`best_test`.

Optimizer and scheduler are configurable as in :mod:`.graph_module` (LightningCLI's
``OptimizerCallable`` / ``LRSchedulerCallable``); the default is the Planetoid setting, Adam
with ``lr=0.01`` and ``weight_decay=5e-4``, and no scheduler.
"""
from __future__ import annotations

import functools
import math
from typing import List, Literal, Optional, Tuple

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

from sparsity_core.validation import check_nonnegative, check_positive

from .graph_module import LRSchedulerCallable, OptimizerCallable, build_optimizers, check_optimizer_options


class NodeClassifier(pl.LightningModule):
    """Node classification with cross-entropy on the training nodes of a full graph or of a
    mini-batch's seeds (see the module).

    Args:
        model: called as ``model(x, edge_index)``, returns ``[nodes, classes]``.
        lr, weight_decay: of the default optimizer (Adam); leave them at their defaults when
            ``optimizer`` is given (that callable carries its own).
        distill_from: teacher logits ``[nodes, classes]`` (all nodes of the graph) for TEDDY's
            distillation loss; a mini-batch reads its seeds' rows through ``batch.n_id``.
        distill_weight: weight of that loss (``> 0`` needs ``distill_from``).
        optimizer: ``optimizer(params) -> torch.optim.Optimizer`` (LightningCLI's
            ``OptimizerCallable``), a LightningCLI dict, or ``None`` for
            ``torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)``.
        lr_scheduler: ``lr_scheduler(optimizer) -> scheduler`` (``LRSchedulerCallable``), a
            LightningCLI dict, or ``None`` for a constant learning rate.
        lr_scheduler_interval: step the scheduler every ``"epoch"`` or every optimizer ``"step"``
            (the same thing in full-batch training, one step per epoch).
        lr_scheduler_monitor: metric a ``ReduceLROnPlateau`` watches (``"val_acc"`` with
            ``mode="max"``, or ``"train_loss"``), unless the scheduler names one itself.

    Bad options raise ``ValueError`` here, before any training.
    """

    def __init__(self, model: nn.Module, lr: float = 0.01, weight_decay: float = 5e-4,
                 distill_from: Optional[torch.Tensor] = None, distill_weight: float = 0.0,
                 optimizer: Optional[OptimizerCallable] = None, lr_scheduler: Optional[LRSchedulerCallable] = None,
                 lr_scheduler_interval: Literal["epoch", "step"] = "epoch",
                 lr_scheduler_monitor: Optional[str] = None) -> None:
        super().__init__()
        lr, weight_decay = check_positive(lr, "lr"), check_nonnegative(weight_decay, "weight_decay")
        (self.optimizer, self.lr_scheduler, self.lr_scheduler_interval,
         self.lr_scheduler_monitor) = check_optimizer_options(optimizer, lr_scheduler, lr_scheduler_interval,
                                                              lr_scheduler_monitor)
        if self.optimizer is not None and (lr != 0.01 or weight_decay != 5e-4):
            raise ValueError(f"lr={lr!r} and weight_decay={weight_decay!r} set the default Adam only; with optimizer= "
                             "give them to the optimizer (e.g. functools.partial(torch.optim.AdamW, lr=..., "
                             "weight_decay=...))")
        self.model = model
        self.lr, self.weight_decay = lr, weight_decay
        self.distill_weight = distill_weight
        if distill_weight and distill_from is None:
            raise ValueError("distill_weight > 0 needs the teacher's logits (distill_from=)")
        self.register_buffer("teacher_logits", distill_from, persistent=False)
        self.history: List[Tuple[int, float, float]] = []
        self._counts = [0, 0, 0, 0]  # correct / seen for val, then for test, over one validation epoch

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        return self.model(x, edge_index)

    def training_step(self, batch, batch_idx):
        out, seeds = self._seed_logits(batch)
        train = _mask(batch, "train_mask", seeds)
        if not bool(train.any()):
            raise ValueError("this batch has no training node among its seeds: build the training loader with "
                             "input_nodes=data.train_mask")
        loss = F.cross_entropy(out[train], batch.y[:seeds][train])
        if self.distill_weight:
            from .teddy import distillation_loss

            teacher = self.teacher_logits
            if _sampled(batch):
                if "n_id" not in batch:
                    raise ValueError("distillation on mini-batches needs batch.n_id (the seeds' ids in the graph)")
                teacher = teacher[batch.n_id[:seeds].to(teacher.device)]
            loss = loss + self.distill_weight * distillation_loss(out, teacher)
        self.log("train_loss", loss, batch_size=int(train.sum()) if _sampled(batch) else 1,
                 prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        out, seeds = self._seed_logits(batch)
        hit = out.argmax(-1) == batch.y[:seeds]
        for i, key in enumerate(("val_mask", "test_mask")):
            mask = _mask(batch, key, seeds)
            self._counts[2 * i] += int(hit[mask].sum())
            self._counts[2 * i + 1] += int(mask.sum())

    def on_validation_epoch_start(self) -> None:
        self._counts = [0, 0, 0, 0]

    def on_validation_epoch_end(self) -> None:
        c = self._counts
        val = c[0] / c[1] if c[1] else math.nan
        test = c[2] / c[3] if c[3] else math.nan
        self._counts = [0, 0, 0, 0]
        self.log_dict({"val_acc": val, "test_acc": test}, prog_bar=True)
        self.history.append((self.global_step, val, test))

    def _seed_logits(self, batch) -> Tuple[torch.Tensor, int]:
        """Logits of the nodes that count and how many they are: a mini-batch's first
        ``batch.batch_size`` nodes, or every node of a full graph."""
        out = self(batch.x, batch.edge_index)
        seeds = int(batch["batch_size"]) if _sampled(batch) else out.size(0)
        return out[:seeds], seeds

    def best_test(self, after_step: int = 0) -> float:
        """Test accuracy at the validation pass with the best ``val_acc`` (first on ties)
        among those after optimizer step ``after_step``."""
        entries = [h for h in self.history if h[0] > after_step]
        if not entries:
            raise ValueError(f"no validation pass after step {after_step}")
        return max(entries, key=lambda h: (h[1], -h[0]))[2]

    def configure_optimizers(self):
        """``optimizer(self.parameters())`` (default ``Adam(lr=self.lr,
        weight_decay=self.weight_decay)``), with the scheduler's config when ``lr_scheduler``
        is set."""
        optimizer = self.optimizer if self.optimizer is not None else functools.partial(
            torch.optim.Adam, lr=self.lr, weight_decay=self.weight_decay)
        return build_optimizers(self.parameters(), optimizer, self.lr_scheduler, self.lr_scheduler_interval,
                                self.lr_scheduler_monitor)


def _mask(batch, key: str, seeds: int) -> torch.Tensor:
    """``batch[key]`` over the first ``seeds`` nodes. A mini-batch without that mask: its
    seeds are all training / validation nodes (the loader's ``input_nodes``), none is a test node."""
    mask = getattr(batch, key, None)
    if mask is None:
        if not _sampled(batch):
            raise ValueError(f"a full-graph batch needs {key}")
        return torch.full((seeds,), key != "test_mask", dtype=torch.bool, device=batch.y.device)
    return mask[:seeds]


def _sampled(batch) -> bool:
    """A mini-batch of a node loader stores ``batch_size`` (its seed count); a full graph does
    not (a ``Batch`` of whole graphs only has it as a property, its number of graphs)."""
    try:
        return "batch_size" in batch
    except TypeError:
        return False
