"""Block-sparse attention on CPU in plain PyTorch, differentiable through autograd.

For queries ``Q``, keys ``K`` and values ``V`` of shape ``[B, H, S, D]`` and a block mask
``M ∈ {0,1}^{nb×nb}`` over ``block_size`` blocks, query block ``i`` computes

    O_i = softmax(Q_i K_{J_i}ᵀ · scale) V_{J_i},     J_i = ⋃ {tokens of key block j : M_ij = 1},

exactly dense attention restricted to the kept blocks (the same numbers as SDPA with the
block mask expanded to tokens, :func:`masked_attention`). Work is ``Σ_i |Q_i|·|J_i|`` instead
of ``S²``. The kernel is a schedule computed once per mask (:func:`schedule`):

* consecutive query blocks with the same key set form one *run* and share one SDPA call
  (a vertical stripe is a single call with the sink keys; a frame-diagonal is one per frame);
* a run whose keys are one contiguous range reads them as a slice (no copy), otherwise the
  selected key/value blocks are gathered whole (``index_select`` over a block view: block
  copies, several times faster than a token gather; its backward scatters the gradients);
* a pure block-diagonal mask with equal runs is computed by one SDPA call over a
  ``[B, H·S/L, L, D]`` view of contiguous inputs (the reshape-only fast path; strided inputs
  run the runs one by one, as fast on CPU).

Every step is a differentiable PyTorch op, so the backward pass (SDPA's own backward per
call) costs the same fraction of dense as the forward. As in Sparse VideoGen's and STA's
kernels, the saving is the skipped blocks; the dense reference is :func:`masked_attention`.
A query block whose key set is empty outputs zeros.

``backend`` picks the implementation: ``"gather"`` this loop, ``"flex"`` FlexAttention with
a ``BlockMask`` (:mod:`.flex`: one fused kernel for all heads, compiled; its backward exists
on CUDA only), ``"auto"`` (default) FlexAttention for CUDA tensors when the block size is a
multiple of 128 (FlexAttention's own block size, the one its CUDA kernels are tuned for) and
this loop otherwise.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

BACKENDS = ("auto", "gather", "flex")

#: SDPA as imported here: processors may swap ``F.scaled_dot_product_attention`` during a call
_sdpa = F.scaled_dot_product_attention

@dataclass(frozen=True)
class Gather:
    """Whole key blocks ``ids`` (all of ``block_size`` tokens), plus the short last block if ``tail``."""

    ids: Tensor
    tail: bool


Keys = Union[Tuple[int, int], Gather, None]


@dataclass(frozen=True)
class Run:
    """Query tokens ``[q0, q1)`` attending ``keys``: a ``(k0, k1)`` token range, a
    :class:`Gather` of key blocks, or ``None`` (no key: zeros)."""

    q0: int
    q1: int
    keys: Keys


@dataclass(frozen=True)
class Schedule:
    runs: Tuple[Run, ...]
    diagonal: int  # > 0: block-diagonal with runs of this many tokens (the reshape fast path)


_CACHE: Dict[Tuple[bytes, Tuple[int, ...], int, int], Schedule] = {}


def _key_set(row: Tensor, seq_len: int, block_size: int) -> Keys:
    blocks = row.nonzero().flatten().tolist()
    if not blocks:
        return None
    if blocks[-1] - blocks[0] + 1 == len(blocks):
        return blocks[0] * block_size, min(seq_len, (blocks[-1] + 1) * block_size)
    tail = blocks[-1] >= seq_len // block_size  # the short last block is gathered apart
    return Gather(torch.tensor(blocks[:-1] if tail else blocks), tail)


def schedule(block_mask: Tensor, seq_len: int, block_size: int) -> Schedule:
    """The runs of ``block_mask`` (cached per mask, sequence length and block size)."""
    nb = math.ceil(seq_len / block_size)
    if block_mask.dim() != 2 or tuple(block_mask.shape) != (nb, nb) or block_mask.dtype != torch.bool:
        raise ValueError(f"block_mask must be a [{nb}, {nb}] bool tensor for {seq_len} tokens in blocks of "
                         f"{block_size}, got {tuple(block_mask.shape)} {block_mask.dtype}")
    mask = block_mask.cpu()
    key = (mask.numpy().tobytes(), tuple(mask.shape), seq_len, block_size)
    if key in _CACHE:
        return _CACHE[key]
    runs: List[Run] = []
    i = 0
    while i < nb:
        j = i + 1
        while j < nb and torch.equal(mask[j], mask[i]):
            j += 1
        runs.append(Run(i * block_size, min(seq_len, j * block_size), _key_set(mask[i], seq_len, block_size)))
        i = j
    lengths = {r.q1 - r.q0 for r in runs}
    diagonal = 0
    if len(runs) > 1 and len(lengths) == 1 and all(r.keys == (r.q0, r.q1) for r in runs):
        diagonal = lengths.pop()
    if len(_CACHE) > 512:
        _CACHE.clear()
    _CACHE[key] = out = Schedule(tuple(runs), diagonal)
    return out


def _take(x: Tensor, keys: Keys, block_size: int) -> Tensor:
    """Key/value tokens of a run: a slice (no copy) or the selected blocks gathered whole
    (``index_select`` over a ``[.., blocks, block_size, D]`` view, whose backward scatters)."""
    if isinstance(keys, tuple):
        return x[:, :, keys[0]:keys[1]]
    full = x.shape[2] // block_size
    blocks = x[:, :, :full * block_size].unflatten(2, (full, block_size)).index_select(2, keys.ids.to(x.device))
    blocks = blocks.flatten(2, 3)
    return torch.cat([blocks, x[:, :, full * block_size:]], dim=2) if keys.tail else blocks


def use_flex(x: Tensor, block_size: int, backend: str = "auto") -> bool:
    """Whether ``backend`` means FlexAttention for tensors like ``x`` (see the module)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; valid: {list(BACKENDS)}")
    if backend == "auto":
        from .flex import flex_available
        return x.is_cuda and block_size % 128 == 0 and flex_available()
    return backend == "flex"


def block_sparse_attention(q: Tensor, k: Tensor, v: Tensor, block_mask: Tensor, block_size: int,
                           scale: Optional[float] = None, backend: str = "auto") -> Tensor:
    """Attention of ``[B, H, S, D]`` tensors over the kept blocks of ``block_mask`` (see the module)."""
    s = q.shape[2]
    if k.shape[2] != s or v.shape[2] != s:
        raise ValueError(f"block-sparse self-attention needs equal query and key lengths, got {s} and {k.shape[2]}")
    if use_flex(q, block_size, backend):
        from .flex import flex_attention_masked
        schedule(block_mask, s, block_size)  # the same shape checks
        return flex_attention_masked(q, k, v, block_mask[None, None], block_size, scale)
    plan = schedule(block_mask, s, block_size)
    if plan.diagonal and all(x.is_contiguous() for x in (q, k, v)):
        b, h = q.shape[:2]
        L = plan.diagonal  # 4-D views: a 5-D SDPA input takes the (slower) math path on CPU
        out = _sdpa(*(x.view(b, h * (s // L), L, x.shape[-1]) for x in (q, k, v)), scale=scale)
        return out.view(b, h, s, v.shape[-1])
    outs = []
    for run in plan.runs:
        qr = q[:, :, run.q0:run.q1]
        if run.keys is None:
            outs.append(qr.new_zeros(*qr.shape[:3], v.shape[-1]))
            continue
        outs.append(_sdpa(qr, _take(k, run.keys, block_size), _take(v, run.keys, block_size), scale=scale))
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)


def token_mask(block_mask: Tensor, seq_len: int, block_size: int) -> Tensor:
    """``[S, S]`` bool token mask of a block mask (the tail of the last block cut off)."""
    m = block_mask.repeat_interleave(block_size, 0).repeat_interleave(block_size, 1)
    return m[:seq_len, :seq_len]


def masked_attention(q: Tensor, k: Tensor, v: Tensor, block_mask: Tensor, block_size: int,
                     scale: Optional[float] = None) -> Tensor:
    """Dense reference: SDPA with the block mask expanded to tokens (rows without keys give zeros)."""
    m = token_mask(block_mask, q.shape[2], block_size).to(q.device)
    empty = ~m.any(1)
    out = _sdpa(q, k, v, attn_mask=m | empty[:, None], scale=scale)
    return out.masked_fill(empty[:, None], 0.0) if bool(empty.any()) else out


def head_groups(masks: Sequence[Tensor]) -> List[Tuple[List[int], Tensor]]:
    """Heads with equal block masks, grouped: ``[(heads, mask), ...]`` in first-seen order."""
    groups: Dict[bytes, Tuple[List[int], Tensor]] = {}
    for h, m in enumerate(masks):
        key = m.cpu().numpy().tobytes()
        groups.setdefault(key, ([], m))[0].append(h)
    return list(groups.values())


def multi_pattern_attention(q: Tensor, k: Tensor, v: Tensor, groups: Sequence[Tuple[List[int], Optional[Tensor]]],
                            block_size: int, scale: Optional[float] = None, backend: str = "auto") -> Tensor:
    """Attention of ``[B, H, S, D]`` tensors with a block mask per group of heads (``None``:
    dense SDPA); heads sharing a mask run in one kernel call (FlexAttention: all heads in one)."""
    if use_flex(q, block_size, backend):
        from .flex import flex_attention_masked
        nb = math.ceil(q.shape[2] / block_size)
        masks = torch.ones(1, q.shape[1], nb, nb, dtype=torch.bool)
        for heads, mask in groups:
            if mask is not None:
                masks[0, heads] = mask.cpu()
        return flex_attention_masked(q, k, v, masks, block_size, scale)
    if len(groups) == 1 and len(groups[0][0]) == q.shape[1]:
        heads, mask = groups[0]
        if heads == list(range(q.shape[1])):
            return _run(q, k, v, mask, block_size, scale)
    outs, order = [], []
    for heads, mask in groups:
        if heads == list(range(heads[0], heads[-1] + 1)):
            sl = slice(heads[0], heads[-1] + 1)
            parts = (q[:, sl], k[:, sl], v[:, sl])
        else:
            idx = torch.tensor(heads, device=q.device)
            parts = tuple(x.index_select(1, idx) for x in (q, k, v))
        outs.append(_run(*parts, mask, block_size, scale))
        order.extend(heads)
    out = torch.cat(outs, dim=1)
    if order == list(range(len(order))):
        return out
    inverse = torch.empty(len(order), dtype=torch.long)
    inverse[torch.tensor(order)] = torch.arange(len(order))
    return out.index_select(1, inverse.to(out.device))


def _run(q: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor], block_size: int, scale: Optional[float]) -> Tensor:
    if mask is None or bool(mask.all()):
        return _sdpa(q, k, v, scale=scale)
    return block_sparse_attention(q, k, v, mask, block_size, scale)
