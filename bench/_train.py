"""Shared training harness for the accuracy benchmarks: a LightningModule around any
classifier, trained on in-memory tensors and evaluated on a held-out set."""
from __future__ import annotations

from typing import Callable, List, Sequence, Tuple

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class Classifier(pl.LightningModule):
    def __init__(self, net: nn.Module, lr: float = 1e-3, weight_decay: float = 0.0):
        super().__init__()
        self.net, self.lr, self.weight_decay = net, lr, weight_decay

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        return F.cross_entropy(self(batch[0]), batch[1])

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)


@torch.no_grad()
def accuracy(module: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 2000) -> float:
    module.eval()
    correct = sum(int((module(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum()) for i in range(0, len(y), batch))
    return 100.0 * correct / len(y)


def steps_per_epoch(n: int, batch_size: int) -> int:
    return (n + batch_size - 1) // batch_size


def fit_eval(make_net: Callable[[], nn.Module], make_callbacks: Callable[[nn.Module, int], List[pl.Callback]],
             train: Tuple[torch.Tensor, torch.Tensor], test: Tuple[torch.Tensor, torch.Tensor], epochs: int,
             seed: int, batch_size: int = 128, lr: float = 1e-3) -> Tuple[float, nn.Module]:
    """Train ``make_net()`` from seed ``seed`` with ``make_callbacks(module, total_steps)``;
    return the test accuracy (%) and the trained module."""
    pl.seed_everything(seed, verbose=False)
    module = Classifier(make_net(), lr=lr)
    loader = DataLoader(TensorDataset(*train), batch_size=batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(seed))
    callbacks = make_callbacks(module, epochs * len(loader))
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks)
    trainer.fit(module, loader)
    return accuracy(module, *test), module


def weight_sparsity(weights: Sequence[torch.Tensor]) -> float:
    zeros = sum(int((w == 0).sum()) for w in weights)
    return zeros / sum(w.numel() for w in weights)
