"""SNELL's kernels: ``ΔW_ij = Σ_h c_h·κ(b_{h,i}, a_{h,j})`` over factor sets ``h``.

For factor set ``h`` the inputs (columns ``j``) and outputs (rows ``i``) of a weight get points
``a_{h,j}`` (column ``j`` of ``A_h ∈ ℝ^{r_h×in}``) and ``b_{h,i}`` (row ``i`` of
``B_h ∈ ℝ^{out×r_h}``) in ``ℝ^{r_h}`` (Shen et al., 2024, "Expanding Sparse Tuning for Low
Memory Usage", Sec. 3: the merged matrix of LoRA is a linear kernel matrix of its factors).

- ``linear``: ``κ(b, a) = ⟨b, a⟩``, i.e. ``B_h A_h``: with one set and ``c = α/r`` this is LoRA.
- ``distance``: ``κ(b, a) = ‖b − a‖₂`` (``torch.cdist``). SNELL's released code uses two
  sets with ``c = (+0.1, −0.1)``: a difference of Euclidean-distance kernels, whose matrix
  has a rank well above ``r`` (the paper's point: more expressive than LoRA at equal size).
"""
from __future__ import annotations

from typing import Callable, Dict, Sequence

import torch

from .lora import lora_delta


def linear_kernel(A: torch.Tensor, B: torch.Tensor, coeff: float) -> torch.Tensor:
    return lora_delta(A, B, coeff)


def distance_kernel(A: torch.Tensor, B: torch.Tensor, coeff: float) -> torch.Tensor:
    return torch.cdist(B, A.transpose(0, 1)) * coeff


KERNELS: Dict[str, Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]] = {
    "linear": linear_kernel, "distance": distance_kernel}


def kernel_delta(kernel: str, A: torch.Tensor, B: torch.Tensor, coeffs: Sequence[float]) -> torch.Tensor:
    """``Σ_h coeffs[h]·κ(B[h], A[h])`` for ``A: [H, r_h, in]``, ``B: [H, out, r_h]``."""
    fn = KERNELS[kernel]
    out = fn(A[0], B[0], coeffs[0])
    for h in range(1, len(coeffs)):
        out = out + fn(A[h], B[h], coeffs[h])
    return out
