"""BLASST: dynamic block skipping inside an online softmax (a reference in plain PyTorch).

BLASST (block-level adaptive sparse softmax thresholding) runs flash attention's online
softmax over key blocks and skips a block whose largest logit is far below the running
maximum: for query block ``i`` with running row maxima ``m`` (over the key blocks seen so
far) and block logits ``S_ij = Q_i K_jᵀ · scale``, block ``j`` is skipped for a head when

    max_r ( rowmax(S_ij)_r − m_r ) < −λ,

i.e. every weight it would add is below ``e^{−λ}`` of the current maximum, so its ``P·V``
product (and exponentials) are not computed. ``λ = ∞`` skips nothing and equals dense
attention; a finite ``λ`` bounds each skipped weight by ``e^{−λ}`` relative to the row's
maximum. The threshold depends on the sequence length (more keys, more small weights), so
:func:`calibrate_threshold` picks the smallest ``λ`` whose relative output error stays within
a budget on calibration inputs, per sequence length.

This is the CPU reference of the decision rule (it still computes every ``Q_i K_jᵀ`` block to
decide; a fused kernel saves the skipped ``exp`` and ``P·V`` work): it returns the output and
the fraction of (head, query block, key block) triples skipped. :class:`Blasst` runs it inside
a model's processors (``install(model, block_size=128, method=Blasst(threshold))``).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from sparsity_core.validation import check_int, check_range

from .dynamic import DynamicAttention, at_length, check_per_length
from .layout import TokenLayout


def blasst_attention(q: Tensor, k: Tensor, v: Tensor, block_size: int, threshold: float = math.inf,
                     scale: Optional[float] = None) -> Tuple[Tensor, float]:
    """Attention of ``[B, H, S, D]`` tensors with BLASST's skipping at ``threshold`` ``λ``;
    returns ``(output, skipped fraction)``."""
    check_int(block_size, "block_size", minimum=1)
    check_threshold(threshold)
    b, h, s, d = q.shape
    scale = d ** -0.5 if scale is None else scale
    outs, skipped, total = [], 0, 0
    for i0 in range(0, s, block_size):
        qi = q[:, :, i0:i0 + block_size] * scale
        m = qi.new_full((b, h, qi.shape[2], 1), -math.inf)
        den = qi.new_zeros(b, h, qi.shape[2], 1)
        acc = qi.new_zeros(b, h, qi.shape[2], v.shape[-1])
        for j0 in range(0, s, block_size):
            logits = qi @ k[:, :, j0:j0 + block_size].transpose(-1, -2)
            block_max = logits.amax(-1, keepdim=True)
            skip = (block_max - m).amax(2, keepdim=True) < -threshold  # [B, H, 1, 1] per head
            total += b * h
            skipped += int(skip.sum())
            if bool(skip.all()):
                continue
            m_new = torch.maximum(m, block_max)
            p = torch.exp(logits - m_new).masked_fill(skip, 0.0)
            keep = (~skip).to(q.dtype)
            alpha = torch.exp(m - m_new) * keep + (1 - keep)
            den = den * alpha + p.sum(-1, keepdim=True)
            acc = acc * alpha + p @ v[:, :, j0:j0 + block_size]
            m = torch.where(skip, m, m_new)
        outs.append(acc / den)
    return torch.cat(outs, dim=2), skipped / max(1, total)


def check_threshold(threshold: float) -> float:
    if isinstance(threshold, bool) or not (isinstance(threshold, (int, float)) and threshold >= 0):
        raise ValueError(f"threshold must be a number >= 0 (math.inf: dense), got {threshold!r}")
    return float(threshold)


class Blasst(DynamicAttention):
    """BLASST inside the processors: every self-attention call runs :func:`blasst_attention`
    at ``threshold`` (one per sequence length: a mapping ``{tokens: λ}`` from
    :func:`calibrate_threshold`, or one number for every length; a length missing from the
    mapping runs dense). :attr:`stats` ``density`` is the fraction of (head, query block, key
    block) triples computed."""

    name = "blasst"

    def __init__(self, threshold: "float | dict" = math.inf, dense_steps: int = 0) -> None:
        super().__init__(dense_steps)
        self.threshold = check_per_length(threshold, check_threshold, "threshold")

    def attend(self, layer: int, q: Tensor, k: Tensor, v: Tensor, scale: Optional[float], layout: TokenLayout,
               block_size: int) -> Tensor:
        lam = at_length(self.threshold, q.shape[2], math.inf)
        out, skipped = blasst_attention(q, k, v, block_size, lam, scale)
        self.record(1.0 - skipped)
        return out


def calibrate_threshold(batches: Sequence[Tuple[Tensor, Tensor, Tensor]], block_size: int, max_error: float,
                        low: float = 0.0, high: float = 30.0, iterations: int = 12) -> float:
    """The smallest ``λ`` in ``[low, high]`` whose relative L2 error against dense attention
    stays within ``max_error`` on every ``(q, k, v)`` batch (one sequence length per call)."""
    check_range(max_error, "max_error", 0.0, 1.0, low_open=True)
    if not batches:
        raise ValueError("calibrate_threshold needs at least one (q, k, v) batch")
    dense = [F.scaled_dot_product_attention(q, k, v) for q, k, v in batches]

    def ok(lam: float) -> bool:
        for (q, k, v), ref in zip(batches, dense):
            out, _ = blasst_attention(q, k, v, block_size, lam)
            if float((out - ref).norm() / ref.norm()) > max_error:
                return False
        return True

    if not ok(high):
        return math.inf
    for _ in range(iterations):
        mid = (low + high) / 2
        low, high = (low, mid) if ok(mid) else (mid, high)
    return high
