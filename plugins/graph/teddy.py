"""TEDDY edge sparsification (Seo et al., 2024, "TEDDY: Trimming Edges with Degree-based
Discrimination strategY").

One-shot and training-free: an edge between low-degree nodes carries more information
than one between hubs. With ``d_i`` the degree of node ``i`` (self-loops not counted) and

    ḡ_i = (1/d_i) · Σ_{k ∈ N(i)} d_k^{-1/2}

the score of edge (i, j) is ``(ḡ_i / d_i) · (ḡ_j / d_j)``; the lowest-scored edges are
removed. Self-loops are never removed. On an undirected graph both directions of an edge
share one score and are kept or removed together. For a bipartite edge type of a
``HeteroData`` the source and destination degrees are counted on their own node sets.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple, Union

import torch
from torch import Tensor

from sparsity_core.allocators.budget import kept_count
from sparsity_core.layouts import top_k_mask
from sparsity_core.validation import check_positive, check_sparsity

from ._deps import torch_geometric

BaseTransform = torch_geometric("transforms").BaseTransform
HeteroData = torch_geometric("data").HeteroData


def node_span(edge_index) -> int:
    """The node count an ``edge_index`` implies when none is given: its largest id + 1 (0
    for an empty or non-tensor one, which :func:`check_edge_index` then rejects)."""
    return int(edge_index.max()) + 1 if isinstance(edge_index, Tensor) and edge_index.numel() else 0


def check_edge_index(edge_index: Tensor, num_nodes: Union[int, Tuple[int, int]], what: str = "edge_index") -> None:
    """Raise ``ValueError`` unless ``edge_index`` is a long ``[2, E]`` tensor, ``E > 0``,
    with node ids inside ``num_nodes`` (an int, or ``(num_src, num_dst)``)."""
    if not isinstance(edge_index, Tensor):
        raise ValueError(f"{what} must be a tensor, got {type(edge_index).__name__}")
    if edge_index.dtype != torch.long:
        raise ValueError(f"{what} must have dtype torch.long, got {edge_index.dtype}")
    if edge_index.dim() != 2 or edge_index.size(0) != 2:
        raise ValueError(f"{what} must have shape [2, num_edges], got {list(edge_index.shape)}")
    if edge_index.size(1) == 0:
        raise ValueError(f"{what} is empty: nothing to sparsify")
    n_src, n_dst = (num_nodes, num_nodes) if isinstance(num_nodes, int) else num_nodes
    if n_src <= 0 or n_dst <= 0:
        raise ValueError(f"num_nodes must be positive, got {num_nodes}")
    lo = int(edge_index.min())
    hi_src, hi_dst = int(edge_index[0].max()), int(edge_index[1].max())
    if lo < 0 or hi_src >= n_src or hi_dst >= n_dst:
        raise ValueError(f"{what} has node ids outside [0, {num_nodes}): min {lo}, max ({hi_src}, {hi_dst})")


def teddy_edge_scores(edge_index: Tensor, num_nodes: Union[int, Tuple[int, int], None] = None) -> Tensor:
    """TEDDY score of every edge (``+inf`` for self-loops, which are always kept).

    ``num_nodes`` is an int for a graph on one node set, ``(num_src, num_dst)`` for a
    bipartite one (degrees then counted per side); by default ``max id + 1``.
    """
    if num_nodes is None:
        num_nodes = node_span(edge_index)
    check_edge_index(edge_index, num_nodes)
    bipartite = not isinstance(num_nodes, int)
    n_src, n_dst = num_nodes if bipartite else (num_nodes, num_nodes)
    src, dst = edge_index
    loop = (src == dst) if not bipartite else torch.zeros_like(src, dtype=torch.bool)
    s, t = src[~loop], dst[~loop]
    ones = torch.ones(s.numel(), dtype=torch.float64)
    if bipartite:
        d_src = torch.zeros(n_src, dtype=torch.float64).index_add_(0, s, ones)
        d_dst = torch.zeros(n_dst, dtype=torch.float64).index_add_(0, t, ones)
    else:  # one node set: a node's neighbours on either side of its edges
        d_src = torch.zeros(n_src, dtype=torch.float64).index_add_(0, s, ones)
        d_dst = d_src
    inv_sqrt_src = d_src.clamp_min(1).rsqrt()
    inv_sqrt_dst = d_dst.clamp_min(1).rsqrt()
    # ḡ_i = mean over the neighbours of i of d^{-1/2}
    g_src = torch.zeros(n_src, dtype=torch.float64).index_add_(0, s, inv_sqrt_dst[t]) / d_src.clamp_min(1)
    g_dst = torch.zeros(n_dst, dtype=torch.float64).index_add_(0, t, inv_sqrt_src[s]) / d_dst.clamp_min(1)
    if not bipartite:
        g_src = g_dst = g_src
    score = torch.full((edge_index.size(1),), math.inf, dtype=torch.float64)
    score[~loop] = (g_src[s] / d_src[s].clamp_min(1)) * (g_dst[t] / d_dst[t].clamp_min(1))
    return score


def undirected_key(edge_index: Tensor, num_nodes: int) -> Tensor:
    lo, hi = torch.minimum(edge_index[0], edge_index[1]), torch.maximum(edge_index[0], edge_index[1])
    return lo * num_nodes + hi


def _pairs(edge_index: Tensor, num_nodes: int) -> Tuple[int, Tensor, bool]:
    """Number of unordered pairs, each edge's pair, and whether the graph is undirected (every
    pair has as many (i, j) as (j, i) edges: ``is_undirected``'s multiset test, one sort)."""
    uniq, inverse = torch.unique(undirected_key(edge_index, num_nodes), return_inverse=True)
    sign = (edge_index[0] < edge_index[1]).to(torch.long) - (edge_index[0] > edge_index[1]).to(torch.long)
    balance = torch.zeros(uniq.numel(), dtype=torch.long).index_add_(0, inverse, sign)
    return uniq.numel(), inverse, not bool(balance.any())


def teddy_mask(edge_index: Tensor, sparsity: float, num_nodes: Union[int, Tuple[int, int], None] = None,
               undirected: Optional[bool] = False) -> Tensor:
    """Boolean mask over edges removing the fraction ``sparsity`` of the non-self-loop edges (it
    keeps ``⌊(1 − sparsity) · E⌋`` of them, the suite's rounding rule) with the
    highest TEDDY scores, and every self-loop. With ``undirected=True`` the budget counts
    undirected edges, both directions share their fate, and a directed ``edge_index``
    raises ``ValueError``; ``undirected=None`` does that when the graph (on one node set) is
    undirected. Ties are broken by edge order."""
    check_sparsity(sparsity)
    if num_nodes is None:
        num_nodes = node_span(edge_index)
    scores = teddy_edge_scores(edge_index, num_nodes)
    loop = torch.isinf(scores)
    if undirected and not isinstance(num_nodes, int):
        raise ValueError("undirected=True needs one node set (num_nodes an int)")
    if undirected or (undirected is None and isinstance(num_nodes, int)):
        num_pairs, inverse, symmetric = _pairs(edge_index, num_nodes)
        if undirected and not symmetric:
            raise ValueError("edge_index is directed but undirected=True: every edge (i, j) needs its (j, i); "
                             "use torch_geometric.utils.to_undirected or undirected=False")
        if symmetric:
            pair_score = torch.full((num_pairs,), -math.inf, dtype=torch.float64).scatter_reduce(
                0, inverse, scores, reduce="amax")
            pair_loop = torch.zeros(num_pairs, dtype=torch.bool).scatter_reduce(0, inverse, loop, reduce="amax")
            keep_pair = _top(pair_score, pair_loop, sparsity)
            return keep_pair[inverse]
    return _top(scores, loop, sparsity)


def _top(scores: Tensor, loop: Tensor, sparsity: float) -> Tensor:
    """Self-loops and the ``⌊(1 − sparsity) · candidates⌋`` best other edges (the core's
    rounding and top-k: ties go to the earlier edge)."""
    candidates = torch.nonzero(~loop).flatten()
    k = kept_count(candidates.numel(), sparsity)
    keep = loop.clone()
    keep[candidates[top_k_mask(scores[candidates], k)]] = True
    return keep


def _edge_store_num_nodes(data, store) -> Union[int, Tuple[int, int]]:
    if isinstance(getattr(store, "_key", None), tuple):
        src, _, dst = store._key
        n_src, n_dst = data[src].num_nodes, data[dst].num_nodes
        return n_src if src == dst else (n_src, n_dst)
    return data.num_nodes


class TEDDY(BaseTransform):
    """PyG transform removing the fraction ``sparsity`` of the edges, lowest TEDDY scores
    first (see the module).

    Every edge store is sparsified (``HeteroData`` too); edge attributes stay aligned
    (``edge_subgraph``); the kept-edge mask of each store is left in the transform's
    ``masks`` (keyed by edge type, ``None`` for homogeneous data) and, for homogeneous
    data, as ``data.teddy_kept``. ``undirected=None`` checks each store and keeps
    undirected graphs undirected.
    """

    def __init__(self, sparsity: float, undirected: Optional[bool] = None) -> None:
        self.sparsity = check_sparsity(sparsity)
        self.undirected = undirected
        self.masks: dict = {}

    def forward(self, data):
        hetero = isinstance(data, HeteroData)
        masks = {}
        for store in data.edge_stores:
            if "edge_index" not in store:
                continue
            key = store._key if hetero else None
            n = _edge_store_num_nodes(data, store) if hetero else data.num_nodes
            masks[key] = teddy_mask(store.edge_index, self.sparsity, n, undirected=self.undirected)
        if not masks:
            raise ValueError(f"TEDDY needs edges to sparsify: the {type(data).__name__} has no edge_index")
        if hetero:
            data = data.edge_subgraph({k: m for k, m in masks.items()})
        else:
            data = data.edge_subgraph(masks[None])
            data.teddy_kept = masks[None]
        self.masks = masks
        return data

    def __repr__(self) -> str:
        return f"TEDDY(sparsity={self.sparsity}, undirected={self.undirected})"


def distillation_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """TEDDY's optional distillation term toward the model trained on the dense graph:
    ``T² · KL(softmax(teacher/T) ‖ softmax(student/T))`` averaged over nodes (Hinton et al.,
    2015); the teacher's logits are not differentiated. TEDDY's code adds ``λ`` times this
    (T = 1) to the cross-entropy, over all nodes, the teacher being the dense-graph model's
    logits at its best validation epoch; λ = 10 in its released script (default 0.1).
    bench/edge_sparsify measures it on Cora, with random edges + distillation as control."""
    check_positive(temperature, "temperature")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student and teacher logits differ in shape: {list(student_logits.shape)} vs "
                         f"{list(teacher_logits.shape)}")
    t = temperature
    log_p = torch.log_softmax(student_logits / t, dim=-1)
    q = torch.softmax(teacher_logits.detach() / t, dim=-1)
    return torch.nn.functional.kl_div(log_p, q, reduction="batchmean") * t * t
