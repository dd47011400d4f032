"""dyGRASS dynamic spectral sparsification (Han, Feng et al., 2025, "dyGRASS: Dynamic
Spectral Graph Sparsification via Localized Random Walks"), started from a GRASS/feGRASS
style static sparsifier (Feng, 2016/2020, "GRASS: Graph Spectral Sparsification Leveraged
by Scalable Spectral Perturbation Analysis"; Liu & Yu, 2022, "feGRASS: Fast and Effective
Graph Spectral Sparsification for Scalable Power Grid Analysis").

A sparsifier ``H ⊆ G`` of an undirected graph with positive weights is judged by the
relative condition number ``κ(G, H) = λ_max(L_G, L_H) / λ_min(L_G, L_H)``
(:func:`.spectral.relative_condition_number`). For a subgraph ``λ_min ≈ 1``, and adding
an edge ``e = (p, q)`` of weight ``w`` to G raises ``λ_max`` by at most its *spectral
criticality* ``w · R_H(p, q)``, with ``R_H`` the effective resistance in H. Every path
``P`` from p to q in H bounds it: ``R_H(p, q) ≤ Σ_{e ∈ P} 1/w_e``.

Static start (:func:`grass_sparsifier`): a spanning forest T that is a maximum spanning
tree of the feGRASS-style effective weights ``w_e · log(1 + max(d_u, d_v)) /
(dist(r, u) + dist(r, v))`` (``d`` degrees, ``dist`` resistance distance from the
highest-degree node ``r`` of the component; this favours heavy, central edges and keeps
tree paths short), then the off-tree edges of highest criticality ``w_e · R_T(e)`` until
``|E_H| = density · |V|``, skipping an edge whose two endpoints both lie within ``beta``
tree hops of endpoints of edges already recovered (feGRASS's similarity filter: it would
close nearly the same cycle). ``R_T(u, v) = ρ(u) + ρ(v) − 2 ρ(lca(u, v))`` with ``ρ`` the
resistance from the root along T, computed for all edges at once by binary lifting.

Dynamic updates (:class:`DynamicSparsifier`):

- insertion of ``(p, q, w)``: the edge joins G; ``num_walks`` non-backtracking random walks
  from p and as many from q, of at most ``max_steps`` steps, run in H accumulating
  ``R = Σ 1/w``. A p-walker and a q-walker that visit one node join into a p–q walk (a
  walker reaching the other endpoint is the special case). If one such walk has
  ``w · R < threshold`` the edge is spectrally redundant and H is left alone; otherwise it
  joins H. (The paper walks from p alone; meeting in the middle finds far more of the short
  paths H already has when they pass through hubs, where a walker from one end rarely
  picks the right branch.)
- deletion of ``(p, q)``: the edge leaves G; if it was in H it leaves H too, and the path of
  least resistance from p to q in the updated G is added to H (an exact bidirectional
  Dijkstra, where the paper samples walks in G and keeps the best), so H stays connected
  wherever G is.
- node insertion (:meth:`DynamicSparsifier.add_nodes`): new isolated nodes, each its own
  component, that later insertions can attach (their first edge always joins H: no walk
  reaches a node H does not connect).

Queries without exporting the graph: membership of edges in H or G (``has_edge``,
``contains``, ``weight``) from the edge dictionaries, and connectivity (``connected``,
``components``) from component labels of H kept up to date (a merge relabels the smaller
component; a deletion that leaves no path between its ends splits one, and the smaller side
is relabelled). H has G's components at all times, so the answers hold for G as well.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from sparsity_core.validation import check_int, check_positive, check_range

from .dygrass_walks import (SlackAdjacency, component_labels, flood_label, lowest_resistance_path, recover_off_tree,
                            spanning_forest, split_label, tree_resistance, walk_resistance)
from .dygrass_queries import SparsifierQueries
from .teddy import check_edge_index


def _weights(edge_weight: Optional[Tensor], num_edges: int, what: str) -> np.ndarray:
    if edge_weight is None:
        return np.ones(num_edges, dtype=np.float64)
    if not isinstance(edge_weight, Tensor) or not edge_weight.is_floating_point():
        raise ValueError(f"{what} must be a floating-point tensor, got "
                         f"{getattr(edge_weight, 'dtype', type(edge_weight).__name__)}")
    if edge_weight.dim() != 1 or edge_weight.numel() != num_edges:
        raise ValueError(f"{what} must have shape [{num_edges}], got {list(edge_weight.shape)}")
    w = edge_weight.detach().cpu().double().numpy()
    if not (np.isfinite(w).all() and (w > 0).all()):
        raise ValueError(f"{what} must be finite and > 0 (a weight is a conductance 1/resistance)")
    return w


def _num_nodes(edge_index: Tensor, num_nodes: Optional[int]) -> int:
    if num_nodes is not None:
        return check_int(num_nodes, "num_nodes", 1)
    if isinstance(edge_index, Tensor) and edge_index.dtype == torch.long and edge_index.numel():
        return int(edge_index.max()) + 1
    return 1  # let check_edge_index name what is wrong


def _canonical(edge_index: Tensor, edge_weight: Optional[Tensor], num_nodes: int):
    """Unique undirected edges ``(u < v)``, sorted by ``u·n + v``, self-loops dropped (they do
    not enter a Laplacian). An edge may be given once or in both directions; its copies must
    carry the same weight."""
    check_edge_index(edge_index, num_nodes)
    w = _weights(edge_weight, edge_index.size(1), "edge_weight")
    a, b = edge_index.cpu().numpy()
    keep = a != b
    lo, hi, w = np.minimum(a, b)[keep], np.maximum(a, b)[keep], w[keep]
    if lo.size == 0:
        raise ValueError("edge_index holds only self-loops: the graph has no edge to sparsify")
    key, first, inverse = np.unique(lo * num_nodes + hi, return_index=True, return_inverse=True)
    w_lo = np.full(key.size, np.inf)
    w_hi = np.full(key.size, -np.inf)
    np.minimum.at(w_lo, inverse, w)
    np.maximum.at(w_hi, inverse, w)
    if (w_lo != w_hi).any():
        bad = int(np.flatnonzero(w_lo != w_hi)[0])
        raise ValueError(f"edge ({key[bad] // num_nodes}, {key[bad] % num_nodes}) is given with different "
                         f"weights ({w_lo[bad]} and {w_hi[bad]}); an undirected edge has one weight")
    return key // num_nodes, key % num_nodes, w[first]


def _grass(src, dst, w, n: int, density: float, beta: int) -> Tuple[np.ndarray, float]:
    """Mask of H over the edges, and the criticality of the last off-tree edge recovered
    (``nan`` when none was)."""
    keep, roots = spanning_forest(src, dst, w, n)
    off = np.flatnonzero(~keep)
    crit = w[off] * tree_resistance(src[keep], dst[keep], w[keep], n, roots, src[off], dst[off])
    rank = np.argsort(-crit, kind="stable")
    budget = min(off.size, max(0, int(math.floor(density * n)) - int(keep.sum())))
    chosen = recover_off_tree(src, dst, n, keep, off[rank], budget, beta)
    keep[off[rank[chosen]]] = True
    return keep, float(crit[rank[chosen[-1]]]) if chosen.size else math.nan  # the least critical one


def _pyg(src: np.ndarray, dst: np.ndarray, w: np.ndarray, n: int) -> Tuple[Tensor, Tensor]:
    """Both directions of every edge, sorted by (row, col), as PyG stores an undirected graph."""
    row, col, ww = np.concatenate([src, dst]), np.concatenate([dst, src]), np.concatenate([w, w])
    order = np.argsort(row * n + col, kind="stable")
    return torch.from_numpy(np.stack([row[order], col[order]])), torch.from_numpy(ww[order])


_DENSITY = "density (target |E_H| / |V|)"  # how the density checks name the argument


def grass_sparsifier(edge_index: Tensor, edge_weight: Optional[Tensor] = None, num_nodes: Optional[int] = None,
                     density: float = 1.15, beta: int = 3) -> Tuple[Tensor, Tensor]:
    """Static spectral sparsifier of an undirected graph: the effective-weight spanning
    forest plus the off-tree edges of highest criticality ``w_e · R_T(e)`` up to
    ``density · |V|`` edges (see the module docstring). Returns ``(edge_index, edge_weight)``
    of H with both directions of each edge, weights as in G (unit if ``edge_weight`` is
    ``None``)."""
    density = check_range(density, _DENSITY, 1.0, math.inf, high_open=True)
    beta = check_int(beta, "beta", 0)
    n = _num_nodes(edge_index, num_nodes)
    src, dst, w = _canonical(edge_index, edge_weight, n)
    keep, _ = _grass(src, dst, w, n, density, beta)
    return _pyg(src[keep], dst[keep], w[keep], n)


class DynamicSparsifier(SparsifierQueries):
    """A spectral sparsifier H of a graph G kept up to date under edge insertions and
    deletions (dyGRASS, Han, Feng et al., 2025; see the module docstring for the math).

    Args:
        edge_index: ``[2, E]`` long tensor of an undirected graph (each edge once or in both
            directions; self-loops are dropped).
        edge_weight: ``[E]`` positive weights, or ``None`` for unit weights.
        num_nodes: number of nodes (default ``max id + 1``); :meth:`add_nodes` adds more.
        density: target ``|E_H| / |V|`` of the initial sparsifier (:func:`grass_sparsifier`).
        beta: tree-hop radius of the similarity filter of the initial sparsifier.
        num_walks: random walks from each endpoint per insertion.
        max_steps: steps per walk.
        threshold: an inserted edge ``(p, q, w)`` is redundant when a walk reaches q with
            ``w · R < threshold``. ``None``: the criticality ``w_e · R_T(e)`` of the last
            off-tree edge the initial sparsifier recovered, so insertions meet the bar the
            static construction set (``10`` when G is a forest and recovered none).
        seed: seed of the walks' random generator.

    Usage::

        dyn = DynamicSparsifier(edge_index, num_nodes=n)
        added = dyn.insert_edges(new_edges)       # bool per edge: joined H
        in_h = dyn.delete_edges(old_edges)        # bool per edge: was in H (path restored)
        v = dyn.add_nodes(1)                      # a new isolated node, id v
        dyn.insert(v, 0)                          # ... attached by an edge
        dyn.has_edge(v, 0), dyn.connected(v, 5)   # queries, G is not exported
        h_index, h_weight = dyn.sparsifier()

    Edges are stored under the key ``min(u, v) · base + max(u, v)``; ``base`` is a capacity
    ``>= num_nodes`` (equal to it until :meth:`add_nodes` first grows it), and the per-node
    arrays (both adjacencies, the walks' scratch, the component labels) have ``base`` rows,
    so adding nodes re-keys and regrows them only when the capacity runs out (amortised O(1)
    per node).
    """

    def __init__(self, edge_index: Tensor, edge_weight: Optional[Tensor] = None, num_nodes: Optional[int] = None,
                 *, density: float = 1.15, beta: int = 3, num_walks: int = 256, max_steps: int = 100,
                 threshold: Optional[float] = None, seed: Optional[int] = 0):
        self.density = check_range(density, _DENSITY, 1.0, math.inf, high_open=True)
        self.beta = check_int(beta, "beta", 0)
        self.num_walks, self.max_steps = check_int(num_walks, "num_walks", 1), check_int(max_steps, "max_steps", 1)
        if threshold is not None:
            threshold = check_positive(threshold, "threshold (or None)")
        if seed is not None:
            seed = check_int(seed, "seed (or None)")
        n = self.num_nodes = _num_nodes(edge_index, num_nodes)
        src, dst, w = _canonical(edge_index, edge_weight, n)
        keep, cut = _grass(src, dst, w, n, self.density, self.beta)
        self.threshold = float(threshold) if threshold is not None else (10.0 if math.isnan(cut) else cut)
        self.seed, self._rng = seed, np.random.default_rng(seed)
        key = src * n + dst
        self._base = n  # edge key base and rows of the per-node arrays, >= num_nodes
        self._weight = dict(zip(key.tolist(), w.tolist()))
        self._in_h = set(key[keep].tolist())
        self._g = SlackAdjacency(n, src, dst, 1.0 / w)
        self._h = SlackAdjacency(n, src[keep], dst[keep], 1.0 / w[keep])
        self._best = np.full(2 * n, math.inf)  # scratch of the walks, all inf between calls
        self._comp = component_labels(src[keep], dst[keep], n)  # component label of every node (of H, = of G)
        self._size = np.bincount(self._comp)  # nodes per label (0 for a label no longer used)
        self._labels = int(self._size.size)  # next free label

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(num_nodes={self.num_nodes}, edges_g={len(self._weight)}, "
                f"edges_h={len(self._in_h)}, num_walks={self.num_walks}, max_steps={self.max_steps}, "
                f"threshold={self.threshold:.4g}, seed={self.seed})")

    @property
    def num_edges(self) -> Tuple[int, int]:
        """``(|E_G|, |E_H|)``, undirected edges."""
        return len(self._weight), len(self._in_h)

    def _export(self, keys) -> Tuple[Tensor, Tensor]:
        key = np.fromiter(sorted(keys), dtype=np.int64, count=len(keys))
        w = np.fromiter((self._weight[k] for k in key.tolist()), dtype=np.float64, count=key.size)
        return _pyg(key // self._base, key % self._base, w, self.num_nodes)

    def sparsifier(self) -> Tuple[Tensor, Tensor]:
        """``(edge_index, edge_weight)`` of H, both directions of every edge, sorted."""
        return self._export(self._in_h)

    def graph(self) -> Tuple[Tensor, Tensor]:
        """``(edge_index, edge_weight)`` of G, both directions of every edge, sorted."""
        return self._export(self._weight)

    def _keys(self, edge_index: Tensor, what: str) -> Tuple[np.ndarray, np.ndarray]:
        """Validate a batch (one column per undirected edge) and return ``(lo, hi)``."""
        if isinstance(edge_index, Tensor) and edge_index.dtype == torch.long and list(edge_index.shape) == [2, 0]:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)  # an empty batch changes nothing
        check_edge_index(edge_index, self.num_nodes, what)
        a, b = edge_index.cpu().numpy()
        if (a == b).any():
            i = int(np.flatnonzero(a == b)[0])
            raise ValueError(f"{what} column {i} is a self-loop ({a[i]}, {a[i]}); it has no place in a Laplacian")
        lo, hi = np.minimum(a, b), np.maximum(a, b)
        key = lo * self._base + hi
        uniq, count = np.unique(key, return_counts=True)
        if (count > 1).any():
            k = int(uniq[count > 1][0])
            raise ValueError(f"{what} holds edge ({k // self._base}, {k % self._base}) more than once "
                             "(one column per undirected edge)")
        return lo, hi

    def insert_edges(self, edge_index: Tensor, edge_weight: Optional[Tensor] = None) -> Tensor:
        """Insert the edges (one column each) into G in order; return a bool tensor telling
        which also joined H. Raises ``ValueError`` before any change if an edge is already
        in G, is a self-loop, repeats, or has a bad weight."""
        lo, hi = self._keys(edge_index, "edge_index")
        w = _weights(edge_weight, lo.size, "edge_weight")
        n = self._base
        present = [k for k in (lo * n + hi).tolist() if k in self._weight]
        if present:
            raise ValueError(f"edge ({present[0] // n}, {present[0] % n}) is already in G; delete it first to "
                             "change its weight")
        added = np.zeros(lo.size, dtype=bool)
        for i, (p, q, wi) in enumerate(zip(lo.tolist(), hi.tolist(), w.tolist())):
            self._weight[p * n + q] = wi
            self._g.add(p, q, 1.0 / wi)
            found = walk_resistance(self._h, p, q, self.threshold / wi, self.num_walks, self.max_steps, self._rng,
                                    self._best)
            if math.isinf(found):
                self._add_to_h(p, q)
                added[i] = True
        return torch.from_numpy(added)

    def delete_edges(self, edge_index: Tensor) -> Tensor:
        """Delete the edges (one column each) from G in order; return a bool tensor telling
        which were in H (for those, the least-resistance path between their ends in the
        updated G joined H). Raises ``ValueError`` before any change if an edge is not in G
        or repeats."""
        lo, hi = self._keys(edge_index, "edge_index")
        n = self._base
        missing = [k for k in (lo * n + hi).tolist() if k not in self._weight]
        if missing:
            raise ValueError(f"edge ({missing[0] // n}, {missing[0] % n}) is not in G; nothing was deleted")
        was_in_h = np.zeros(lo.size, dtype=bool)
        for i, (p, q) in enumerate(zip(lo.tolist(), hi.tolist())):
            del self._weight[p * n + q]
            self._g.remove(p, q)
            if p * n + q in self._in_h:
                was_in_h[i] = True
                self._in_h.discard(p * n + q)
                self._h.remove(p, q)
                path = lowest_resistance_path(self._g, p, q)
                if path is None:  # (p, q) was a bridge of G: its component falls apart
                    self._split(p, q)
                    continue
                for a, b in zip(path[:-1], path[1:]):
                    if min(a, b) * n + max(a, b) not in self._in_h:
                        self._add_to_h(min(a, b), max(a, b))
        return torch.from_numpy(was_in_h)

    def _add_to_h(self, p: int, q: int) -> None:
        key = p * self._base + q
        self._in_h.add(key)
        self._h.add(p, q, 1.0 / self._weight[key])
        a, b = int(self._comp[p]), int(self._comp[q])
        if a != b:  # the edge joins two components: relabel the smaller one
            small, big, seed = (a, b, p) if self._size[a] <= self._size[b] else (b, a, q)
            flood_label(self._h, self._comp, seed, small, big)
            self._size[big] += self._size[small]
            self._size[small] = 0

    def _new_labels(self, count: int) -> int:
        """Reserve ``count`` fresh component labels; return the first."""
        first = self._labels
        self._labels += count
        if self._labels > self._size.size:
            self._size = np.concatenate([self._size, np.zeros(max(self._labels - self._size.size, self._size.size),
                                                              dtype=self._size.dtype)])
        return first

    def _split(self, p: int, q: int) -> None:
        """p and q, one component until now, have no path between them any more (in G, hence
        in H): the smaller side gets a fresh label."""
        old = int(self._comp[p])
        first = self._new_labels(2)
        new, size = split_label(self._h, self._comp, p, q, old, first, first + 1)
        self._size[new] = size
        self._size[old] -= size

    # -- nodes ------------------------------------------------------------------------------
    def add_nodes(self, count: int = 1) -> int:
        """Add ``count`` isolated nodes to G (and H) and return the id of the first; the new
        ids are ``first … first + count - 1``, and each is its own component until an
        inserted edge attaches it (its first edge always joins H). Raises ``ValueError``,
        changing nothing, unless ``count`` is an int ``>= 1``."""
        count = check_int(count, "count (nodes to add)", 1)
        first = self.num_nodes
        if first + count > self._base:
            self._reserve(max(first + count, self._base + self._base // 2 + 8))
        label = self._new_labels(count)
        self._comp[first:first + count] = np.arange(label, label + count)
        self._size[label:label + count] = 1
        self.num_nodes = first + count
        return first

    def _reserve(self, base: int) -> None:
        """Grow the capacity to ``base`` rows: re-key the edges, grow both adjacencies, the
        walks' scratch and the component labels (rows past ``num_nodes`` stay isolated)."""
        old = self._base
        self._weight = {(k // old) * base + k % old: w for k, w in self._weight.items()}
        self._in_h = {(k // old) * base + k % old for k in self._in_h}
        self._g.add_nodes(base - old)
        self._h.add_nodes(base - old)
        self._best = np.full(2 * base, math.inf)
        self._comp = np.concatenate([self._comp, np.full(base - old, -1, dtype=np.int64)])
        self._base = base

    def insert(self, u: int, v: int, w: float = 1.0) -> bool:
        """Insert one edge; ``True`` if it joined H."""
        w = check_positive(w, "w (the edge weight)")
        return bool(self.insert_edges(_pair(u, v), torch.tensor([w], dtype=torch.float64))[0])

    def delete(self, u: int, v: int) -> bool:
        """Delete one edge; ``True`` if it was in H."""
        return bool(self.delete_edges(_pair(u, v))[0])


def _pair(u: int, v: int) -> Tensor:
    return torch.tensor([[check_int(u, "node id u")], [check_int(v, "node id v")]], dtype=torch.long)
