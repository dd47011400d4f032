"""FLOPs of a graph transformer built from PyG ``GPSConv`` layers, counted as executed.

Convention: FLOPs = 2 × the multiply-accumulates of every matrix product (linear maps,
``QKᵀ`` and ``attention·V``) + one add per message element of neighbourhood aggregation
(``E·C_in`` per message-passing call) + the softmax and the padding mask over every attention
score, :data:`SOFTMAX_FLOPS` per score (subtract the row maximum, exponentiate, sum, divide,
add the mask): they run over the padded ``B·n_max²`` matrix, whatever the graphs' sizes.
Other elementwise work (norms, activations, biases, residual adds) is not counted.

``GPSConv`` pads each batch to ``B`` graphs × ``n_max`` nodes (``to_dense_batch``) before
its attention, so with ``P = B·n_max``, ``k`` heads of width ``d`` and ``C`` channels an
attention layer executes

    F_attn = 2·P·C·3kd (Q, K, V) + 2·2·B·n_max²·kd (scores, weights·V) + 5·B·k·n_max² (softmax, mask)
             + 2·P·kd·C (output)

and its MLP (``C → 2C → C``) ``8·N·C²``. An attention that runs in buckets
(:mod:`.attention_buckets`, :class:`~.models.GraphGPS`'s default) is counted per bucket
(``B``, ``n_max`` of each bucket), as it runs. :func:`count_flops` measures a forward pass with
hooks (exact for the input given); :class:`LayerCost` is the analytic model GTSP's budget
uses to price candidate removals. Zeros inside weights do not change executed FLOPs:
``sparse_total`` (linear maps scaled by their weights' density) is reported separately and
is not a speed-up.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch
from torch import Tensor, nn

from sparsity_core.macs import MacCounter

from ._deps import torch_geometric
from .attention_buckets import attention_shapes, size_buckets

PARTS = ("attention", "local", "mlp", "scorer", "other")


#: FLOPs per attention score for the softmax and the mask (see the module)
SOFTMAX_FLOPS = 5


def attention_flops(num_graphs: int, max_nodes: int, channels: int, heads: int, head_dim: int) -> float:
    """Executed FLOPs of one (padded) multi-head attention call, see the module."""
    p, inner = num_graphs * max_nodes, heads * head_dim
    if inner == 0:
        return 0.0
    scores = num_graphs * max_nodes * max_nodes
    return float(2 * p * channels * 3 * inner + 4 * scores * inner + SOFTMAX_FLOPS * scores * heads
                 + 2 * p * inner * channels)


def _density(t: Tensor) -> float:
    return float((t != 0).sum()) / t.numel() if t.numel() else 0.0


_MHA_ARGS = ("query", "key", "value", "key_padding_mask", "need_weights", "attn_mask", "average_attn_weights",
             "is_causal")


def _mha_flops(mod: nn.MultiheadAttention, args: tuple, kwargs: dict) -> tuple:
    """``(executed FLOPs, FLOPs scaled by weight density)`` of one call ``mod(*args, **kwargs)``:
    every attention call it runs (one per bucket for a bucketing attention)."""
    call = dict(zip(_MHA_ARGS, args), **kwargs)
    call.setdefault("key", call["query"])
    call.setdefault("value", call["key"])
    heads, d = int(mod.num_heads), int(mod.head_dim)
    inner, c = heads * d, int(mod.embed_dim)
    if inner == 0:
        return 0.0, 0.0
    proj = scores = out = 0
    for b, lq, s in attention_shapes(mod, **{k: v for k, v in call.items() if k != "average_attn_weights"}):
        proj += 2 * b * lq * c * inner + 2 * b * s * c * 2 * inner
        scores += 4 * b * lq * s * inner + SOFTMAX_FLOPS * b * heads * lq * s
        out += 2 * b * lq * inner * c
    w_in = mod.in_proj_weight
    dens_in = _density(w_in) if w_in is not None else 1.0
    dens_out = _density(mod.out_proj.weight)
    return float(proj + scores + out), float(proj * dens_in + scores + out * dens_out)


def gps_parts(model: nn.Module) -> Dict[int, str]:
    """``id(module) → part`` for the modules inside GPS layers (see :data:`PARTS`)."""
    GPSConv = torch_geometric("nn").GPSConv
    parts: Dict[int, str] = {}
    for _, module in model.named_modules():
        if isinstance(module, GPSConv):
            for part, sub in (("attention", module.attn), ("local", module.conv), ("mlp", module.mlp)):
                if sub is not None:
                    for m in sub.modules():
                        parts[id(m)] = part
        scorer = getattr(module, "token_scorer", None)
        if isinstance(scorer, nn.Module):
            for m in scorer.modules():
                parts[id(m)] = "scorer"
    return parts


@dataclass
class FlopsReport:
    """Executed FLOPs of one forward pass: total, per part, and the linear maps' FLOPs
    scaled by weight density (``sparse_total``, what zero-skipping kernels could save)."""

    total: float = 0.0
    sparse_total: float = 0.0
    by_part: Dict[str, float] = field(default_factory=lambda: {p: 0.0 for p in PARTS})

    def add(self, part: str, flops: float, sparse: float) -> None:
        self.total += flops
        self.sparse_total += sparse
        self.by_part[part] = self.by_part.get(part, 0.0) + flops


class FlopsCounter(MacCounter):
    """The suite's MAC counter (:class:`~sparsity_core.macs.MacCounter`) extended to graph
    transformers and reported in FLOPs: linear maps (2 × their MACs, from the core), PyG
    ``MessagePassing`` (one add per message element) and ``nn.MultiheadAttention`` (its
    projections and both matrix products) of ``model`` (only those accepted by ``select``),
    added to :attr:`report` per part. Use as a context manager or with start/stop."""

    def __init__(self, model: nn.Module, parts: Optional[Dict[int, str]] = None, select=None) -> None:
        super().__init__(model, select)
        self.parts = gps_parts(model) if parts is None else parts
        self.report = FlopsReport()
        self.calls: List[tuple] = []  # (module kind, rows or edges, flops) for cost models

    def _part(self, m: nn.Module) -> str:
        return self.parts.get(id(m), "other")

    def handles(self, module: nn.Module) -> bool:
        MessagePassing = torch_geometric("nn").MessagePassing
        return isinstance(module, (nn.MultiheadAttention, nn.Linear, MessagePassing))

    def count(self, module: nn.Module, args: tuple, kwargs: dict, output) -> Optional[float]:
        if isinstance(module, nn.MultiheadAttention):
            return _mha_flops(module, args, kwargs)[0]
        if isinstance(module, nn.Linear):
            return 2.0 * super().count(module, args, kwargs, output)
        x = args[0] if args else kwargs.get("x")  # message passing
        ei = args[1] if len(args) > 1 else kwargs.get("edge_index")
        x = x[0] if isinstance(x, (tuple, list)) else x
        if not isinstance(x, Tensor) or ei is None:
            return None
        return float((ei.size(1) if isinstance(ei, Tensor) else int(ei.nnz())) * x.size(-1))

    def record(self, name: str, module: nn.Module, flops: float, args: tuple, kwargs: dict, output) -> None:
        super().record(name, module, flops, args, kwargs, output)
        part = self._part(module)
        if isinstance(module, nn.MultiheadAttention):
            self.report.add(part, flops, _mha_flops(module, args, kwargs)[1])
            self.calls.append(("attention", 0, flops))
        elif isinstance(module, nn.Linear):
            self.report.add(part, flops, flops * _density(module.weight))
            x = args[0] if args else kwargs.get("input")
            self.calls.append(("linear", x.numel() // module.in_features, flops))
        else:
            self.report.add(part, flops, flops)
            ei = args[1] if len(args) > 1 else kwargs.get("edge_index")
            self.calls.append(("message", ei.size(1) if isinstance(ei, Tensor) else int(ei.nnz()), flops))

    def stop(self) -> FlopsReport:
        super().stop()
        return self.report

    def __enter__(self) -> "FlopsCounter":
        self.start()
        return self


@torch.no_grad()
def count_flops(model: nn.Module, *args, **kwargs) -> FlopsReport:
    """Run ``model(*args, **kwargs)`` once (no gradients, the model's current train/eval
    mode) and return the FLOPs it executed, per part (attention, local MPNN, MLP, token
    scorer, other)."""
    with FlopsCounter(model) as counter:
        model(*args, **kwargs)
    return counter.report


@dataclass
class LayerCost:
    """Analytic FLOPs of one GPS layer under a GTSP plan, for pricing candidate removals.

    ``node_flops`` / ``edge_flops``: FLOPs per node / per edge of the layer's linear maps and
    message passing (local MPNN + MLP), measured once on real batches. ``sizes``: graph
    sizes of the calibration batches (one list per batch) and ``edges`` their edge counts.
    With keep ratio ρ each graph keeps ``max(1, ⌈ρ·n_g⌉)`` nodes; kept edges are estimated
    as ``ρ²·E`` (the only approximation: which edges survive depends on the scorer).
    """

    channels: int
    heads: int
    head_dim: int
    node_flops: float = 0.0
    edge_flops: float = 0.0
    sizes: List[List[int]] = field(default_factory=list)
    edges: List[int] = field(default_factory=list)
    bucket_slack: Optional[float] = None

    def flops(self, open_: bool = True, heads_kept: Optional[int] = None, keep_ratio: float = 1.0,
              scorer: bool = False) -> float:
        """Mean FLOPs per calibration batch."""
        if not open_ or not self.sizes:
            return 0.0
        k = self.heads if heads_kept is None else heads_kept
        total = 0.0
        for sizes, e in zip(self.sizes, self.edges):
            kept = [max(1, math.ceil(n * keep_ratio - 1e-9)) if keep_ratio < 1 else n for n in sizes]
            e_kept = e * keep_ratio * keep_ratio
            total += self.node_flops * sum(kept) + self.edge_flops * e_kept
            total += self.attention(kept, k)
            if scorer and keep_ratio < 1:
                total += 2.0 * sum(sizes) * self.channels
        return total / len(self.sizes)

    def attention(self, sizes: List[int], heads: int) -> float:
        """Attention FLOPs of one batch of graphs of these sizes: padded to the largest, or
        per bucket when the layer's attention buckets (``bucket_slack``)."""
        if self.bucket_slack is None:
            return attention_flops(len(sizes), max(sizes), self.channels, heads, self.head_dim)
        return sum(attention_flops(len(run), sizes[run[-1]], self.channels, heads, self.head_dim)
                   for run in size_buckets(sizes, self.bucket_slack))

    def kept_nodes(self, keep_ratio: float) -> float:
        """Mean nodes per calibration batch that a keep ratio ``ρ`` leaves."""
        if not self.sizes:
            return 0.0
        if keep_ratio >= 1:
            return sum(sum(s) for s in self.sizes) / len(self.sizes)
        return sum(max(1, math.ceil(n * keep_ratio - 1e-9)) for s in self.sizes for n in s) / len(self.sizes)

    def state(self) -> dict:
        return {"channels": self.channels, "heads": self.heads, "head_dim": self.head_dim,
                "node_flops": self.node_flops, "edge_flops": self.edge_flops,
                "sizes": [list(s) for s in self.sizes], "edges": list(self.edges), "bucket_slack": self.bucket_slack}
