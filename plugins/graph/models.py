"""Reference node classifiers for the graph recipes and benchmarks.

``GCN`` is Kipf & Welling (2017)'s two-layer model (hidden 16, dropout 0.5); ``GIN`` is
Xu et al. (2019)'s sum aggregator with an MLP per layer, used for node classification.
Both take ``(x, edge_index, edge_weight=None)`` so an edge sparsifier can hand them 0/1
or learned edge weights, and both work with PyG's explain masks (``set_masks``).

Input dropout only touches the non-zero entries of ``x``: for bag-of-words features
(Cora: 1.3 % non-zero) this has the distribution of ``F.dropout`` on the full matrix
(dropped zeros stay zero) at a fraction of its cost on the CPU.

``GCN(..., sparse_features=True)`` keeps ``x`` as a CSR matrix through its first layer
(:mod:`.sparse_features`): input dropout on the stored values and ``X W₁^T`` with its weight
gradient as sparse-times-dense products. Same function, same random draws as the dense path
when ``x`` stores only its non-zeros (``x.to_sparse_csr()``); outputs equal up to float
summation order.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sparsity_core.validation import check_int, check_range

from ._deps import torch_geometric
from .attention_buckets import bucket_attention


def sparse_input_dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """``F.dropout(x, p, training)`` drawing randoms only for the non-zero entries (the
    stored values of a CSR ``x``, whose pattern is kept)."""
    if not training or p == 0.0:
        return x
    check_range(p, "dropout p", high_open=True)
    if x.layout == torch.sparse_csr:  # the stored values, in row-major order as x.nonzero() lists them
        values = x.values()
        keep = torch.rand(values.numel(), device=x.device) >= p
        values = torch.where(keep, values / (1.0 - p), torch.zeros_like(values))
        return torch.sparse_csr_tensor(x.crow_indices(), x.col_indices(), values, x.shape, check_invariants=False)
    if x.layout != torch.strided:
        raise ValueError(f"sparse_input_dropout takes a dense or CSR x, got layout {x.layout}")
    rows, cols = x.nonzero(as_tuple=True)
    keep = torch.rand(rows.numel(), device=x.device) >= p
    rows, cols = rows[keep], cols[keep]
    out = torch.zeros_like(x)
    out[rows, cols] = x[rows, cols] / (1.0 - p)
    return out


class GCN(nn.Module):
    """Two GCN layers (Kipf & Welling, 2017): ``Â ReLU(Â X W₁) W₂`` with
    ``Â = D^{-1/2}(A+I)D^{-1/2}``, dropout before each layer.

    ``sparse_features=True``: ``X`` goes through dropout and ``X W₁^T`` as a CSR matrix
    (:mod:`.sparse_features`; pass ``x.to_sparse_csr()`` once, a dense or COO ``x`` is
    converted at every call). ``False`` refuses a sparse ``x``."""

    def __init__(self, in_channels: int, out_channels: int, hidden: int = 16, dropout: float = 0.5,
                 cached: bool = False, sparse_features: bool = False) -> None:
        super().__init__()
        if not isinstance(sparse_features, bool):
            raise ValueError(f"sparse_features must be True or False, got {sparse_features!r}")
        GCNConv = torch_geometric("nn").GCNConv
        self.conv1 = GCNConv(in_channels, hidden, cached=cached)
        self.conv2 = GCNConv(hidden, out_channels, cached=cached)
        self.dropout = dropout
        self.sparse_features = sparse_features
        if sparse_features:
            from .sparse_features import SparseInputLinear

            self.conv1.lin = SparseInputLinear.replacing(self.conv1.lin)

    def forward(self, x: Tensor, edge_index: Tensor, edge_weight: Optional[Tensor] = None) -> Tensor:
        if self.sparse_features:
            from .sparse_features import as_csr

            x = as_csr(x)
        elif isinstance(x, Tensor) and x.layout != torch.strided:
            raise ValueError(f"x is a sparse tensor ({x.layout}): build GCN(..., sparse_features=True)")
        x = sparse_input_dropout(x, self.dropout, self.training)
        x = F.relu(self.conv1(x, edge_index, edge_weight))
        x = F.dropout(x, self.dropout, self.training)
        return self.conv2(x, edge_index, edge_weight)


class GIN(nn.Module):
    """GIN layers ``h' = MLP((1+ε)h + Σ_{j∈N(i)} h_j)`` (Xu et al., 2019) for node
    classification. ``GINConv`` sums unweighted messages, so ``edge_weight`` is refused:
    pass the kept edges as ``edge_index``, or learned edge masks through PyG's explain
    masks (what :class:`~sparsity_plugins.graph.UGS` does)."""

    def __init__(self, in_channels: int, out_channels: int, hidden: int = 32, num_layers: int = 2,
                 dropout: float = 0.5) -> None:
        super().__init__()
        check_int(num_layers, "num_layers", 1)
        GINConv = torch_geometric("nn").GINConv
        dims = [in_channels] + [hidden] * (num_layers - 1) + [out_channels]
        self.convs = nn.ModuleList()
        for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
            last = i == num_layers - 1
            mlp = nn.Linear(d_in, d_out) if last else nn.Sequential(nn.Linear(d_in, d_out), nn.ReLU(),
                                                                     nn.Linear(d_out, d_out))
            self.convs.append(GINConv(mlp, train_eps=True))
        self.dropout = dropout

    def forward(self, x: Tensor, edge_index: Tensor, edge_weight: Optional[Tensor] = None) -> Tensor:
        if edge_weight is not None:
            raise ValueError("GIN sums unweighted messages: pass the kept edges as edge_index "
                             "(or learned weights through torch_geometric.explain set_masks)")
        x = sparse_input_dropout(x, self.dropout, self.training)
        for i, conv in enumerate(self.convs):
            x = conv(x, edge_index)
            if i < len(self.convs) - 1:
                x = F.dropout(F.relu(x), self.dropout, self.training)
        return x


class GraphGPS(nn.Module):
    """GraphGPS (Rampášek et al., 2022) for graph classification: node/edge embeddings,
    ``layers`` × ``GPSConv`` (GINE local message passing + multi-head attention, batch
    norm), sum pooling, an MLP head. Called as ``(x, edge_index, batch, edge_attr)``.

    ``bucket_slack``: attention runs per bucket of similarly sized graphs, each padded to its
    own largest graph within that slack (:mod:`.attention_buckets`), instead of padding the
    whole batch to its largest graph; ``None`` keeps ``GPSConv``'s single padded call."""

    def __init__(self, node_features: int, edge_features: int, num_classes: int, channels: int = 64,
                 layers: int = 3, heads: int = 4, bucket_slack: Optional[float] = 0.25) -> None:
        super().__init__()
        if channels % heads:
            raise ValueError(f"channels ({channels}) must be divisible by heads ({heads})")
        nn_ = torch_geometric("nn")
        c = channels
        self.node, self.edge = nn.Linear(node_features, c), nn.Linear(max(1, edge_features), c)
        self.convs = nn.ModuleList([
            nn_.GPSConv(c, nn_.GINEConv(nn.Sequential(nn.Linear(c, c), nn.ReLU(), nn.Linear(c, c))), heads=heads)
            for _ in range(layers)])
        self.head = nn.Sequential(nn.Linear(c, c), nn.ReLU(), nn.Linear(c, num_classes))
        if bucket_slack is not None:
            bucket_attention(self, bucket_slack)

    def forward(self, x: Tensor, edge_index: Tensor, batch: Tensor, edge_attr: Optional[Tensor] = None) -> Tensor:
        if edge_attr is None:
            edge_attr = x.new_ones(edge_index.size(1), self.edge.in_features)
        x, e = self.node(x), self.edge(edge_attr)
        for conv in self.convs:
            x = conv(x, edge_index, batch, edge_attr=e)
        return self.head(torch_geometric("nn").global_add_pool(x, batch))
