"""``NodeClassifier``: a LightningModule for full-batch node classification.

Wraps any model called as ``model(x, edge_index)`` (PyG convention) and trains it on
``batch.train_mask`` with cross-entropy; every validation pass logs ``val_acc`` and
``test_acc`` on the same graph and appends ``(global_step, val_acc, test_acc)`` to
``history``, so the test accuracy at the best validation epoch (the Planetoid protocol) can
be read with :meth:`best_test`. Use it with :func:`~.datasets.node_datamodule`.

Optimizer and scheduler are configurable as in :mod:`.graph_module` (LightningCLI's
``OptimizerCallable`` / ``LRSchedulerCallable``); the default is the Planetoid setting, Adam
with ``lr=0.01`` and ``weight_decay=5e-4``, and no scheduler.
"""
from __future__ import annotations

import functools
from typing import List, Literal, Optional, Tuple

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

from sparsity_core.validation import check_nonnegative, check_positive

from .graph_module import LRSchedulerCallable, OptimizerCallable, build_optimizers, check_optimizer_options


class NodeClassifier(pl.LightningModule):
    """Full-batch node classification with cross-entropy on ``batch.train_mask``.

    Args:
        model: called as ``model(x, edge_index)``, returns ``[nodes, classes]``.
        lr, weight_decay: of the default optimizer (Adam); leave them at their defaults when
            ``optimizer`` is given (that callable carries its own).
        distill_from: teacher logits ``[nodes, classes]`` for TEDDY's distillation loss.
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

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        return self.model(x, edge_index)

    def training_step(self, batch, batch_idx):
        out = self(batch.x, batch.edge_index)
        loss = F.cross_entropy(out[batch.train_mask], batch.y[batch.train_mask])
        if self.distill_weight:
            from .teddy import distillation_loss

            loss = loss + self.distill_weight * distillation_loss(out, self.teacher_logits)
        self.log("train_loss", loss, batch_size=1, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        pred = self(batch.x, batch.edge_index).argmax(-1)
        val = (pred[batch.val_mask] == batch.y[batch.val_mask]).float().mean()
        test = (pred[batch.test_mask] == batch.y[batch.test_mask]).float().mean()
        self.log_dict({"val_acc": val, "test_acc": test}, batch_size=1, prog_bar=True)
        self.history.append((self.global_step, float(val), float(test)))

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
