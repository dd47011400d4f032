"""Self-attention over a padded batch of graphs, run bucket by bucket.

PyG's ``GPSConv`` pads every graph of a batch to the largest one (``to_dense_batch``) and
runs one attention call, so a batch of ``B`` graphs costs ``B·n_max²`` attention scores
whatever the graphs' sizes: one large graph makes every small graph pay for it, and a
method that shrinks graphs (GTSP's token drop) saves FLOPs on paper that the padding eats.

Bucketing (as in length-bucketed batching of sequence models): sort the graphs by size and
cut the sorted list into runs; a run of ``c`` graphs whose largest has ``n`` nodes is padded
to ``n`` only, and a run grows while its padded score count stays within the slack,

    c·n² ≤ (1 + slack)·Σ_{g ∈ run} n_g²,

then attention runs once per run on the run's rows truncated to its own length. Keys past a
graph's length are masked in either form, so the result equals the padded call's (up to the
order of floating-point sums); ``slack = 0`` groups graphs of equal size only, a very large
slack gives one run (the padded call). Rows of the output beyond a graph's length are zero
(``GPSConv`` drops them with ``h[mask]``).

:class:`BucketedAttention` is an ``nn.MultiheadAttention`` (``GPSConv`` dispatches on that
type) that runs its self-attention calls this way; :func:`bucket_attention` swaps it into a
model's ``GPSConv`` layers keeping the parameter objects. The FLOPs counter and GTSP's cost
model count the buckets (:func:`attention_shapes`), i.e. what runs.
"""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sparsity_core.validation import check_nonnegative

from ._deps import torch_geometric


def size_buckets(sizes: Sequence[int], slack: float) -> List[List[int]]:
    """Indices of ``sizes`` grouped into runs (see the module), smallest graphs first; each
    run is sorted by size, its last entry is its longest."""
    order = sorted(range(len(sizes)), key=lambda g: (int(sizes[g]), g))
    runs: List[List[int]] = []
    run: List[int] = []
    exact = 0
    for g in order:
        n2 = int(sizes[g]) ** 2
        if run and (len(run) + 1) * n2 > (1.0 + slack) * (exact + n2):
            runs.append(run)
            run, exact = [], 0
        run.append(g)
        exact += n2
    if run:
        runs.append(run)
    return runs


def _lengths(key_padding_mask: Tensor) -> Optional[List[int]]:
    """Per-row lengths of a boolean "True = padding" mask whose padding is all at the end of
    each row (``to_dense_batch``'s layout), else ``None``."""
    if key_padding_mask is None or key_padding_mask.dtype != torch.bool or key_padding_mask.dim() != 2:
        return None
    lengths = (~key_padding_mask).sum(1)
    positions = torch.arange(key_padding_mask.size(1), device=key_padding_mask.device)
    if not torch.equal(key_padding_mask, positions[None, :] >= lengths[:, None]):
        return None
    return lengths.tolist()


def attention_shapes(module: nn.Module, query: Tensor, key: Tensor, value: Tensor,
                     key_padding_mask: Optional[Tensor] = None, need_weights: bool = True,
                     attn_mask: Optional[Tensor] = None, is_causal: bool = False) -> List[Tuple[int, int, int]]:
    """``(batch, query length, key length)`` of every attention call ``module`` runs for
    these inputs (batch first): one per bucket when it buckets, else the call itself."""
    slack = getattr(module, "bucket_slack", None)
    lengths = None
    if (slack is not None and query is key and key is value and not need_weights and attn_mask is None
            and not is_causal and getattr(module, "batch_first", False)):
        lengths = _lengths(key_padding_mask)
    if lengths is None:
        if getattr(module, "batch_first", False):
            return [(query.shape[0], query.shape[1], key.shape[1])]
        return [(query.shape[1], query.shape[0], key.shape[0])]
    out = []
    for run in size_buckets(lengths, slack):
        n = int(lengths[run[-1]])
        if n > 0:
            out.append((len(run), n, n))
    return out


def run_in_buckets(attend: Callable[[Tensor, Tensor], Tensor], x: Tensor, key_padding_mask: Tensor,
                   slack: float) -> Optional[Tensor]:
    """``attend(x_run, mask_run)`` per bucket of rows of the padded batch ``x`` ``[B, L, C]``,
    written into a zero ``[B, L, C]`` output; ``None`` when the mask is not end-padded (the
    caller then runs the padded call)."""
    lengths = _lengths(key_padding_mask)
    if lengths is None:
        return None
    runs = size_buckets(lengths, slack)
    if len(runs) == 1 and int(lengths[runs[0][-1]]) == x.size(1):
        return attend(x, key_padding_mask)
    out = None
    for run in runs:
        n = int(lengths[run[-1]])
        if n == 0:
            continue
        rows = torch.tensor(sorted(run), device=x.device)
        y = attend(x.index_select(0, rows)[:, :n], key_padding_mask.index_select(0, rows)[:, :n])
        if out is None:
            out = x.new_zeros(x.size(0), x.size(1), y.size(-1))
        out[rows, :n] = y
    return out if out is not None else x.new_zeros(x.shape)


def sdpa_mask(key_padding_mask: Optional[Tensor], attn_mask: Optional[Tensor], dtype: torch.dtype) -> Optional[Tensor]:
    """One mask in ``scaled_dot_product_attention``'s convention (boolean: True = attend;
    float: added to the scores) from ``nn.MultiheadAttention``'s (boolean: True = ignore)."""
    if attn_mask is None and key_padding_mask is not None and key_padding_mask.dtype == torch.bool:
        return ~key_padding_mask[:, None, None, :]
    total = None
    for m in (attn_mask, None if key_padding_mask is None else key_padding_mask[:, None, None, :]):
        if m is None:
            continue
        if m.dtype == torch.bool:
            m = torch.zeros(m.shape, dtype=dtype, device=m.device).masked_fill(m, float("-inf"))
        total = m if total is None else total + m
    return total


def fused_attention(module: nn.MultiheadAttention, query: Tensor, key: Tensor, value: Tensor,
                    key_padding_mask: Optional[Tensor] = None, attn_mask: Optional[Tensor] = None) -> Tensor:
    """Batch-first multi-head attention of ``module`` (packed ``in_proj_weight`` of ``3·k·d``
    rows for its ``k = num_heads`` heads of width ``d = head_dim``, ``out_proj``) through
    PyTorch's fused ``scaled_dot_product_attention``:

        out = [softmax(Q_h K_hᵀ/√d + mask) V_h]_h · W_oᵀ + b_o

    In eval ``nn.MultiheadAttention`` takes its own fast path, whose masked softmax is 2-4x
    slower than this kernel on the CPU for graphs of 100-200 nodes (measured here); the suite's
    attentions (:class:`BucketedAttention`, GTSP's pruned attention) all run this one, so
    dense and pruned models are timed on the same kernel."""
    b, lq, _ = query.shape
    q, kk, v = project_heads(module, query, key, value)
    out = F.scaled_dot_product_attention(q, kk, v, attn_mask=sdpa_mask(key_padding_mask, attn_mask, q.dtype),
                                         dropout_p=module.dropout if module.training else 0.0)
    inner = int(module.num_heads) * int(module.head_dim)
    return F.linear(out.transpose(1, 2).reshape(b, lq, inner), module.out_proj.weight, module.out_proj.bias)


def project_heads(module: nn.MultiheadAttention, query: Tensor, key: Tensor, value: Tensor) -> Tuple[Tensor, ...]:
    """``Q, K, V`` of ``module``'s packed input projection, batch first, split into heads:
    each ``[batch, heads, length, head_dim]``."""
    b, lq, _ = query.shape
    s = key.shape[1]
    k, d = int(module.num_heads), int(module.head_dim)
    inner = k * d
    w_q, w_k, w_v = module.in_proj_weight.split(inner, 0)
    b_q, b_k, b_v = module.in_proj_bias.split(inner, 0) if module.in_proj_bias is not None else (None,) * 3
    return (F.linear(query, w_q, b_q).view(b, lq, k, d).transpose(1, 2),
            F.linear(key, w_k, b_k).view(b, s, k, d).transpose(1, 2),
            F.linear(value, w_v, b_v).view(b, s, k, d).transpose(1, 2))


class BucketedAttention(nn.MultiheadAttention):
    """``nn.MultiheadAttention`` whose batch-first self-attention calls with an end-padded
    ``key_padding_mask`` and ``need_weights=False`` (what ``GPSConv`` makes) run bucket by
    bucket (see the module) through :func:`fused_attention` (``bucket_slack=None``: one padded
    call through it); any other call runs as ``nn.MultiheadAttention``. Same parameters and
    state-dict keys as ``nn.MultiheadAttention``."""

    bucket_slack: Optional[float] = 0.25  # None: the single padded call

    @classmethod
    def from_attention(cls, mha: nn.MultiheadAttention, slack: float = 0.25) -> "BucketedAttention":
        """A bucketed attention holding ``mha``'s own parameter objects and output projection."""
        if not isinstance(mha, nn.MultiheadAttention) or not mha.batch_first:
            raise ValueError(f"bucketing needs a batch-first nn.MultiheadAttention, got {type(mha).__name__}"
                             + ("" if not isinstance(mha, nn.MultiheadAttention) else " with batch_first=False"))
        if not mha._qkv_same_embed_dim or mha.bias_k is not None or mha.add_zero_attn:
            raise ValueError("bucketing needs packed q/k/v projections (kdim = vdim = embed_dim), no add_bias_kv "
                             "and no add_zero_attn")
        check_nonnegative(slack, "slack")
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        for name, value in vars(mha).items():
            if not name.startswith("_") or name in ("_qkv_same_embed_dim",):
                setattr(new, name, value)
        for name, p in mha._parameters.items():
            new.register_parameter(name, p)
        for name, m in mha._modules.items():
            new.add_module(name, m)
        new.bucket_slack = float(slack)
        return new

    def forward(self, query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Optional[Tensor] = None,
                need_weights: bool = True, attn_mask: Optional[Tensor] = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> Tuple[Tensor, Optional[Tensor]]:
        if query is key and key is value and not need_weights and attn_mask is None and not is_causal:
            out = None
            if self.bucket_slack is not None:
                out = run_in_buckets(lambda x, mask: fused_attention(self, x, x, x, mask), query, key_padding_mask,
                                     self.bucket_slack)
            return (out if out is not None else fused_attention(self, query, key, value, key_padding_mask)), None
        return super().forward(query, key, value, key_padding_mask=key_padding_mask, need_weights=need_weights,
                               attn_mask=attn_mask, average_attn_weights=average_attn_weights, is_causal=is_causal)

    def extra_repr(self) -> str:
        return f"bucket_slack={self.bucket_slack}"


def bucket_attention(model: nn.Module, slack: Optional[float] = 0.25) -> int:
    """Make every ``GPSConv`` of ``model`` with a batch-first ``nn.MultiheadAttention`` run it
    in buckets (parameters kept: an optimizer built before still holds them). Returns how
    many were changed; a layer already bucketed gets the new slack, and ``slack=None`` makes
    bucketed layers run the single padded call again."""
    if slack is not None:
        check_nonnegative(slack, "slack")
    GPSConv = torch_geometric("nn").GPSConv
    layers = [m for m in model.modules() if isinstance(m, GPSConv) and isinstance(m.attn, nn.MultiheadAttention)]
    changed = 0
    for gps in layers:
        if hasattr(gps.attn, "bucket_slack"):  # BucketedAttention, GTSP's PrunedAttention
            gps.attn.bucket_slack = None if slack is None else float(slack)
        elif slack is not None and gps.attn.batch_first and gps.attn._qkv_same_embed_dim \
                and gps.attn.bias_k is None and not gps.attn.add_zero_attn:
            gps.attn = BucketedAttention.from_attention(gps.attn, slack)
        else:
            continue
        changed += 1
    return changed
