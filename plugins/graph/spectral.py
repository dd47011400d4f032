"""Spectral similarity of a graph and its sparsifier.

For Laplacians ``L_G`` and ``L_H`` (each shifted by ``shift·I`` so both are positive
definite on connected and disconnected graphs alike), the relative condition number is

    κ(G, H) = λ_max(L_G, L_H) / λ_min(L_G, L_H),

the ratio of the extreme generalized eigenvalues of ``L_G x = λ L_H x``; κ = 1 iff H
preserves every quadratic form of G up to one scale. Since ``λ(L_H, L_G) = 1 / λ(L_G, L_H)``,
``κ(G, H) = κ(H, G)``, so the roles can be swapped freely; below ``S`` is whichever of the two
Laplacians has fewer nonzeros (the sparsifier, as a rule) and ``D`` the other, and
``κ = λ_max(D, S) / λ_min(D, S)``. ``S`` is factorised once (sparse LU of the SPD matrix
``L_S + shift·I`` with a minimum-degree ordering on ``S + Sᵀ``, no pivoting: a Cholesky in LU
form, with little fill for a tree plus a few edges), and both ends of the spectrum of
``S⁻¹D`` are computed with solves by that factor; ``D`` is only multiplied (except in the
shift-invert case below).

Exact shortcut. Both shifted Laplacians map the constant vector to ``shift·1``, so 1 is always
a generalized eigenvalue and ``λ_min ≤ 1 ≤ λ_max``. If ``A_S ≤ A_D`` entrywise (adjacency
matrices, i.e. every edge of S is an edge of D with at most D's weight; in particular S is a
subgraph of D with D's weights), then ``L_D − L_S`` is the Laplacian of the nonnegative
weights ``A_D − A_S`` (the shifts cancel), hence positive semidefinite, so
``xᵀL_S x ≤ xᵀL_D x`` for all x: ``λ_min(D, S) ≥ 1``, and with the constant vector
``λ_min(D, S) = 1`` exactly, with no solve. Symmetrically ``A_D ≤ A_S`` gives
``λ_max(D, S) = 1``; both (equal adjacency) give κ = 1. The test is one sparse subtraction.

Otherwise:

- ``λ_max(D, S)``: the largest eigenvalue by scipy's ``eigsh`` (ARPACK, mode 2, ``M = L_S``
  with the solves of the factor above), which converges quickly because the top of the
  spectrum is well separated;
- ``λ_min(D, S)``: the smallest eigenvalue by a Lanczos iteration on ``S⁻¹D`` in the
  ``L_S`` inner product (one factor solve and one product with ``L_D`` per step, three-term
  recurrence without reorthogonalisation, which only duplicates converged Ritz values and
  leaves the extreme one correct), stopped when the smallest Ritz value ``θ`` of the
  tridiagonal matrix has residual ``‖D y − θ S y‖_{S⁻¹} ≤ 1e-5·θ`` and moved by less
  than ``1e-10·θ`` over the last 10 steps. Its step count grows like ``√(λ_max/λ_min)``
  (seen: 20–45·√κ). When ``40·√λ_max(D, S)`` predicts more than 1,000 steps and ``L_D`` can
  be factorised safely — its envelope in reverse Cuthill–McKee order, an upper bound on the
  fill of a Cholesky factor in that order, has at most 5·10⁷ entries (meshes, small graphs;
  not expanders such as Barabási–Albert graphs of 10⁵ nodes, whose factor would not fit in
  memory) — ARPACK's shift-invert at σ = 0 with a factorisation of ``L_D`` is used instead:
  the largest eigenvalue ``1/λ_min`` of ``D⁻¹S``, usually well separated, in a few dozen solves.

Graphs of at most 3 nodes are solved densely; when an iteration does not converge, graphs of
at most ``DENSE_FALLBACK_NODES`` nodes are solved densely, larger ones raise
``ArpackNoConvergence``.
"""
from __future__ import annotations

from collections.abc import Callable
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
LANCZOS_TOL = 1e-10  # relative change of the Ritz value over LANCZOS_CHECK steps; the residual test is its sqrt
LANCZOS_CHECK = 10
LANCZOS_STEPS_PER_SQRT_KAPPA = 40  # Lanczos steps to λ_min seen: 20–45·√κ
LANCZOS_MAX_PREDICTED_STEPS = 1000  # beyond this, factorise the denser Laplacian if its envelope is small enough
FACTOR_ENVELOPE_BUDGET = 50_000_000  # entries; a 300 x 300 8-neighbour grid has 3.6e7, a BA graph of 10⁵ nodes 2.5e9


def _dominated(small, big) -> bool:
    """Whether ``A_small ≤ A_big`` entrywise for the two (shifted) Laplacians, i.e. every
    off-diagonal entry of ``L_small − L_big`` (there equal to ``A_big − A_small``) is ``≥ 0``.
    Then ``L_big − L_small`` is a Laplacian with nonnegative weights (PSD) and
    ``λ_min(L_big, L_small) = λ_max(L_small, L_big) = 1`` exactly."""
    diff = (small - big).tocoo()
    off = diff.row != diff.col
    return bool((diff.data[off] >= 0).all())


def _factor_solve(m) -> Callable:
    """``x ↦ m⁻¹ x`` for an SPD sparse ``m``: SuperLU with a minimum-degree ordering of
    ``m + mᵀ`` and no pivoting (symmetric mode), far less fill than the default COLAMD
    ordering on graph Laplacians."""
    from scipy.sparse.linalg import splu

    return splu(m.tocsc(), permc_spec="MMD_AT_PLUS_A", diag_pivot_thresh=0.0,
                options={"SymmetricMode": True}).solve


def _dense(a, b, largest: bool) -> float:
    import scipy.linalg

    vals = scipy.linalg.eigh(a.toarray(), b.toarray(), eigvals_only=True)
    return float(vals[-1] if largest else vals[0])


def _largest(a, b, b_solve: Optional[Callable] = None) -> float:
    """``λ_max(a, b)`` by ARPACK (``b_solve``: solves with ``b``; scipy's own LU otherwise)."""
    from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh

    n = a.shape[0]
    if n <= 3:  # ARPACK needs k < n; tiny graphs are solved densely
        return _dense(a, b, largest=True)
    minv = None if b_solve is None else LinearOperator(a.shape, matvec=b_solve, dtype=a.dtype)
    try:
        return float(eigsh(a, k=1, M=b, Minv=minv, which="LA", return_eigenvectors=False)[0])
    except ArpackNoConvergence:  # clustered spectra (H close to G): a wider Krylov space, then dense
        try:
            return float(eigsh(a, k=1, M=b, Minv=minv, which="LA", ncv=min(n - 1, 64), maxiter=100 * n,
                               return_eigenvectors=False)[0])
        except ArpackNoConvergence:
            if n > DENSE_FALLBACK_NODES:
                raise
            return _dense(a, b, largest=True)


def _lanczos_smallest(a, b, b_solve: Callable, maxiter: int, seed: int = 0) -> float:
    """Smallest eigenvalue of ``a x = λ b x`` (``a`` symmetric, ``b`` SPD) by Lanczos on
    ``b⁻¹a`` in the ``b`` inner product: ``q_j`` b-orthonormal, ``p_j = b q_j``;
    ``u = a q_j − β_j p_{j−1}``, ``α_j = q_jᵀu``, ``u −= α_j p_j``, ``z = b⁻¹u``,
    ``β_{j+1} = √(zᵀu)``, ``q_{j+1} = z/β_{j+1}``, ``p_{j+1} = u/β_{j+1}``. The Ritz pair
    ``(θ, y = Q s)`` of the tridiagonal ``T = tridiag(β, α, β)`` has residual
    ``‖a y − θ b y‖_{b⁻¹} = β_{j+1}|s_j|``."""
    import numpy as np
    import scipy.linalg
    from scipy.sparse.linalg import ArpackNoConvergence

    n = a.shape[0]
    z = np.random.default_rng(seed).standard_normal(n)
    u = b @ z
    beta = float(np.sqrt(z @ u))
    q, p = z / beta, u / beta
    p_prev, beta = np.zeros(n), 0.0
    alphas, betas, theta_old, theta = [], [], None, float("nan")
    for k in range(1, maxiter + 1):
        u = a @ q - beta * p_prev
        alpha = float(q @ u)
        u -= alpha * p
        z = b_solve(u)
        beta_next = float(np.sqrt(max(float(z @ u), 0.0)))
        alphas.append(alpha)
        breakdown = beta_next <= 1e-13 * max(abs(alpha), *map(abs, betas[-1:]), 1e-300)
        if breakdown or k % LANCZOS_CHECK == 0 or k == maxiter:
            if k == 1:
                theta, last = alpha, 1.0
            else:
                vals, vecs = scipy.linalg.eigh_tridiagonal(np.array(alphas), np.array(betas), select="i",
                                                           select_range=(0, 0))
                theta, last = float(vals[0]), float(vecs[-1, 0])
            if breakdown:  # invariant Krylov subspace: θ is an exact eigenvalue, the smallest it holds
                return theta
            residual = beta_next * abs(last)
            if (theta_old is not None and residual <= LANCZOS_TOL ** 0.5 * abs(theta)
                    and abs(theta - theta_old) <= LANCZOS_TOL * abs(theta)):
                return theta
            theta_old = theta
        betas.append(beta_next)
        p_prev, beta = p, beta_next
        q, p = z / beta_next, u / beta_next
    raise ArpackNoConvergence(f"Lanczos for λ_min did not converge in {maxiter} steps", np.array([theta]), None)


def _envelope(m) -> int:
    """Entries strictly below the diagonal inside the envelope (profile) of ``m`` in reverse
    Cuthill–McKee order: ``Σ_i (i − first column of row i)``. A Cholesky factor in that order
    fills at most the envelope; minimum-degree orderings fill less in practice, so it bounds
    the memory of factorising ``m``."""
    import numpy as np
    from scipy.sparse.csgraph import reverse_cuthill_mckee

    order = reverse_cuthill_mckee(m.tocsr(), symmetric_mode=True)
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size, dtype=order.dtype)
    coo = m.tocoo()
    rows, cols = rank[coo.row], rank[coo.col]
    first = np.arange(m.shape[0])
    np.minimum.at(first, rows, cols)
    return int((np.arange(m.shape[0]) - first).sum())


def _shift_invert_smallest(a, b) -> float:
    """``λ_min(a, b)`` by ARPACK in shift-invert mode at σ = 0: the largest eigenvalue
    ``1/λ`` of ``a⁻¹b``, with a sparse factorisation of ``a``."""
    from scipy.sparse.linalg import LinearOperator, eigsh

    op = LinearOperator(a.shape, matvec=_factor_solve(a), dtype=a.dtype)
    return float(eigsh(a, k=1, M=b, sigma=0.0, OPinv=op, which="LM", return_eigenvectors=False)[0])


def _smallest(a, b, b_solve: Callable, top: float) -> float:
    """``λ_min(a, b)`` given ``top = λ_max(a, b)``: Lanczos (:func:`_lanczos_smallest`),
    whose cost grows like ``√(λ_max/λ_min) ≥ √top`` steps; when about
    ``LANCZOS_STEPS_PER_SQRT_KAPPA·√top`` steps exceed ``LANCZOS_MAX_PREDICTED_STEPS`` and the
    envelope of ``a`` is within ``FACTOR_ENVELOPE_BUDGET`` (meshes, small graphs; not
    expanders such as Barabási–Albert graphs of 10⁵ nodes), shift-invert with a factorisation
    of ``a`` instead. Densely for tiny or non-converging cases."""
    from scipy.sparse.linalg import ArpackNoConvergence

    n = a.shape[0]
    if n <= 3:
        return _dense(a, b, largest=False)
    if (LANCZOS_STEPS_PER_SQRT_KAPPA * top ** 0.5 > LANCZOS_MAX_PREDICTED_STEPS
            and _envelope(a) <= FACTOR_ENVELOPE_BUDGET):
        try:
            return _shift_invert_smallest(a, b)
        except ArpackNoConvergence:
            pass
    try:
        return _lanczos_smallest(a, b, b_solve, maxiter=max(1000, 10 * n))
    except ArpackNoConvergence:
        if n > DENSE_FALLBACK_NODES:
            raise
        return _dense(a, b, largest=False)


def relative_condition_number(edge_index_g: Tensor, edge_index_h: Tensor, num_nodes: int,
                              weight_g: Optional[Tensor] = None, weight_h: Optional[Tensor] = None,
                              shift: float = 1e-6) -> float:
    """κ(G, H) of two graphs on the same ``num_nodes`` nodes (see the module docstring);
    exactly 1.0 when both have the same weighted edges, and with no λ_min solve when one is a
    subgraph of the other with the other's weights (or lighter ones)."""
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
    d, s = (lh, lg) if lh.nnz > lg.nnz else (lg, lh)  # κ(G, H) = κ(H, G): factorise the sparser one
    s_in_d, d_in_s = _dominated(s, d), _dominated(d, s)
    if s_in_d and d_in_s:
        return 1.0
    s_solve = _factor_solve(s) if num_nodes > 3 else None
    top = 1.0 if d_in_s else _largest(d, s, s_solve)
    bottom = 1.0 if s_in_d else _smallest(d, s, s_solve, top)
    return top / bottom
