"""S2O: flash attention over key blocks in importance order, stopped early (plain PyTorch).

Zhang et al., "S2O: Early Stopping for Sparse Attention via Online Permutation"
(arXiv:2602.22575, 2026). Instead of a fixed block mask, each query block visits the key
blocks in a permuted order, most important first (an index-guided, non-contiguous load), and
stops once the next block's contribution falls below a threshold, so the remaining (less
important) blocks are never loaded.

For ``[B, H, S, D]`` inputs, blocks of ``b`` tokens, scale ``τ`` and query block ``i``
(``Q_i``), per batch element and head:

1. **Importance** of key block ``j`` (cheap, from block means ``q̃_i``, ``k̃_j`` with the
   block length ``|j|`` as multiplicity): ``e_ij = τ · q̃_i · k̃_j + log |j|``. The diagonal
   block ``i`` and the blocks holding text tokens (:func:`.dynamic.text_blocks`) come first
   (``e = +∞``), then the rest by decreasing ``e``: the order ``π_i``.
2. **Online softmax in that order** (flash attention): with running row maxima ``m``,
   denominators ``ℓ`` and accumulators ``A`` over the blocks done so far, the next block
   ``j = π_i(t)`` has logits ``S = τ · Q_i K_jᵀ`` and, per query row ``r``, relative mass

       c_r = Σ_u exp(S_ru − m_r) / ℓ_r,

   the share it would add to the row's softmax denominator. After the forced blocks, when
   ``max_r c_r < ε`` (``epsilon``) the head **stops**: this block and every later one in
   ``π_i`` are skipped. Otherwise ``m' = max(m, rowmax S)``, ``ℓ ← ℓ·e^{m−m'} + Σ e^{S−m'}``,
   ``A ← A·e^{m−m'} + e^{S−m'} V_j``; the output is ``A / ℓ``.

``ε = 0`` never stops: every block is accumulated and the output equals dense attention (up
to the summation order). Larger ``ε`` stops earlier (on a fixed input the stopping step is
non-increasing in ``ε``): less work, more error. The stop test needs the block's ``QKᵀ`` (as
BLASST's skip test does); its ``exp`` and ``P·V`` and all later blocks are skipped. This is a
CPU reference of the decision rule, not a fused kernel.

:func:`s2o_attention` returns the output and the computed fraction (the query-key pairs of
the accumulated blocks over ``S²``, tail blocks weighted by their length);
:func:`calibrate_epsilon` picks the largest ``ε`` within a relative L2 error budget;
:class:`S2O` runs it in the processors. Assumed where the paper was not readable here (only its
abstract): the importance estimate (mean pooling) and the exact stopping statistic
(``max_r c_r``, per head and query block).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from sparsity_core.validation import check_int, check_nonnegative, check_range

from .dynamic import DynamicAttention, at_length, check_per_length, mask_density, pooled, text_blocks
from .layout import TokenLayout
from .patterns import block_lengths


def block_order(q: Tensor, k: Tensor, block_size: int, scale: Optional[float] = None,
                first: Optional[Tensor] = None) -> Tensor:
    """``[B, H, nb, nb]`` long: row ``i`` lists the key blocks in the order query block ``i``
    visits them (its diagonal, then ``first`` (``[nb]`` bool), then by importance ``e_ij``)."""
    s, d = q.shape[2], q.shape[3]
    scale = d ** -0.5 if scale is None else scale
    nb = math.ceil(s / block_size)
    log_len = block_lengths(s, block_size).to(q.device, torch.float32).log()
    e = pooled(q.float(), block_size) @ pooled(k.float(), block_size).transpose(-1, -2) * scale + log_len
    forced = torch.eye(nb, dtype=torch.bool, device=q.device)
    if first is not None:
        forced = forced | first.to(q.device)[None, :]
    return e.masked_fill(forced, math.inf).sort(dim=-1, descending=True, stable=True).indices


def s2o_blocks(q: Tensor, k: Tensor, v: Tensor, block_size: int, epsilon: float = 0.0,
               scale: Optional[float] = None, first: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """``(output [B, H, S, Dv], computed [B, H, nb, nb] bool)``: S2O's attention and the key
    blocks each (batch element, head, query block) accumulated (see the module)."""
    check_int(block_size, "block_size", minimum=1)
    epsilon = check_epsilon(epsilon)
    b, h, s, d = q.shape
    if k.shape[2] != s or v.shape[2] != s:
        raise ValueError(f"S2O self-attention needs equal query and key lengths, got {s} and {k.shape[2]}")
    scale = d ** -0.5 if scale is None else scale
    nb = math.ceil(s / block_size)
    pad = nb * block_size - s
    kb = F.pad(k, (0, 0, 0, pad)).unflatten(2, (nb, block_size))  # [B, H, nb, bs, D]
    vb = F.pad(v, (0, 0, 0, pad)).unflatten(2, (nb, block_size))
    valid = (torch.arange(nb * block_size, device=q.device) < s).view(nb, block_size)
    forced = torch.eye(nb, dtype=torch.bool)
    if first is not None:
        if tuple(first.shape) != (nb,):
            raise ValueError(f"first must be a [{nb}] bool tensor (one flag per key block), got {tuple(first.shape)}")
        forced |= first.cpu().bool()[None, :]
    order = block_order(q, k, block_size, scale, first)
    computed = torch.zeros(b, h, nb, nb, dtype=torch.bool, device=q.device)
    outs = []
    for i in range(nb):
        qi = q[:, :, i * block_size:(i + 1) * block_size] * scale
        m = qi.new_full((b, h, qi.shape[2], 1), -math.inf)
        den = qi.new_zeros(b, h, qi.shape[2], 1)
        acc = qi.new_zeros(b, h, qi.shape[2], v.shape[-1])
        active = torch.ones(b, h, 1, 1, dtype=torch.bool, device=q.device)
        n_forced = int(forced[i].sum())  # the first n_forced of order[..., i, :] (always computed)
        for t in range(nb):
            j = order[:, :, i, t]  # [B, H]
            idx = j[:, :, None, None, None].expand(b, h, 1, block_size, d)
            kj = kb.gather(2, idx).squeeze(2)
            vj = vb.gather(2, j[:, :, None, None, None].expand(b, h, 1, block_size, v.shape[-1])).squeeze(2)
            logits = (qi @ kj.transpose(-1, -2)).masked_fill(~valid[j][:, :, None, :], -math.inf)
            if t >= n_forced and epsilon > 0:
                mass = torch.exp(logits - m).sum(-1, keepdim=True) / den
                active = active & ~(mass.amax(2, keepdim=True) < epsilon)
                if not bool(active.any()):
                    break
            m_new = torch.where(active, torch.maximum(m, logits.amax(-1, keepdim=True)), m)
            p = torch.exp(logits - m_new).masked_fill(~active, 0.0)
            alpha = torch.exp(m - m_new)
            den = den * alpha + p.sum(-1, keepdim=True)
            acc = acc * alpha + p @ vj
            m = m_new
            computed[:, :, i].scatter_(-1, j[:, :, None], active[:, :, 0])
        outs.append(acc / den)
    return torch.cat(outs, dim=2), computed


def s2o_attention(q: Tensor, k: Tensor, v: Tensor, block_size: int, epsilon: float = 0.0,
                  scale: Optional[float] = None, first: Optional[Tensor] = None) -> Tuple[Tensor, float]:
    """Attention of ``[B, H, S, D]`` tensors with S2O's early stopping at ``epsilon``; returns
    ``(output, computed fraction of the S² query-key pairs)``. ``first``: ``[nb]`` bool key
    blocks every query block computes first (text)."""
    out, computed = s2o_blocks(q, k, v, block_size, epsilon, scale, first)
    return out, mask_density(computed, q.shape[2], block_size)


def check_epsilon(epsilon: float) -> float:
    return check_nonnegative(epsilon, "epsilon")


class S2O(DynamicAttention):
    """S2O inside the processors (``install(model, block_size=..., method=S2O(epsilon))``):
    every self-attention call runs :func:`s2o_blocks` with the text blocks first, at
    ``epsilon`` (one number, or a mapping ``{tokens: ε}`` per sequence length from
    :func:`calibrate_epsilon`; a length missing from the mapping runs dense, ``ε = 0``).
    :attr:`stats` ``density`` is the computed fraction of query-key pairs."""

    name = "s2o"

    def __init__(self, epsilon: "float | dict" = 0.0, dense_steps: int = 0) -> None:
        super().__init__(dense_steps)
        self.epsilon = check_per_length(epsilon, check_epsilon, "epsilon")

    def attend(self, layer: int, q: Tensor, k: Tensor, v: Tensor, scale: Optional[float], layout: TokenLayout,
               block_size: int) -> Tensor:
        eps = at_length(self.epsilon, q.shape[2], 0.0)
        low = q.dtype in (torch.float16, torch.bfloat16)
        qq, kk, vv = ((x.float() for x in (q, k, v)) if low else (q, k, v))
        out, computed = s2o_blocks(qq, kk, vv, block_size, eps, scale, text_blocks(layout, block_size))
        self.record(mask_density(computed, q.shape[2], block_size))
        return out.to(q.dtype)


def calibrate_epsilon(batches: Sequence[Tuple[Tensor, Tensor, Tensor]], block_size: int, max_error: float,
                      low: float = 1e-6, high: float = 1.0, iterations: int = 12) -> float:
    """The largest ``ε`` in ``[low, high]`` (geometric bisection: ``ε`` spans decades) whose
    relative L2 error against dense attention stays within ``max_error`` on every ``(q, k, v)``
    batch (one sequence length per call); ``0.0`` (dense) when even ``low`` is over budget."""
    check_range(max_error, "max_error", 0.0, 1.0, low_open=True)
    check_range(low, "low", 0.0, high, low_open=True)
    check_epsilon(high)
    check_int(iterations, "iterations", minimum=1)
    if not batches:
        raise ValueError("calibrate_epsilon needs at least one (q, k, v) batch")
    dense = [F.scaled_dot_product_attention(q, k, v) for q, k, v in batches]

    def ok(eps: float) -> bool:
        for (q, k, v), ref in zip(batches, dense):
            out, _ = s2o_attention(q, k, v, block_size, eps)
            if float((out - ref).norm() / ref.norm()) > max_error:
                return False
        return True

    if ok(high):
        return float(high)
    if not ok(low):
        return 0.0
    for _ in range(iterations):
        mid = math.sqrt(low * high)
        low, high = (mid, high) if ok(mid) else (low, mid)
    return low
