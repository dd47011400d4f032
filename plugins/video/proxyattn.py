"""ProxyAttn: block masks ranked by a few pooled *proxy heads*, with a budget per head.

Wang et al., "ProxyAttn: Guided Sparse Attention via Representative Heads" (arXiv:2509.24745,
ICLR 2026; code github.com/wyxstriker/ProxyAttn). Training-free. The observation: in one layer
the heads attend to largely the same tokens but differ in how sparse they are. So the
*ranking* of key blocks is estimated once per group of heads, at token resolution (the head
dimension is compressed, not the sequence), and only the *number* of blocks kept is per head.

For ``[B, H, S, D]`` queries / keys, blocks of ``b`` tokens, ``nb = ⌈S / b⌉`` and scale ``τ``:

1. **Proxy heads.** The ``H`` heads are split into ``G`` contiguous groups (``proxy_heads``;
   head ``h`` is in group ``⌊h·G/H⌋``; ``G = 1`` pools every head) and averaged:
   ``q̄_g = mean_{h∈g} q_h``, ``k̄_g = mean_{h∈g} k_h`` (``[B, G, S, D]``).
2. **Token-level importance.** Each query block ``i`` is represented by ``P`` of its queries
   ``R_i`` (``probe``: its last ``P`` tokens, or ``P`` evenly strided ones), which attend to
   *every* key token with the proxy heads; the probabilities are summed per key block:

       I_g[i, j] = (1/|R_i|) Σ_{r∈R_i} Σ_{t∈block j} softmax_t(τ · q̄_{g,r} · k̄_{g,t}).

   Every head ranks key blocks by its group's ``I_g[i, :]``.
3. **Block-aware budget per head.** Each head's own sparsity at query block ``i`` is read
   off its mean-pooled block scores (``q̃``, ``k̃``: means over the blocks' tokens), with the
   block lengths ``|j|`` counted as multiplicities:

       a_h[i, j] = softmax_j(τ · q̃_{h,i} · k̃_{h,j} + log |j|),
       n_h[i] = min { n : sum of the n largest a_h[i, :] ≥ γ }     (``gamma``; γ = 1: nb),

   clipped to ``[min_blocks, ⌊max_density · nb⌋]`` (and to ``[1, nb]``). Head ``h`` keeps
   the ``n_h[i]`` key blocks ranked highest by ``I_{g(h)}[i, :]``.

:meth:`DynamicAttention.attend` then adds the diagonal and text blocks (:func:`.dynamic.safe_mask`)
and runs the block-sparse kernel. Cost of the estimate: ``G·nb·P·S`` dot products plus
``H·nb²`` pooled ones, against ``H·S²`` for dense attention.

Assumptions (the paper's method section and code were not readable here, only its abstract
and secondary summaries): head-group pooling by the plain mean of q and k over contiguous
head groups; the probe queries being the last (or strided) tokens of each query block; the
per-head budget from a cumulative-mass threshold ``γ`` on the head's own mean-pooled block
scores (length-corrected), per query block. The paper's exact budget rule may differ.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
from torch import Tensor

from sparsity_core.validation import check_int, check_range

from .dynamic import DynamicAttention, pooled, top_blocks
from .layout import TokenLayout
from .patterns import block_lengths

SAMPLINGS = ("last", "strided")


def proxy_groups(heads: int, proxy_heads: int) -> Tensor:
    """``[H]`` long: the proxy group of each head (``G = min(proxy_heads, H)`` contiguous groups)."""
    g = min(proxy_heads, heads)
    return torch.arange(heads) * g // heads


def probe_positions(seq_len: int, block_size: int, probe: int, sampling: str = "last") -> Tuple[Tensor, Tensor]:
    """``(positions, block of each)``: the representative queries of every query block."""
    pos, blk = [], []
    for i, i0 in enumerate(range(0, seq_len, block_size)):
        n = min(block_size, seq_len - i0)
        p = min(probe, n)
        if sampling == "last":
            idx = torch.arange(n - p, n)
        else:
            idx = torch.linspace(0, n - 1, p).round().long().unique()
        pos.append(i0 + idx)
        blk.append(torch.full((len(idx),), i, dtype=torch.long))
    return torch.cat(pos), torch.cat(blk)


def proxy_importance(q: Tensor, k: Tensor, block_size: int, proxy_heads: int = 1, probe: int = 16,
                     sampling: str = "last", scale: Optional[float] = None) -> Tensor:
    """``[B, G, nb, nb]``: ``I_g[i, j]``, the proxy heads' mean attention mass of query block
    ``i``'s probe queries on key block ``j`` (see the module)."""
    b, h, s, d = q.shape
    scale = d ** -0.5 if scale is None else scale
    nb = math.ceil(s / block_size)
    groups = proxy_groups(h, proxy_heads).to(q.device)
    g = int(groups.max()) + 1
    avg = torch.zeros(g, h, device=q.device, dtype=torch.float32)
    avg[groups, torch.arange(h, device=q.device)] = 1.0
    avg /= avg.sum(1, keepdim=True)
    qg = torch.einsum("gh,bhsd->bgsd", avg, q.float())
    kg = torch.einsum("gh,bhsd->bgsd", avg, k.float())
    pos, blk = probe_positions(s, block_size, probe, sampling)
    probs = torch.softmax(qg[:, :, pos.to(q.device)] @ kg.transpose(-1, -2) * scale, -1)  # [B, G, R, S]
    mass = torch.nn.functional.pad(probs, (0, nb * block_size - s)).unflatten(-1, (nb, block_size)).sum(-1)
    out = mass.new_zeros(b, g, nb, nb).index_add_(2, blk.to(q.device), mass)
    counts = torch.bincount(blk, minlength=nb).to(out)
    return out / counts[:, None]


def head_budgets(q: Tensor, k: Tensor, block_size: int, gamma: float = 0.9, min_blocks: int = 1,
                 max_density: float = 1.0, scale: Optional[float] = None) -> Tensor:
    """``[B, H, nb]`` long: ``n_h[i]``, the key blocks head ``h`` keeps for query block ``i``
    (cumulative mass ``gamma`` of its own pooled block scores, bounded; see the module)."""
    s, d = q.shape[2], q.shape[3]
    scale = d ** -0.5 if scale is None else scale
    nb = math.ceil(s / block_size)
    lo = min(min_blocks, nb)
    hi = min(nb, max(lo, int(math.floor(max_density * nb + 1e-9))))
    if gamma >= 1.0:
        n = torch.full((q.shape[0], q.shape[1], nb), nb, dtype=torch.long, device=q.device)
    else:
        log_len = block_lengths(s, block_size).to(q.device, torch.float32).log()
        logits = pooled(q.float(), block_size) @ pooled(k.float(), block_size).transpose(-1, -2) * scale
        a = torch.softmax(logits + log_len, -1)
        cum = a.sort(-1, descending=True).values.cumsum(-1)
        n = (cum < gamma).sum(-1) + 1
    return n.clamp(lo, hi)


def check_proxyattn(proxy_heads: int, probe: int, sampling: str, gamma: float, min_blocks: int,
                    max_density: float) -> None:
    check_int(proxy_heads, "proxy_heads", minimum=1)
    check_int(probe, "probe", minimum=1)
    if sampling not in SAMPLINGS:
        raise ValueError(f"sampling must be one of {list(SAMPLINGS)}, got {sampling!r}")
    check_range(gamma, "gamma", 0.0, 1.0, low_open=True)
    check_int(min_blocks, "min_blocks", minimum=1)
    check_range(max_density, "max_density", 0.0, 1.0, low_open=True)


def proxyattn_mask(q: Tensor, k: Tensor, block_size: int, proxy_heads: int = 1, probe: int = 16,
                   sampling: str = "last", gamma: float = 0.9, min_blocks: int = 1, max_density: float = 1.0,
                   scale: Optional[float] = None) -> Tuple[Tensor, Tensor]:
    """``(mask [B, H, nb, nb] bool, budgets [B, H, nb])``: each head keeps its budget of key
    blocks ranked by its proxy group's importance (before :func:`.dynamic.safe_mask`)."""
    check_int(block_size, "block_size", minimum=1)
    check_proxyattn(proxy_heads, probe, sampling, gamma, min_blocks, max_density)
    importance = proxy_importance(q, k, block_size, proxy_heads, probe, sampling, scale)
    groups = proxy_groups(q.shape[1], proxy_heads).to(q.device)
    budgets = head_budgets(q, k, block_size, gamma, min_blocks, max_density, scale)
    return top_blocks(importance[:, groups], budgets), budgets


class ProxyAttn(DynamicAttention):
    """ProxyAttn inside the processors (``install(model, block_size=..., method=ProxyAttn())``).

    Args:
        proxy_heads: number ``G`` of proxy heads (contiguous head groups; 1: the mean of all).
        probe: representative queries per query block.
        sampling: ``"last"`` (the block's last ``probe`` queries) or ``"strided"``.
        gamma: cumulative attention mass in ``(0, 1]`` each head's budget must cover (1: dense).
        min_blocks: fewest key blocks a head keeps per query block.
        max_density: the budget is at most ``⌊max_density · nb⌋`` blocks (``(0, 1]``).
        dense_steps: the first denoising steps run dense.

    After each call, :attr:`last_budgets` holds the ``[B, H, nb]`` budgets it chose."""

    name = "proxyattn"

    def __init__(self, proxy_heads: int = 1, probe: int = 16, sampling: str = "last", gamma: float = 0.9,
                 min_blocks: int = 1, max_density: float = 1.0, dense_steps: int = 0) -> None:
        super().__init__(dense_steps)
        check_proxyattn(proxy_heads, probe, sampling, gamma, min_blocks, max_density)
        self.proxy_heads, self.probe, self.sampling = int(proxy_heads), int(probe), sampling
        self.gamma, self.min_blocks, self.max_density = float(gamma), int(min_blocks), float(max_density)
        self.last_budgets: Optional[Tensor] = None

    def select(self, layer: int, q: Tensor, k: Tensor, v: Tensor, scale: Optional[float], layout: TokenLayout,
               block_size: int) -> Tensor:
        mask, self.last_budgets = proxyattn_mask(q, k, block_size, self.proxy_heads, self.probe, self.sampling,
                                                 self.gamma, self.min_blocks, self.max_density, scale)
        return mask
