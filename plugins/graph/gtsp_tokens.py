"""GTSP token selection: keep the top-k fraction of each graph's nodes, drop the rest with
their incident edges (Liu et al., 2024, "Exploring Sparsity in Graph Transformers", GTSP).

A linear scorer ``s = w·x + b`` ranks the nodes (tokens) of every graph of a batch; graph
``g`` with ``n_g`` nodes keeps its ``k_g = max(1, ⌈ρ·n_g⌉)`` best-scored nodes (ties broken by
node order). The kept nodes form an induced subgraph: every edge with a dropped endpoint
is removed, and the edge-level tensors (``edge_attr``...) follow their edges. During
training the scores are perturbed by Gumbel noise (exploration: Gumbel top-k samples
``k_g`` nodes without replacement with probabilities ∝ exp(s/τ)), and every kept node
carries a straight-through gate ``t = 1 + σ(s) − sg(σ(s))`` (1 in the forward pass, ``σ'(s)``
in the backward pass) through which the scorer is trained end to end.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
from torch import Tensor

from sparsity_core.validation import check_range

from ._deps import torch_geometric


def graph_sizes(batch: Optional[Tensor], num_nodes: int) -> Tensor:
    """Nodes per graph (one graph when ``batch`` is ``None``)."""
    if batch is None:
        return torch.tensor([num_nodes])
    return torch.bincount(batch, minlength=int(batch.max()) + 1 if batch.numel() else 0).cpu()


def keep_counts(sizes: Tensor, keep_ratio: float) -> Tensor:
    """``max(1, ⌈ρ·n_g⌉)`` per non-empty graph (0 for an empty one)."""
    k = torch.ceil(sizes.double() * keep_ratio - 1e-9).long().clamp_min(1)
    return torch.where(sizes > 0, k, torch.zeros_like(k))


def rank_per_graph(score: Tensor, batch: Optional[Tensor]) -> Tensor:
    """Rank of every node inside its graph by descending score (0 = best; ties by node order)."""
    n = score.numel()
    if batch is None:
        batch = torch.zeros(n, dtype=torch.long, device=score.device)
    order = torch.argsort(score, descending=True, stable=True)
    order = order[torch.argsort(batch[order], stable=True)]  # grouped by graph, best first
    sizes = torch.bincount(batch, minlength=int(batch.max()) + 1 if n else 0)
    start = torch.cumsum(sizes, 0) - sizes
    rank = torch.empty(n, dtype=torch.long, device=score.device)
    rank[order] = torch.arange(n, device=score.device) - start[batch[order]]
    return rank


def topk_per_graph(score: Tensor, keep_ratio: float, batch: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """Boolean mask of the ``max(1, ⌈ρ·n_g⌉)`` highest-scored nodes of every graph, and the
    within-graph rank of every node (0 = best). Ties are broken by node order."""
    keep_ratio = check_range(keep_ratio, "keep_ratio", low_open=True)
    if score.dim() != 1:
        raise ValueError(f"score must be 1-D [num_nodes], got shape {list(score.shape)}")
    if batch is not None and batch.shape != score.shape:
        raise ValueError(f"batch has shape {list(batch.shape)} but score has {list(score.shape)}")
    rank = rank_per_graph(score.detach(), batch)
    k = keep_counts(graph_sizes(batch, score.numel()), keep_ratio).to(score.device)
    kb = k[batch] if batch is not None else k.expand(score.numel())
    return rank < kb, rank


def marginal_mask(rank: Tensor, batch: Optional[Tensor], keep_ratio: float) -> Tensor:
    """The lowest-ranked kept node of every graph that keeps more than one node: the
    nodes a lower keep ratio drops first (their gates' gradients price a token move)."""
    k = keep_counts(graph_sizes(batch, rank.numel()), keep_ratio).to(rank.device)
    kb = k[batch] if batch is not None else k.expand(rank.numel())
    return (rank == kb - 1) & (kb > 1)


def gumbel(n: int, generator: Optional[torch.Generator], device: torch.device, dtype: torch.dtype) -> Tensor:
    """Standard Gumbel noise ``−log(−log U)`` drawn on the CPU generator (reproducible, saved
    with the controller) and moved to ``device``."""
    u = torch.rand(n, generator=generator, dtype=torch.float64).clamp(1e-12, 1.0 - 1e-12)
    return (-torch.log(-torch.log(u))).to(device=device, dtype=dtype)


def induced_subgraph(keep: Tensor, edge_index: Tensor, batch: Optional[Tensor],
                     edge_tensors: Dict[str, Tensor]) -> Tuple[Tensor, Tensor, Optional[Tensor], Dict[str, Tensor], Tensor]:
    """The subgraph induced by the kept nodes, relabelled to ``0..k−1``.

    Returns ``(node_index, edge_index, batch, edge_tensors, edge_mask)``: the kept nodes'
    ids in the input, the kept edges relabelled, the kept nodes' graph ids, the
    edge-level tensors of the kept edges and the boolean mask of kept edges.
    """
    if not isinstance(edge_index, Tensor):
        raise ValueError(f"token dropping needs edge_index as a [2, E] tensor, got {type(edge_index).__name__}")
    subgraph = torch_geometric("utils").subgraph
    num_nodes = keep.numel()
    node_index = keep.nonzero().flatten()
    sub_ei, _, edge_mask = subgraph(keep, edge_index, relabel_nodes=True, num_nodes=num_nodes, return_edge_mask=True)
    sub_batch = batch[node_index] if batch is not None else None
    sub_edges = {k: v[edge_mask] for k, v in edge_tensors.items()}
    return node_index, sub_ei, sub_batch, sub_edges, edge_mask


def split_edge_kwargs(kwargs: Dict[str, object], edge_keys, num_edges: int) -> Tuple[Dict[str, Tensor], Dict[str, object]]:
    """Edge-level tensors named in ``edge_keys`` (first dim = number of edges) and the rest."""
    edges, rest = {}, {}
    for k, v in kwargs.items():
        if k in edge_keys and isinstance(v, Tensor) and v.dim() >= 1:
            if v.size(0) != num_edges:
                raise ValueError(f"{k} has {v.size(0)} rows but edge_index has {num_edges} edges")
            edges[k] = v
        else:
            rest[k] = v
    return edges, rest

