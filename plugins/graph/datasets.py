"""Graph data through PyG's own loaders, offline when a local copy exists.

``planetoid`` and ``tudataset`` are PyG's ``Planetoid`` / ``TUDataset`` on a writable
``root``. When ``source`` names a folder that already holds ``<name>/raw`` (for example a
shared data folder), the raw files are copied into ``root`` first so nothing is
downloaded; without it PyG downloads as usual. The generators (``sbm_graph``,
``grid_graph``) build graphs with features and labels for tests and benchmarks, and
``node_datamodule`` wraps a node-level graph in ``LightningNodeData`` for a ``Trainer``.
"""
from __future__ import annotations

import os
import shutil
from typing import Optional, Sequence

import torch

from sparsity_core.validation import check_int, check_range

from ._deps import torch_geometric


def _copy_raw(root: str, name: str, source: Optional[str]) -> None:
    raw = os.path.join(root, name, "raw")
    if source is None or os.path.isdir(raw):
        return
    src = os.path.join(source, name, "raw")
    if not os.path.isdir(src):
        raise FileNotFoundError(f"{src} does not exist: source= must hold {name}/raw")
    shutil.copytree(src, raw)


def planetoid(name: str = "Cora", root: str = "data/planetoid", source: Optional[str] = None, **kwargs):
    """PyG ``Planetoid(root, name, **kwargs)`` (public split), raw files copied from ``source``."""
    _copy_raw(root, name, source)
    return torch_geometric("datasets").Planetoid(root, name, **kwargs)


def tudataset(name: str = "MUTAG", root: str = "data/tudataset", source: Optional[str] = None, **kwargs):
    """PyG ``TUDataset(root, name, **kwargs)``, raw files copied from ``source``."""
    _copy_raw(root, name, source)
    return torch_geometric("datasets").TUDataset(root, name, **kwargs)


def karate_club():
    """Zachary's karate club (34 nodes, 156 directed edges, 4 classes), bundled with PyG."""
    return torch_geometric("datasets").KarateClub()[0]


def _labelled(edge_index: torch.Tensor, labels: torch.Tensor, num_features: int, noise: float, seed: int):
    """A ``Data`` graph whose node features are a noisy one-hot of the label, projected."""
    g = torch.Generator().manual_seed(seed)
    n_classes = int(labels.max()) + 1
    centers = torch.randn(n_classes, num_features, generator=g)
    x = centers[labels] + noise * torch.randn(labels.numel(), num_features, generator=g)
    return torch_geometric("data").Data(x=x, edge_index=edge_index, y=labels, num_nodes=labels.numel())


def sbm_graph(block_sizes: Sequence[int] = (50, 50, 50), p_in: float = 0.2, p_out: float = 0.01,
              num_features: int = 16, noise: float = 2.0, seed: int = 0):
    """Undirected stochastic block model: edge probability ``p_in`` inside a block,
    ``p_out`` across; label = block; features = block centre + Gaussian noise."""
    if not block_sizes or any(int(b) <= 0 for b in block_sizes):
        raise ValueError(f"block_sizes must be positive ints, got {block_sizes!r}")
    check_range(p_in, "p_in")
    check_range(p_out, "p_out")
    k = len(block_sizes)
    probs = torch.full((k, k), float(p_out))
    probs.fill_diagonal_(float(p_in))
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)  # PyG's generator draws from the global RNG
    try:
        edge_index = torch_geometric("utils").stochastic_blockmodel_graph(list(block_sizes), probs)
    finally:
        torch.random.set_rng_state(state)
    labels = torch.repeat_interleave(torch.arange(k), torch.tensor([int(b) for b in block_sizes]))
    return _labelled(edge_index, labels, num_features, noise, seed)


def grid_graph(height: int, width: int, num_features: int = 4, seed: int = 0):
    """Undirected ``height × width`` 4-neighbour grid (no self-loops); label = which half
    of the grid a node lies in."""
    check_int(height, "height", 1)
    check_int(width, "width", 1)
    if height * width < 2:
        raise ValueError(f"grid needs at least two nodes, got {height}x{width}")
    idx = torch.arange(height * width).view(height, width)
    right = torch.stack([idx[:, :-1].reshape(-1), idx[:, 1:].reshape(-1)])
    down = torch.stack([idx[:-1, :].reshape(-1), idx[1:, :].reshape(-1)])
    pairs = torch.cat([right, down], dim=1)
    edge_index = torch_geometric("utils").to_undirected(pairs, num_nodes=height * width)
    labels = (torch.arange(height * width) % width >= width // 2).long()
    return _labelled(edge_index, labels, num_features, 1.0, seed)


def node_datamodule(data, batch_size: int = 1, **kwargs):
    """``LightningNodeData`` over one full graph (full-batch training, the Planetoid
    convention): train/val/test nodes from ``data.train_mask`` etc."""
    for key in ("train_mask", "val_mask", "test_mask"):
        if getattr(data, key, None) is None:
            raise ValueError(f"data has no {key}: node_datamodule needs train/val/test masks")
    LightningNodeData = torch_geometric("data.lightning").LightningNodeData
    return LightningNodeData(data, input_train_nodes=data.train_mask, input_val_nodes=data.val_mask,
                             input_test_nodes=data.test_mask, loader="full", batch_size=batch_size, **kwargs)
