"""Offline data for benchmarks: MNIST from ../shared/data through torchvision's loader."""
from __future__ import annotations

import gzip
import os
import shutil
from typing import Tuple

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.environ.get("SPARSITY_SHARED_DATA", os.path.join(ROOT, "..", "shared", "data"))
WORK = os.path.join(ROOT, "bench", "out", "data")


def mnist_tensors(train: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """MNIST as normalized float images [N,1,28,28] and labels, via torchvision ``MNIST``.

    torchvision reads the uncompressed idx files, so the shared ``.gz`` files are
    gunzipped once into ``bench/out/data/MNIST/raw``.
    """
    from torchvision.datasets import MNIST

    raw = os.path.join(WORK, "MNIST", "raw")
    src = os.path.join(SHARED, "mnist", "MNIST", "raw")
    if not os.path.isdir(src):
        raise FileNotFoundError(f"MNIST not found at {src} (set SPARSITY_SHARED_DATA to the shared data folder)")
    os.makedirs(raw, exist_ok=True)
    for name in os.listdir(src):
        if name.endswith(".gz") and not os.path.exists(os.path.join(raw, name[:-3])):
            with gzip.open(os.path.join(src, name)) as fin, open(os.path.join(raw, name[:-3]), "wb") as fout:
                shutil.copyfileobj(fin, fout)
    ds = MNIST(WORK, train=train, download=False)
    x = ds.data.unsqueeze(1).float().div(255.0)
    return (x - 0.1307) / 0.3081, ds.targets.clone()


def mnist_split(n_train: int):
    """The first ``n_train`` MNIST training images and the full 10k test set."""
    x, y = mnist_tensors(train=True)
    return (x[:n_train], y[:n_train]), mnist_tensors(train=False)
