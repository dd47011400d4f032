"""``NodeClassifier``: a LightningModule for full-batch node classification.

Wraps any model called as ``model(x, edge_index)`` (PyG convention) and trains it on
``batch.train_mask`` with cross-entropy; every validation pass logs ``val_acc`` and
``test_acc`` on the same graph and appends ``(global_step, val_acc, test_acc)`` to
``history``, so the test accuracy at the best validation epoch (the Planetoid protocol) can
be read with :meth:`best_test`. Use it with :func:`~.datasets.node_datamodule`.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn


class NodeClassifier(pl.LightningModule):
    def __init__(self, model: nn.Module, lr: float = 0.01, weight_decay: float = 5e-4,
                 distill_from: Optional[torch.Tensor] = None, distill_weight: float = 0.0) -> None:
        super().__init__()
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
        return torch.optim.Adam(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)
