"""Real data for task streams, read offline with torchvision's loaders.

:func:`mnist_tensors` reads MNIST with ``torchvision.datasets.MNIST(download=False)``; given
a ``source`` folder holding ``MNIST/raw/*.gz`` (as ``../shared/data/mnist`` does) it
gunzips the files once into ``root`` first (torchvision reads the uncompressed idx files).
:func:`split_mnist` builds the usual Split-MNIST stream: 5 tasks of 2 digits.
:func:`cifar10_jpeg_tensors` reads the CIFAR-10 (JPEG) folders with ``ImageFolder``.
"""
from __future__ import annotations

import gzip
import os
import shutil
from typing import Optional, Tuple

import torch

from ._deps import torchvision_datasets
from .datamodule import TaskStream
from .splits import split_classes

Tensors = Tuple[torch.Tensor, torch.Tensor]
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


def _gunzip_raw(source: str, root: str) -> None:
    src = os.path.join(source, "MNIST", "raw")
    if not os.path.isdir(src):
        raise FileNotFoundError(f"MNIST not found at {src} (expected MNIST/raw/*.gz)")
    raw = os.path.join(root, "MNIST", "raw")
    os.makedirs(raw, exist_ok=True)
    for name in os.listdir(src):
        target = os.path.join(raw, name[:-3])
        if name.endswith(".gz") and not os.path.exists(target):
            with gzip.open(os.path.join(src, name)) as fin, open(target + ".part", "wb") as fout:
                shutil.copyfileobj(fin, fout)
            os.replace(target + ".part", target)


def mnist_tensors(root: str, train: bool, source: Optional[str] = None, limit: Optional[int] = None) -> Tensors:
    """MNIST as normalised float images ``[N, 1, 28, 28]`` and labels (the first ``limit``)."""
    if source is not None:
        _gunzip_raw(source, root)
    ds = torchvision_datasets().MNIST(root, train=train, download=False)
    x, y = ds.data, ds.targets
    if limit is not None:
        x, y = x[:limit], y[:limit]
    x = x.unsqueeze(1).float().div(255.0)
    return (x - MNIST_MEAN) / MNIST_STD, y.clone()


def split_mnist(root: str, source: Optional[str] = None, num_tasks: int = 5, train_limit: Optional[int] = None,
                test_limit: Optional[int] = None, scenario: str = "class", batch_size: int = 32,
                seed: int = 0, drop_last: bool = False) -> TaskStream:
    """Split-MNIST: MNIST's 10 digits in ``num_tasks`` tasks of consecutive classes
    (``drop_last``: see :class:`~.datamodule.TaskStream`)."""
    train = mnist_tensors(root, True, source, train_limit)
    test = mnist_tensors(root, False, source, test_limit)
    return TaskStream(train, test, split_classes(10, num_tasks), scenario=scenario, batch_size=batch_size, seed=seed,
                      drop_last=drop_last)


def cifar10_jpeg_tensors(folder: str) -> Tensors:
    """CIFAR-10 (JPEG) from an unzipped folder with one sub-folder per class, as float images
    ``[N, 3, 32, 32]`` in [0, 1] and labels (``ImageFolder``'s class order)."""
    import numpy as np

    ds = torchvision_datasets().ImageFolder(folder)
    xs = [torch.from_numpy(np.asarray(ds.loader(p), dtype=np.uint8).copy()) for p, _ in ds.samples]
    x = torch.stack(xs).permute(0, 3, 1, 2).float().div(255.0)
    return x, torch.tensor([c for _, c in ds.samples])
