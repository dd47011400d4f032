"""Offline data for benchmarks: MNIST and CIFAR-10 (JPEG) from ../shared/data through
torchvision's loaders."""
from __future__ import annotations

import os
from typing import Tuple

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.environ.get("SPARSITY_SHARED_DATA", os.path.join(ROOT, "..", "shared", "data"))
WORK = os.path.join(ROOT, "bench", "out", "data")


def mnist_tensors(train: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """MNIST as normalized float images [N,1,28,28] and labels, via torchvision ``MNIST``.

    torchvision reads the uncompressed idx files, so the shared ``.gz`` files are gunzipped
    once into ``bench/out/data/MNIST/raw`` (atomically: benchmarks started side by side on a
    fresh checkout once read each other's half-written files).
    """
    from sparsity_plugins.continual.data import mnist_tensors as read_mnist

    return read_mnist(WORK, train, source=os.path.join(SHARED, "mnist"))


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
            torch.save((x, torch.tensor(ds.targets)), cached + ".part")
            os.replace(cached + ".part", cached)  # a side-by-side run never reads half a file
        x, y = torch.load(cached, weights_only=True)
        idx = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))[:n]
        out.append((x[idx], y[idx]))
    return tuple(out)
