"""Neighbour-sampled mini-batches (GraphSAGE-style) with or without pyg-lib / torch-sparse.

PyG's ``NeighborLoader`` needs ``pyg-lib`` or ``torch-sparse`` for its sampler; where neither
is installed :func:`neighbor_loader` drives PyG's own ``NodeLoader`` with
:class:`UniformNeighborSampler`, a pure-torch sampler with the conventions of PyG's
``NeighborSampler`` (directional subgraphs, sampling without replacement), so batches carry
the same attributes (``x``, ``y``, masks and edge attributes filtered, ``n_id``, ``e_id``,
``input_id``, ``batch_size``, ``num_sampled_nodes``, ``num_sampled_edges``). Sparsify the
graph once (``TEDDY``, random edge dropping), then sample from the sparsified ``Data``.

Algorithm. The edges are sorted once by destination (CSC: ``colptr``, source ``row`` and the
original edge id of every position). A batch starts from its seed nodes, which take local ids
``0..B-1`` in input order. For hop ``h`` with fan-out ``k = num_neighbors[h]`` the frontier is
the set of nodes added by the previous hop (the seeds at hop 0). All incident edges of the
frontier are gathered at once (``repeat_interleave`` over in-degrees); a node with more than
``k`` in-edges gets an independent uniform random integer key per edge from torch's RNG
(``torch.manual_seed`` or ``generator=``), its edges are sorted by (node, key) and the first
``k`` are kept, a uniform sample without replacement; a node with at most ``k`` in-edges
(or ``k = -1``) keeps all of them, in CSC order. Sources not yet in the batch are appended
in order of first appearance (a global-to-local table of ``num_nodes`` entries, reset after
every batch). Every kept edge ``j → i`` becomes ``row`` = local id of ``j``, ``col`` = local
id of ``i`` (messages flow to the seeds), with ``edge`` its original edge id. Cost per hop:
O(incident edges of the frontier), plus a sort of the edges of nodes above the fan-out.
"""
from __future__ import annotations

import logging
from typing import List, Optional, Sequence

import torch
from torch import Tensor

from sparsity_core.validation import check_int

from ._deps import torch_geometric

log = logging.getLogger(__name__)
_announced: set = set()
_KEY_BITS = 31  # random key range per edge; the node index sits above it in one int64 key
# NeighborLoader options the pure-torch sampler does not implement, with the value it does
_PYG_ONLY = {"replace": False, "subgraph_type": "directional", "disjoint": False, "temporal_strategy": "uniform",
             "time_attr": None, "weight_attr": None, "input_time": None, "neighbor_sampler": None, "directed": True}

BaseSampler = torch_geometric("sampler").BaseSampler


def check_num_neighbors(num_neighbors: Sequence[int]) -> List[int]:
    """A non-empty list of fan-outs, one per hop: ints ``>= 0``, or ``-1`` for all neighbours."""
    if isinstance(num_neighbors, (str, bytes)) or not isinstance(num_neighbors, Sequence) or not num_neighbors:
        raise ValueError(f"num_neighbors must be a non-empty list of ints (one fan-out per hop, -1 = all "
                         f"neighbours), got {num_neighbors!r}")
    return [check_int(k, f"num_neighbors[{h}] (-1 = all neighbours)", -1) for h, k in enumerate(num_neighbors)]


def check_seeds(seeds: Tensor, num_nodes: int, what: str = "seed nodes") -> Tensor:
    """``seeds`` as a long tensor of node ids inside ``[0, num_nodes)``."""
    if not isinstance(seeds, Tensor) or seeds.dtype in (torch.bool, torch.float16, torch.float32, torch.float64):
        raise ValueError(f"{what} must be an integer tensor of node ids, got {seeds!r}")
    seeds = seeds.view(-1).to(torch.long)
    if seeds.numel() and (int(seeds.min()) < 0 or int(seeds.max()) >= num_nodes):
        raise ValueError(f"{what} must lie in [0, {num_nodes}): min {int(seeds.min())}, max {int(seeds.max())}")
    return seeds


def sampler_backend() -> str:
    """What :func:`neighbor_loader` uses by default: ``"pyg-lib"``, ``"torch-sparse"`` (PyG's
    ``NeighborLoader``) or ``"torch"`` (:class:`UniformNeighborSampler`)."""
    typing = torch_geometric("typing")
    return "pyg-lib" if typing.WITH_PYG_LIB else "torch-sparse" if typing.WITH_TORCH_SPARSE else "torch"


class UniformNeighborSampler(BaseSampler):
    """Uniform neighbour sampling without replacement for a homogeneous ``Data`` (see the
    module for the algorithm); a ``BaseSampler`` for PyG's ``NodeLoader``.

    Args:
        data: a ``torch_geometric.data.Data`` with ``edge_index``; sample from the graph you
            train on (a sparsified one included).
        num_neighbors: fan-out per hop, ``-1`` for all neighbours.
        generator: a ``torch.Generator`` for the random keys (default: torch's global RNG).

    ``sample_from_nodes`` returns a ``SamplerOutput`` whose ``node`` starts with the seeds;
    ``edge`` holds original edge ids, so ``edge_permutation`` is ``None``. One instance
    samples one batch at a time (its node table is shared by the calls).
    """

    def __init__(self, data, num_neighbors: Sequence[int], generator: Optional[torch.Generator] = None) -> None:
        if not isinstance(data, torch_geometric("data").Data):
            raise ValueError(f"UniformNeighborSampler samples a homogeneous torch_geometric Data, got "
                             f"{type(data).__name__} (HeteroData needs pyg-lib's NeighborLoader)")
        self.num_neighbors = check_num_neighbors(num_neighbors)
        self.num_nodes = int(data.num_nodes or 0)
        edge_index = data.edge_index
        if not isinstance(edge_index, Tensor) or edge_index.dim() != 2 or edge_index.size(0) != 2 \
                or edge_index.dtype != torch.long:
            raise ValueError("data.edge_index must be a long tensor of shape [2, num_edges]")
        if edge_index.numel() and (int(edge_index.min()) < 0 or int(edge_index.max()) >= self.num_nodes):
            raise ValueError(f"data.edge_index has node ids outside [0, {self.num_nodes})")
        src, dst = edge_index.cpu()
        self.perm = torch.argsort(dst, stable=True)  # CSC position -> original edge id
        self.row = src[self.perm]
        counts = torch.bincount(dst, minlength=self.num_nodes)
        self.colptr = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
        self.generator = generator
        self._local: Optional[Tensor] = None  # global -> local node id during a batch, -1 elsewhere

    def sample_from_nodes(self, inputs, **kwargs):
        """Sample the subgraph of ``inputs.node`` (a ``NodeSamplerInput``); the metadata is
        ``(input_id, time)`` as PyG's ``NodeLoader`` expects."""
        if inputs.input_type is not None:
            raise ValueError("UniformNeighborSampler samples homogeneous graphs only (got an input node type)")
        out = self.sample(inputs.node)
        out.metadata = (inputs.input_id, inputs.time)
        return out

    def sample_from_edges(self, inputs, neg_sampling=None):
        raise NotImplementedError("UniformNeighborSampler samples from seed nodes only; link-level loaders "
                                  "(LinkNeighborLoader) need pyg-lib or torch-sparse")

    def sample(self, seeds: Tensor):
        """The ``SamplerOutput`` of the seed node ids ``seeds`` (duplicates keep their own
        positions; a node's local id is its first position)."""
        seeds = check_seeds(seeds, self.num_nodes)
        if self._local is None:
            self._local = torch.full((self.num_nodes,), -1, dtype=torch.long)
        local, n = self._local, seeds.numel()
        local.scatter_reduce_(0, seeds, torch.arange(n), reduce="amin", include_self=False)
        nodes, rows, cols, edges = [seeds], [], [], []
        num_sampled_nodes, num_sampled_edges = [n], []
        begin, total = 0, n
        try:
            for k in self.num_neighbors:
                pos, seg = self._pick(nodes[-1], k)
                nbr = self.row[pos]
                fresh = _first_appearance(nbr[local[nbr] < 0])
                nodes.append(fresh)
                local[fresh] = torch.arange(total, total + fresh.numel())
                rows.append(local[nbr])
                cols.append(seg + begin)
                edges.append(self.perm[pos])
                num_sampled_nodes.append(fresh.numel())
                num_sampled_edges.append(pos.numel())
                begin, total = total, total + fresh.numel()
        finally:
            local[torch.cat(nodes)] = -1
        SamplerOutput = torch_geometric("sampler").SamplerOutput
        return SamplerOutput(node=torch.cat(nodes), row=torch.cat(rows), col=torch.cat(cols), edge=torch.cat(edges),
                             batch=None, num_sampled_nodes=num_sampled_nodes, num_sampled_edges=num_sampled_edges)

    def _pick(self, frontier: Tensor, k: int):
        """CSC positions of the kept in-edges of ``frontier`` and, for each, the index of its
        frontier node; grouped by frontier node in frontier order, CSC order inside a node."""
        start = self.colptr[frontier]
        deg = self.colptr[frontier + 1] - start
        if k < 0:
            return _gather(start, deg, torch.arange(frontier.numel()))
        hub = deg > 2 * k  # drawn slot by slot; the others gather their edges
        pos, seg = _gather(start, deg, torch.nonzero(~hub).flatten())
        over = torch.nonzero(deg[seg] > k).flatten()  # edges of nodes with k < degree <= 2k
        if over.numel():
            keys = (seg[over] << _KEY_BITS) | torch.randint(0, 1 << _KEY_BITS, (over.numel(),),
                                                            generator=self.generator)
            order = over[torch.argsort(keys, stable=True)]
            first = torch.searchsorted(seg[order], seg[order])  # sorted by node: a node's first edge
            keep = torch.ones(pos.numel(), dtype=torch.bool)
            keep[order[torch.arange(order.numel()) - first >= k]] = False
            pos, seg = pos[keep], seg[keep]
        hubs = torch.nonzero(hub).flatten()
        if hubs.numel() and k:
            hub_seg, offset = self._distinct_offsets(deg[hubs], k)
            pos = torch.cat([pos, start[hubs][hub_seg] + offset])
            seg = torch.cat([seg, hubs[hub_seg]])
            seg, order = torch.sort(seg, stable=True)
            pos = pos[order]
        return pos, seg

    def _distinct_offsets(self, deg: Tensor, k: int):
        """``k`` distinct offsets in ``[0, deg[i])`` for every node ``i`` (all ``deg > 2k``),
        uniform over k-subsets: draw all, redraw every repeated value but one until none is
        repeated (each draw collides with probability < 1/2; later rounds sort only the nodes
        that had a repeat); sorted by node then offset."""
        node = torch.repeat_interleave(torch.arange(deg.numel()), k)
        d = deg[node]
        offset = (torch.rand(node.numel(), dtype=torch.float64, generator=self.generator) * d).long()
        span = int(deg.max())
        todo = torch.arange(node.numel())  # slots of the nodes still to check
        while todo.numel():
            key, order = torch.sort(node[todo] * span + offset[todo])
            repeated = todo[order[1:][key[1:] == key[:-1]]]
            if repeated.numel() == 0:
                break
            offset[repeated] = (torch.rand(repeated.numel(), dtype=torch.float64, generator=self.generator)
                                * d[repeated]).long()
            again = torch.zeros(deg.numel(), dtype=torch.bool)
            again[node[repeated]] = True
            todo = torch.nonzero(again[node]).flatten()
        order = torch.argsort(node * span + offset)
        return node[order], offset[order]


def _gather(start: Tensor, deg: Tensor, which: Tensor):
    """CSC positions of every in-edge of the frontier nodes ``which`` (ascending) and their
    frontier index."""
    counts = deg[which]
    total = int(counts.sum())
    seg = torch.repeat_interleave(which, counts, output_size=total)
    first = torch.repeat_interleave(counts.cumsum(0) - counts, counts, output_size=total)
    return start[seg] + torch.arange(total) - first, seg


def _first_appearance(ids: Tensor) -> Tensor:
    """The distinct values of ``ids`` in order of first appearance."""
    if ids.numel() == 0:
        return ids
    uniq, inverse = torch.unique(ids, return_inverse=True)
    first = torch.full((uniq.numel(),), ids.numel(), dtype=torch.long)
    first.scatter_reduce_(0, inverse, torch.arange(ids.numel()), reduce="amin")
    return uniq[torch.argsort(first)]


def neighbor_loader(data, num_neighbors: Sequence[int], batch_size: int = 1, shuffle: bool = False,
                    input_nodes=None, backend: str = "auto", **kwargs):
    """A neighbour-sampling loader over the seed nodes ``input_nodes`` (``None``: all; a
    bool mask or node ids), ``batch_size`` seeds per batch.

    ``backend="auto"`` returns PyG's ``NeighborLoader`` when pyg-lib or torch-sparse is
    importable, else PyG's ``NodeLoader`` over :class:`UniformNeighborSampler`; ``"pyg"`` or
    ``"torch"`` force one. The choice is logged once per process. ``kwargs`` go to the loader
    (``num_workers``, ``drop_last``, ``transform``...); NeighborLoader-only sampler options
    (``replace=True``, ``disjoint``, temporal or weighted sampling, other subgraph types) raise
    ``ValueError`` on the torch backend. The loss of a batch belongs on its first
    ``batch.batch_size`` nodes (the seeds).
    """
    num_neighbors = check_num_neighbors(num_neighbors)
    batch_size = check_int(batch_size, "batch_size", 1)
    if backend not in ("auto", "pyg", "torch"):
        raise ValueError(f"backend must be 'auto', 'pyg' or 'torch', got {backend!r}")
    available = sampler_backend()
    if backend == "pyg" and available == "torch":
        raise ImportError("backend='pyg' needs pyg-lib or torch-sparse (PyG's NeighborLoader); use backend='torch'")
    _check_input_nodes(input_nodes, data)
    use = available if backend == "auto" else "torch" if backend == "torch" else available
    loader = torch_geometric("loader")
    if use == "torch":
        unsupported = {k: v for k, v in kwargs.items() if k in _PYG_ONLY and v != _PYG_ONLY[k]}
        if unsupported:
            raise ValueError(f"{sorted(unsupported)} need PyG's NeighborLoader (pyg-lib or torch-sparse); the "
                             "pure-torch sampler does directional uniform sampling without replacement")
        kwargs = {k: v for k, v in kwargs.items() if k not in _PYG_ONLY and k != "is_sorted"}
        sampler = UniformNeighborSampler(data, num_neighbors)
        result = loader.NodeLoader(data, node_sampler=sampler, input_nodes=input_nodes, batch_size=batch_size,
                                   shuffle=shuffle, **kwargs)
    else:
        result = loader.NeighborLoader(data, num_neighbors=num_neighbors, input_nodes=input_nodes,
                                       batch_size=batch_size, shuffle=shuffle, **kwargs)
    if use not in _announced:
        _announced.add(use)
        log.info("neighbor_loader: %s", "PyG NeighborLoader (%s)" % use if use != "torch" else
                 "PyG NodeLoader with the pure-torch UniformNeighborSampler (no pyg-lib / torch-sparse)")
    return result


def _check_input_nodes(input_nodes, data) -> None:
    """Seeds must exist: a bool mask of ``num_nodes`` entries or node ids in range, not empty."""
    if input_nodes is None or not isinstance(data, torch_geometric("data").Data):
        return  # all nodes, or a HeteroData input handled by PyG's NeighborLoader
    n = int(data.num_nodes or 0)
    if isinstance(input_nodes, Tensor) and input_nodes.dtype == torch.bool:
        if input_nodes.numel() != n:
            raise ValueError(f"input_nodes as a mask must have num_nodes={n} entries, got {input_nodes.numel()}")
        input_nodes = input_nodes.nonzero().view(-1)
    elif not isinstance(input_nodes, Tensor):
        input_nodes = torch.as_tensor(input_nodes)
    seeds = check_seeds(input_nodes, n, "input_nodes")
    if seeds.numel() == 0:
        raise ValueError("input_nodes selects no node: nothing to sample")
