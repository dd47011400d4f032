"""``GraphClassifier``: a LightningModule for graph classification over PyG mini-batches.

Wraps a model called as ``model(x, edge_index, batch, edge_attr)`` (e.g.
:class:`.models.GraphGPS`), trains it with cross-entropy and logs ``val_acc`` per
validation epoch, keeping ``(global_step, val_acc)`` in ``history``.
"""
from __future__ import annotations

from typing import List, Tuple

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn


class GraphClassifier(pl.LightningModule):
    def __init__(self, model: nn.Module, lr: float = 1e-3) -> None:
        super().__init__()
        self.model, self.lr = model, lr
        self.history: List[Tuple[int, float]] = []
        self._correct = self._seen = 0

    def forward(self, batch) -> torch.Tensor:
        return self.model(batch.x, batch.edge_index, batch.batch, getattr(batch, "edge_attr", None))

    def training_step(self, batch, batch_idx):
        loss = F.cross_entropy(self(batch), batch.y)
        self.log("train_loss", loss, batch_size=batch.num_graphs, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        self._correct += int((self(batch).argmax(-1) == batch.y).sum())
        self._seen += batch.num_graphs

    def on_validation_epoch_end(self) -> None:
        if self._seen:
            acc = self._correct / self._seen
            self.log("val_acc", acc, prog_bar=True)
            self.history.append((self.global_step, acc))
        self._correct = self._seen = 0

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr)
