"""Tiny synthetic task streams: 4 classes of Gaussian blobs in 8 dimensions, 2 tasks."""
import pytorch_lightning as pl
import torch

from sparsity_plugins.continual import ContinualModule, TaskStream, mlp


def blobs(n_per_class=24, classes=4, dim=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, dim, generator=g) * 3
    y = torch.arange(classes).repeat_interleave(n_per_class)
    x = centers[y] + torch.randn(y.numel(), dim, generator=g)
    return x, y


def stream(tasks=((0, 1), (2, 3)), scenario="class", batch_size=8, seed=0):
    return TaskStream(blobs(seed=seed), blobs(n_per_class=10, seed=seed + 1), [list(t) for t in tasks],
                      scenario=scenario, batch_size=batch_size, seed=seed)


def module(method="derpp", buffer_size=16, task_aware=False, seed=0, hidden=(16,)):
    torch.manual_seed(seed)
    return ContinualModule(mlp(8, hidden, 4), num_classes=4, input_shape=(8,), method=method,
                           buffer_size=buffer_size, lr=0.1, task_aware=task_aware, seed=seed)


def trainer(callbacks=(), max_epochs=2, **kw):
    args = dict(max_epochs=max_epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    args.update(kw)
    return pl.Trainer(callbacks=list(callbacks), **args)
