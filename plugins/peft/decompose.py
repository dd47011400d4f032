"""Low-rank plus sparse decomposition of a weight, ``W ≈ L + S`` (GoDec-style).

Alternating projections (Zhou & Tao, 2011, "GoDec"; the decomposition DSEE applies to the
pretrained weights): starting from ``S = P_card(W)`` (the ``card`` largest-magnitude entries of
``W``; starting from ``S = 0`` lets the first SVD absorb large outliers into ``L``, where they
stay), repeat

    L ← best rank-r approximation of W − S        (truncated SVD, float64)
    S ← P_card(W − L): its `card` largest-magnitude entries, zero elsewhere

The sparse projection is the core's keep rule (:mod:`.selection`): ``W − L`` is a computed
target, scored by the core ``Magnitude`` criterion and cut to ``card`` units by
``Elements.select``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from sparsity_core.targets import Target
from sparsity_core.validation import check_int

from .selection import keep_top, magnitude_scores


@dataclass
class Decomposition:
    """``low_rank`` (rank ``rank``), ``sparse`` (``card`` nonzeros), both float64, and the relative
    residual ``‖W − L − S‖_F / ‖W‖_F`` after each iteration."""

    low_rank: torch.Tensor
    sparse: torch.Tensor
    residuals: list


def truncated_svd(matrix: torch.Tensor, rank: int) -> torch.Tensor:
    """The best rank-``rank`` approximation (Eckart–Young) of a 2-D tensor."""
    U, s, Vh = torch.linalg.svd(matrix, full_matrices=False)
    return (U[:, :rank] * s[:rank]) @ Vh[:rank]


def godec(weight: torch.Tensor, rank: int, card: int, iterations: int = 3) -> Decomposition:
    """``W ≈ L + S`` with ``rank(L) ≤ rank`` and ``card`` nonzeros in ``S``."""
    w = weight.detach().double()
    rank = check_int(rank, "rank", 0, min(w.shape))
    card = check_int(card, "card", 0, w.numel())
    iterations = check_int(iterations, "iterations", 1)
    target = Target("residual", shape=tuple(w.shape))

    def project(x: torch.Tensor) -> torch.Tensor:  # P_card with the core's magnitude score and selection
        return torch.where(keep_top(target, magnitude_scores(target, x), keep=card), x, torch.zeros_like(x))

    sparse = project(w)
    norm = float(w.norm()) or 1.0
    residuals = []
    for _ in range(iterations):
        low_rank = truncated_svd(w - sparse, rank) if rank else torch.zeros_like(w)
        sparse = project(w - low_rank)
        residuals.append(float((w - low_rank - sparse).norm()) / norm)
    return Decomposition(low_rank=low_rank, sparse=sparse, residuals=residuals)
