"""Dynamic sparse attention: a block mask chosen per call from the call's own q / k / v.

A static plan (:mod:`.plan`) fixes each head's pattern offline; a *dynamic method* looks at
the queries, keys and values of every self-attention call and picks, per batch element and
head, which key blocks each query block computes (ProxyAttn, SeerAttention, Trainable Dynamic
Mask Attention), or runs its own block-skipping loop (BLASST, S2O). Every method is a
:class:`DynamicAttention`: :meth:`~DynamicAttention.select` returns a ``[B, H, nb, nb]`` bool
block mask, and :meth:`~DynamicAttention.attend` runs the block-sparse kernel
(:mod:`.kernel`) with it, heads of one batch element that chose the same mask in one call.
Methods whose decision is inside the softmax loop override :meth:`~DynamicAttention.attend`.

Every mask :meth:`~DynamicAttention.attend` runs is first made *safe* (:func:`safe_mask`):
text tokens stay dense (their rows and columns, as in every static pattern) and each query
block keeps its own diagonal block, so no query row is left without keys. The measured
density of the masks run (fraction of the ``S²`` query-key pairs computed, tail blocks
weighted by their length) is accumulated in :attr:`~DynamicAttention.stats`.

Install a method with :func:`.processors.install` (``install(model, method=ProxyAttn(...))``):
the processors call :meth:`~DynamicAttention.attend` for every self-attention call after the
first ``dense_steps`` denoising steps.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, Optional

import torch
from torch import Tensor

from sparsity_core.validation import check_int

from .kernel import head_groups, multi_pattern_attention, use_flex
from .layout import TokenLayout
from .patterns import block_lengths


def text_blocks(layout: TokenLayout, block_size: int) -> Tensor:
    """``[nb]`` bool: blocks holding at least one text token."""
    nb = math.ceil(layout.total / block_size)
    is_text = layout.coords(torch.arange(layout.total))[0]
    return torch.nn.functional.pad(is_text, (0, nb * block_size - layout.total)).view(nb, block_size).any(1)


def safe_mask(mask: Tensor, layout: TokenLayout, block_size: int) -> Tensor:
    """``mask`` (``[..., nb, nb]`` bool) with text rows / columns and the diagonal kept."""
    nb = mask.shape[-1]
    text = text_blocks(layout, block_size).to(mask.device)
    out = mask | torch.eye(nb, dtype=torch.bool, device=mask.device)
    return out | text[:, None] | text[None, :]


def mask_density(mask: Tensor, seq_len: int, block_size: int) -> float:
    """Mean over the leading dims of the fraction of ``S²`` pairs a ``[..., nb, nb]`` mask computes."""
    lengths = block_lengths(seq_len, block_size).to(mask.device)
    pairs = (lengths[:, None] * mask.to(torch.float64) * lengths[None, :]).sum((-1, -2))
    return float(pairs.mean() / seq_len ** 2)


def per_head_attention(q: Tensor, k: Tensor, v: Tensor, masks: Tensor, block_size: int,
                       scale: Optional[float] = None, backend: str = "auto") -> Tensor:
    """Attention of ``[B, H, S, D]`` tensors with a block mask per batch element and head
    (``masks``: ``[B, H, nb, nb]`` bool); equal masks within a batch element share one call
    (FlexAttention, :mod:`.kernel`'s ``backend``: one call for everything)."""
    if masks.dim() != 4 or masks.shape[:2] != q.shape[:2]:
        raise ValueError(f"masks must be [B, H, nb, nb] = [{q.shape[0]}, {q.shape[1]}, nb, nb], got "
                         f"{tuple(masks.shape)}")
    if use_flex(q, block_size, backend):
        from .flex import flex_attention_masked
        return flex_attention_masked(q, k, v, masks, block_size, scale)
    outs = [multi_pattern_attention(q[b:b + 1], k[b:b + 1], v[b:b + 1], head_groups(list(masks[b])), block_size,
                                    scale, "gather") for b in range(q.shape[0])]
    return outs[0] if len(outs) == 1 else torch.cat(outs, 0)


class DynamicAttention:
    """Base of the dynamic methods (see the module).

    Args:
        dense_steps: the first denoising steps run dense.
    """

    #: name used in errors, logs and benchmark tables
    name = "dynamic"

    def __init__(self, dense_steps: int = 0) -> None:
        check_int(dense_steps, "dense_steps", minimum=0)
        self.dense_steps = int(dense_steps)
        self.stats: Dict[str, float] = {"calls": 0, "density": 0.0}

    def check_model(self, model: torch.nn.Module) -> None:
        """Raise ``ValueError`` when the method cannot run on ``model`` (called by ``install``
        before any processor changes; methods with per-layer state check their layer count)."""

    def select(self, layer: int, q: Tensor, k: Tensor, v: Tensor, scale: Optional[float], layout: TokenLayout,
               block_size: int) -> Tensor:
        """``[B, H, nb, nb]`` bool: the key blocks each query block of each head computes."""
        raise NotImplementedError(f"{type(self).__name__} must implement select() or attend()")

    def attend(self, layer: int, q: Tensor, k: Tensor, v: Tensor, scale: Optional[float], layout: TokenLayout,
               block_size: int) -> Tensor:
        """Output ``[B, H, S, D]`` of layer ``layer``'s self-attention for ``[B, H, S, D]`` inputs."""
        masks = safe_mask(self.select(layer, q, k, v, scale, layout, block_size), layout, block_size)
        self.record(mask_density(masks, q.shape[2], block_size))
        return per_head_attention(q, k, v, masks, block_size, scale)

    def record(self, density: float) -> None:
        """Add one call's computed density to the running mean in :attr:`stats`."""
        n = self.stats["calls"]
        self.stats["density"] = (self.stats["density"] * n + density) / (n + 1)
        self.stats["calls"] = n + 1

    def reset_stats(self) -> None:
        self.stats = {"calls": 0, "density": 0.0}


def check_per_length(value: "float | dict", check: Callable[[float], float], what: str) -> "float | dict":
    """``value`` checked: one number (``check`` raises on a bad one) or a mapping ``{sequence
    length: number}`` (thresholds calibrated per token count)."""
    if isinstance(value, dict):
        for tokens, v in value.items():
            check_int(tokens, f"{what} sequence length", minimum=1)
            check(v)
    else:
        check(value)
    return value


def at_length(value: "float | dict", tokens: int, missing: float) -> float:
    """The number of a :func:`check_per_length` value for ``tokens`` (``missing``: a length the
    mapping lacks)."""
    return value.get(tokens, missing) if isinstance(value, dict) else value


def pooled(x: Tensor, block_size: int, how: str = "mean") -> Tensor:
    """``[B, H, nb, D]`` pooling of ``[B, H, S, D]`` over blocks of ``block_size`` tokens (the
    short last block pooled over its own tokens)."""
    s = x.shape[2]
    full = (s // block_size) * block_size
    parts = []
    if full:
        blocks = x[:, :, :full].unflatten(2, (full // block_size, block_size))
        parts.append(_pool(blocks, how))
    if full < s:
        parts.append(_pool(x[:, :, full:].unsqueeze(2), how))
    return parts[0] if len(parts) == 1 else torch.cat(parts, 2)


def _pool(blocks: Tensor, how: str) -> Tensor:
    if how == "mean":
        return blocks.mean(3)
    if how == "max":
        return blocks.amax(3)
    if how == "min":
        return blocks.amin(3)
    raise ValueError(f"unknown pooling {how!r}; valid: ['max', 'mean', 'min']")


def top_blocks(scores: Tensor, keep: Tensor) -> Tensor:
    """``[..., nb, nb]`` bool keeping, per row, the ``keep[..., row]`` highest-scoring key blocks
    (``keep`` broadcastable to ``scores.shape[:-1]``, integer counts)."""
    order = scores.argsort(-1, descending=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(-1, order, torch.arange(scores.shape[-1], device=scores.device).expand_as(order))
    return ranks < keep.unsqueeze(-1)
