"""Offline data for benchmarks: MNIST and CIFAR-10 (JPEG) from ../shared/data through
torchvision's loaders."""
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


def cifar10_split(n_train: int, n_test: int, seed: int = 0):
    """``((x, y), (x_test, y_test))``: a seeded random ``n_train`` of the 50k CIFAR-10 (JPEG)
    training images and ``n_test`` of the 10k test images, normalised float tensors
    [N,3,32,32]. The zips are extracted once into ``bench/out/data`` and the decoded tensors
    cached there."""
    import zipfile

    from torchvision import transforms as T
    from torchvision.datasets import ImageFolder

    src = os.path.join(SHARED, "cifar10_jpeg")
    dest = os.path.join(WORK, "cifar10_jpeg")
    out = []
    for split, n in (("train", n_train), ("test", n_test)):
        cached = os.path.join(WORK, f"cifar10_{split}.pt")
        if not os.path.exists(cached):
            if not os.path.exists(os.path.join(dest, split, ".complete")):
                archive = os.path.join(src, f"cifar10_{split}_jpeg.zip")
                if not os.path.exists(archive):
                    raise FileNotFoundError(f"CIFAR-10 (JPEG) not found at {archive} (set SPARSITY_SHARED_DATA)")
                with zipfile.ZipFile(archive) as z:
                    z.extractall(dest)
                open(os.path.join(dest, split, ".complete"), "w").close()
            norm = T.Compose([T.ToTensor(), T.Normalize((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))])
            ds = ImageFolder(os.path.join(dest, split), norm)
            x = torch.stack([ds[i][0] for i in range(len(ds))])
            torch.save((x, torch.tensor(ds.targets)), cached)
        x, y = torch.load(cached, weights_only=True)
        idx = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))[:n]
        out.append((x[idx], y[idx]))
    return tuple(out)
