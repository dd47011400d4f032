"""Multi-head attention with some heads physically removed (GTSP finalize).

``nn.MultiheadAttention`` needs ``embed_dim = heads · head_dim``, so it cannot hold fewer
heads than its width allows. :class:`PrunedAttention` keeps the model width ``C`` and an
inner width ``k·d`` for its ``k`` kept heads of width ``d``:

    Q, K, V = X·W_qᵀ + b_q, X·W_kᵀ + b_k, X·W_vᵀ + b_v          (W_q, W_k, W_v ∈ R^{kd×C})
    head_h  = softmax(Q_h K_hᵀ / √d + mask) V_h
    out     = [head_1 … head_k]·W_oᵀ + b_o                        (W_o ∈ R^{C×kd})

It subclasses ``nn.MultiheadAttention`` because PyG's ``GPSConv.forward`` dispatches on
``isinstance(self.attn, torch.nn.MultiheadAttention)``; it accepts the same call
(``attn(h, h, h, key_padding_mask=..., need_weights=False)``, batch first) and returns
``(output, weights or None)``. With all heads removed the output is ``b_o`` (what the gated
model computes when every head gate is 0). Without weights asked for, it runs
:func:`~.attention_buckets.fused_attention` (PyTorch's fused ``scaled_dot_product_attention``);
with ``bucket_slack`` set (copied from a :class:`~.attention_buckets.BucketedAttention` it was
cut from) padded batches of graphs run bucket by bucket as there.
"""
from __future__ import annotations

import math
import warnings
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attention_buckets import fused_attention, project_heads, run_in_buckets

def check_supported(mha: nn.Module, where: str) -> None:
    """``ValueError`` unless ``mha`` is a batch-first self-attention GTSP can gate and prune."""
    if not isinstance(mha, nn.MultiheadAttention):
        raise ValueError(f"{where}: head gates need attn_type='multihead' (torch.nn.MultiheadAttention), got "
                         f"{type(mha).__name__}; leave 'heads' out of kinds for other attention types")
    if not mha._qkv_same_embed_dim or mha.bias_k is not None or mha.add_zero_attn or not mha.batch_first:
        raise ValueError(f"{where}: head gates support batch-first attention with kdim = vdim = embed_dim, "
                         "no add_bias_kv and no add_zero_attn")


class PrunedAttention(nn.MultiheadAttention):
    """Batch-first self-attention with ``num_heads`` kept heads of width ``head_dim`` over
    ``embed_dim`` channels (see the module docstring)."""

    def __init__(self, embed_dim: int, num_heads: int, head_dim: int, bias: bool = True, dropout: float = 0.0,
                 device=None, dtype=None) -> None:
        nn.Module.__init__(self)
        kw = {"device": device, "dtype": dtype}
        self.embed_dim, self.num_heads, self.head_dim = int(embed_dim), int(num_heads), int(head_dim)
        self.kdim = self.vdim = self.embed_dim
        self._qkv_same_embed_dim = True
        self.batch_first = True
        self.dropout = float(dropout)
        self.bias_k = self.bias_v = None
        self.add_zero_attn = False
        self.q_proj_weight = self.k_proj_weight = self.v_proj_weight = None
        self.bucket_slack: Optional[float] = None
        inner = self.num_heads * self.head_dim
        self.in_proj_weight = nn.Parameter(torch.zeros(3 * inner, self.embed_dim, **kw))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * inner, **kw)) if bias else None
        with warnings.catch_warnings():  # no heads left: a zero-width projection is fine
            warnings.filterwarnings("ignore", "Initializing zero-element tensors")
            self.out_proj = nn.Linear(inner, self.embed_dim, bias=bias, **kw)

    def _reset_parameters(self) -> None:  # GPSConv.reset_parameters calls it
        if self.in_proj_weight.numel():
            nn.init.xavier_uniform_(self.in_proj_weight)
        if self.in_proj_bias is not None:
            nn.init.zeros_(self.in_proj_bias)
        if self.out_proj.bias is not None:
            nn.init.zeros_(self.out_proj.bias)

    @classmethod
    @torch.no_grad()
    def from_gated(cls, mha: nn.MultiheadAttention, keep: Tensor) -> "PrunedAttention":
        """The kept heads of ``mha``: rows of Q, K and V and the columns of the output
        projection as ``mha`` currently computes it (gate scales included, so a gated
        attention and its pruned copy are numerically equal)."""
        check_supported(mha, type(mha).__name__)
        heads, d, c = mha.num_heads, mha.head_dim, mha.embed_dim
        keep = torch.as_tensor(keep, dtype=torch.bool).cpu()
        if keep.numel() != heads:
            raise ValueError(f"keep has {keep.numel()} entries, the attention has {heads} heads")
        kept = keep.nonzero().flatten().tolist()
        w_out = mha.out_proj.weight.detach()  # the effective (parametrized) weight
        bias = mha.in_proj_bias is not None
        new = cls(c, len(kept), d, bias=bias, dropout=mha.dropout, device=w_out.device, dtype=w_out.dtype)
        new.bucket_slack = getattr(mha, "bucket_slack", None)
        rows = [block * c + h * d + i for block in range(3) for h in kept for i in range(d)]
        cols = [h * d + i for h in kept for i in range(d)]
        rows_t = torch.tensor(rows, dtype=torch.long, device=w_out.device)
        cols_t = torch.tensor(cols, dtype=torch.long, device=w_out.device)
        new.in_proj_weight.copy_(mha.in_proj_weight.detach().index_select(0, rows_t))
        if bias:
            new.in_proj_bias.copy_(mha.in_proj_bias.detach().index_select(0, rows_t))
        new.out_proj.weight.copy_(w_out.index_select(1, cols_t))
        if mha.out_proj.bias is not None and new.out_proj.bias is not None:
            new.out_proj.bias.copy_(mha.out_proj.bias.detach())
        return new

    def forward(self, query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Optional[Tensor] = None,
                need_weights: bool = True, attn_mask: Optional[Tensor] = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> Tuple[Tensor, Optional[Tensor]]:
        if is_causal or (attn_mask is not None and attn_mask.dim() != 2):
            raise ValueError("PrunedAttention supports a 2-D attn_mask and no is_causal (its heads were renumbered)")
        if (self.bucket_slack is not None and query is key and key is value and not need_weights
                and attn_mask is None and self.num_heads > 0):
            out = run_in_buckets(lambda x, mask: fused_attention(self, x, x, x, mask), query, key_padding_mask,
                                 self.bucket_slack)
            if out is not None:
                return out, None
        return self._attend(query, key, value, key_padding_mask, need_weights, attn_mask, average_attn_weights)

    def _attend(self, query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Optional[Tensor],
                need_weights: bool, attn_mask: Optional[Tensor],
                average_attn_weights: bool) -> Tuple[Tensor, Optional[Tensor]]:
        b, lq, _ = query.shape
        s = key.shape[1]
        k, d = self.num_heads, self.head_dim
        if k == 0:
            out = query.new_zeros(b, lq, self.embed_dim)
            if self.out_proj.bias is not None:
                out = out + self.out_proj.bias
            return out, (query.new_zeros(b, lq, s) if need_weights else None)
        if not need_weights:
            return fused_attention(self, query, key, value, key_padding_mask, attn_mask), None
        inner = k * d
        q, kk, v = project_heads(self, query, key, value)
        scores = torch.matmul(q, kk.transpose(-1, -2)) / math.sqrt(d)
        if attn_mask is not None:
            scores = scores.masked_fill(attn_mask, float("-inf")) if attn_mask.dtype == torch.bool \
                else scores + attn_mask
        if key_padding_mask is not None:
            pad = key_padding_mask[:, None, None, :]
            scores = scores.masked_fill(pad, float("-inf")) if pad.dtype == torch.bool else scores + pad
        weights = torch.softmax(scores, dim=-1)
        if self.training and self.dropout > 0:
            weights = F.dropout(weights, self.dropout)
        out = torch.matmul(weights, v).transpose(1, 2).reshape(b, lq, inner)
        out = F.linear(out, self.out_proj.weight, self.out_proj.bias)
        return out, (weights.mean(1) if average_attn_weights else weights)

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, head_dim={self.head_dim}"
