"""Block-sparse attention through PyTorch's FlexAttention (the CUDA path).

On a GPU the gather-and-SDPA loop of :mod:`.kernel` launches one kernel per run of query
blocks; FlexAttention instead takes the whole per-head block mask as a ``BlockMask`` and
skips the masked blocks inside one fused, compiled kernel (forward and backward). This module
converts our ``[B|1, H|1, nb, nb]`` bool block masks to a ``BlockMask``:

* ``kv_num_blocks[b, h, i] = Σ_j M[b, h, i, j]`` and ``kv_indices[b, h, i]`` the kept key
  blocks of query block ``i`` (kept ones first), so the kernel visits only those;
* blocks are marked *partial* with a ``mask_mod`` that reads the same block mask at token
  resolution (``M[b, h, q // bs, k // bs]``). The ``mask_mod`` is always given: FlexAttention
  in eager mode applies only ``mask_mod`` and, without one, silently computes dense attention
  (``shared/notes/diffusers_sparse_attention.md``). Key blocks that lie wholly inside the
  sequence are additionally listed as *full* (no ``mask_mod`` evaluation inside them).

:func:`flex_attention_masked` compiles ``flex_attention`` once per process
(``torch.compile``; a new shape recompiles). On CPU, compiled FlexAttention has a forward only
(no backward, and it exhausted 24 GB at S=16384 here), so :mod:`.kernel` uses it only for
CUDA tensors by default (``backend="auto"``); ``backend="flex"`` forces it. A query block
whose key set is empty outputs zeros, as in the CPU kernel.
"""
from __future__ import annotations

import functools
import math
from typing import Optional

import torch
from torch import Tensor

#: FlexAttention's sparse block must be a multiple of its CUDA tile (Triton kernels use 16..128)
CUDA_BLOCK_MULTIPLE = 16


def flex_available() -> bool:
    try:
        from torch.nn.attention import flex_attention  # noqa: F401
    except ImportError:  # pragma: no cover - torch < 2.5
        return False
    return True


def flex_block_mask(masks: Tensor, seq_len: int, block_size: int):
    """``BlockMask`` of ``[B|1, H|1, nb, nb]`` bool block masks (see the module)."""
    from torch.nn.attention.flex_attention import BlockMask
    if masks.dim() != 4 or masks.dtype != torch.bool:
        raise ValueError(f"masks must be a [B, H, nb, nb] bool tensor, got {tuple(masks.shape)} {masks.dtype}")
    nb = math.ceil(seq_len / block_size)
    if masks.shape[-2:] != (nb, nb):
        raise ValueError(f"masks must have [{nb}, {nb}] blocks for {seq_len} tokens in blocks of {block_size}, "
                         f"got {tuple(masks.shape[-2:])}")
    masks = masks.contiguous()
    full = masks.clone()
    if seq_len % block_size:
        full[..., -1] = False  # the short last key block needs mask_mod's bound check
        full[..., -1, :] = False
    partial = masks & ~full

    def counts_and_indices(m: Tensor):
        order = torch.sort(m.to(torch.int8), dim=-1, descending=True, stable=True).indices
        return m.sum(-1).to(torch.int32), order.to(torch.int32).contiguous()

    kv_num, kv_idx = counts_and_indices(partial)
    full_num, full_idx = counts_and_indices(full)
    table = masks

    def mask_mod(b, h, q_idx, kv_idx):
        bb = b if table.shape[0] > 1 else 0
        hh = h if table.shape[1] > 1 else 0
        return (kv_idx < seq_len) & table[bb, hh, q_idx // block_size, kv_idx // block_size]

    return BlockMask.from_kv_blocks(kv_num, kv_idx, full_num, full_idx, BLOCK_SIZE=block_size, mask_mod=mask_mod,
                                    seq_lengths=(seq_len, seq_len))


@functools.lru_cache(maxsize=1)
def _compiled():
    from torch.nn.attention.flex_attention import flex_attention
    return torch.compile(flex_attention, dynamic=False)


def flex_attention_masked(q: Tensor, k: Tensor, v: Tensor, masks: Tensor, block_size: int,
                          scale: Optional[float] = None, compiled: bool = True) -> Tensor:
    """Attention of ``[B, H, S, D]`` tensors over the kept blocks of ``masks``
    (``[B|1, H|1, nb, nb]`` bool) with FlexAttention (``compiled=False``: eager, for checks)."""
    from torch.nn.attention.flex_attention import flex_attention
    s = q.shape[2]
    bm = flex_block_mask(masks.to(q.device), s, block_size)
    fn = _compiled() if compiled else flex_attention
    out = fn(q, k, v, block_mask=bm, scale=scale)
    empty = ~masks.any(-1)  # [B|1, H|1, nb]: query blocks without keys give zeros
    if bool(empty.any()):
        rows = empty.to(q.device).repeat_interleave(block_size, -1)[..., :s, None]
        out = out.masked_fill(rows, 0.0)
    return out
