"""Spectral similarity of a graph and its sparsifier.

For Laplacians ``L_G`` and ``L_H`` (each shifted by ``shift·I`` so both are positive
definite on connected and disconnected graphs alike), the relative condition number is

    κ(G, H) = λ_max(L_G, L_H) / λ_min(L_G, L_H),

the ratio of the extreme generalized eigenvalues of ``L_G x = λ L_H x``; κ = 1 iff H
preserves every quadratic form of G up to one scale. ``λ_min`` is computed as
``1 / λ_max(L_H, L_G)`` so both come from the well-converging largest-eigenvalue iteration
of scipy's ``eigsh``.
"""
from __future__ import annotations

from typing import Optional

from torch import Tensor

from sparsity_core.validation import check_positive

from ._deps import torch_geometric
from .teddy import check_edge_index


def laplacian(edge_index: Tensor, num_nodes: int, edge_weight: Optional[Tensor] = None, shift: float = 1e-6):
    """``L + shift·I`` as a scipy CSR matrix (``edge_index`` holds both directions of an
    undirected edge, as PyG stores it)."""
    import scipy.sparse as sp

    utils = torch_geometric("utils")
    index, weight = utils.get_laplacian(edge_index, edge_weight, num_nodes=num_nodes)
    lap = utils.to_scipy_sparse_matrix(index, weight, num_nodes=num_nodes).tocsr()
    return (lap + shift * sp.identity(num_nodes, format="csr")).astype("float64")


DENSE_FALLBACK_NODES = 4000


def _largest(a, b) -> float:
    import scipy.linalg
    from scipy.sparse.linalg import ArpackNoConvergence, eigsh

    n = a.shape[0]
    if n <= 3:  # ARPACK needs k < n; tiny graphs are solved densely
        return float(scipy.linalg.eigh(a.toarray(), b.toarray(), eigvals_only=True)[-1])
    try:
        return float(eigsh(a, k=1, M=b, which="LA", return_eigenvectors=False)[0])
    except ArpackNoConvergence:  # clustered spectra (H close to G): a wider Krylov space, then dense
        try:
            return float(eigsh(a, k=1, M=b, which="LA", ncv=min(n - 1, 64), maxiter=100 * n,
                               return_eigenvectors=False)[0])
        except ArpackNoConvergence:
            if n > DENSE_FALLBACK_NODES:
                raise
            return float(scipy.linalg.eigh(a.toarray(), b.toarray(), eigvals_only=True)[-1])


def relative_condition_number(edge_index_g: Tensor, edge_index_h: Tensor, num_nodes: int,
                              weight_g: Optional[Tensor] = None, weight_h: Optional[Tensor] = None,
                              shift: float = 1e-6) -> float:
    """κ(G, H) of two graphs on the same ``num_nodes`` nodes (see the module docstring)."""
    check_edge_index(edge_index_g, num_nodes, "edge_index_g")
    check_edge_index(edge_index_h, num_nodes, "edge_index_h")
    check_positive(shift, "shift")
    is_undirected = torch_geometric("utils").is_undirected
    for what, ei, w in (("G", edge_index_g, weight_g), ("H", edge_index_h, weight_h)):
        if not is_undirected(ei, w, num_nodes=num_nodes):
            raise ValueError(f"{what} is directed (or its two directions differ in weight): store both directions "
                             "of every edge, e.g. with torch_geometric.utils.to_undirected")
    lg = laplacian(edge_index_g, num_nodes, weight_g, shift)
    lh = laplacian(edge_index_h, num_nodes, weight_h, shift)
    return _largest(lg, lh) * _largest(lh, lg)
