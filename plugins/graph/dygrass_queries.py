"""Questions a user asks a :class:`~.dygrass.DynamicSparsifier` without exporting the graphs:
is an edge in H (or G), with which weight, are two nodes connected, which components.
Edges are keyed ``min(u, v)·base + max(u, v)``; component labels are kept up to date by the
sparsifier's updates."""
from __future__ import annotations

from typing import Optional, Union

import numpy as np
import torch
from torch import Tensor

from sparsity_core.validation import check_int

from .teddy import check_edge_index


class SparsifierQueries:
    """Mixed into :class:`~.dygrass.DynamicSparsifier` (it holds ``num_nodes``, ``_base``,
    ``_weight`` (G's edges), ``_in_h`` (H's edges) and ``_comp`` (component labels))."""

    def _node(self, u: object, what: str) -> int:
        return check_int(u, what, 0, self.num_nodes - 1)

    def _edges_of(self, graph: object) -> Union[dict, set]:
        if not isinstance(graph, bool):
            raise ValueError(f"graph must be a bool (True: ask about G, False: about H), got {graph!r}")
        return self._weight if graph else self._in_h

    def has_edge(self, u: int, v: int, *, graph: bool = False) -> bool:
        """Whether the undirected edge ``(u, v)`` is in H (in G with ``graph=True``); a
        self-loop never is. Raises ``ValueError`` for an id outside ``[0, num_nodes)``."""
        edges = self._edges_of(graph)
        u, v = self._node(u, "node id u"), self._node(v, "node id v")
        return u != v and min(u, v) * self._base + max(u, v) in edges

    def weight(self, u: int, v: int, *, graph: bool = False) -> Optional[float]:
        """Weight of the edge ``(u, v)`` if it is in H (in G with ``graph=True``), else
        ``None`` (H keeps G's weights)."""
        return self._weight[min(u, v) * self._base + max(u, v)] if self.has_edge(u, v, graph=graph) else None

    def contains(self, edge_index: Tensor, *, graph: bool = False) -> Tensor:
        """Bool tensor ``[E]``: whether each column ``(u, v)`` of ``edge_index`` is an edge of
        H (of G with ``graph=True``), in either direction; self-loops and repeats are
        allowed (a self-loop is never an edge). Raises ``ValueError`` for a bad tensor or ids
        outside ``[0, num_nodes)``."""
        edges = self._edges_of(graph)
        if isinstance(edge_index, Tensor) and edge_index.dtype == torch.long and list(edge_index.shape) == [2, 0]:
            return torch.zeros(0, dtype=torch.bool)
        check_edge_index(edge_index, self.num_nodes, "edge_index")
        a, b = edge_index.cpu().numpy()
        key = (np.minimum(a, b) * self._base + np.maximum(a, b)).tolist()
        found = np.fromiter((k in edges for k in key), dtype=bool, count=len(key)) & (a != b)
        return torch.from_numpy(found)

    def connected(self, u: int, v: int) -> bool:
        """Whether ``u`` and ``v`` are in one connected component of H, which is the same as in
        G (H keeps G's components); O(1), from labels kept up to date."""
        u, v = self._node(u, "node id u"), self._node(v, "node id v")
        return bool(self._comp[u] == self._comp[v])

    def components(self) -> Tensor:
        """Long tensor ``[num_nodes]``: the component of every node in H (= in G), numbered
        ``0, 1, …`` in the order of their smallest node id."""
        _, first, inverse = np.unique(self._comp[:self.num_nodes], return_index=True, return_inverse=True)
        rank = np.empty(first.size, dtype=np.int64)
        rank[np.argsort(first, kind="stable")] = np.arange(first.size)
        return torch.from_numpy(rank[inverse.reshape(-1)])

