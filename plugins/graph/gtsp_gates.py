"""GTSP gates on PyG ``GPSConv`` layers: heads, layers and tokens, trained end to end
(Liu et al., 2024, "Exploring Sparsity in Graph Transformers", GTSP).

- Head gate (:class:`HeadGate`): a ``torch.nn.utils.parametrize`` parametrization of the
  attention's output projection, ``W_o ↦ W_o·diag(g ⊗ 1_d)``: column block ``h·d … (h+1)·d``
  (head ``h``'s output) is scaled by ``g_h``. A closed head has ``g_h = 0``, so its output
  contributes nothing.
- Layer gate (:class:`GTSPLayer`): a gated residual around the whole layer,
  ``out = x + g_l·(GPS(x) − x)``; ``g_l = 0`` is the identity.
- Token gate (:class:`GTSPLayer` with a scorer): only the top ``ρ`` fraction of each
  graph's nodes (and the edges between them) enter the layer; dropped nodes pass through
  unchanged, ``out_i = x_i``; kept nodes carry a straight-through gate ``t_i`` (see
  :mod:`.gtsp_tokens`): ``out_i = x_i + g_l·t_i·(GPS(x_kept)_i − x_i)``.

Open gates are ``g = 2·σ(θ)`` with learnable ``θ`` (0 at attach time, so ``g = 1`` and the
model computes exactly what it did before); closed ones are 0. Each gate records the
first-order Taylor importance of closing it, ``|g·∂L/∂g|`` (Molchanov et al., 2019), and a
token gate the importance per dropped node, ``|Σ_m ∂L/∂t_m| / |m|`` over the marginal nodes
``m`` (the lowest-ranked kept node of each graph, which a lower keep ratio drops first);
these are in the same unit (loss change), so the budget can compare heads, layers and
tokens.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import torch
from torch import Tensor, nn

from .gtsp_flops import FlopsCounter
from .gtsp_tokens import graph_sizes, marginal_mask, gumbel, induced_subgraph, split_edge_kwargs, topk_per_graph


def open_gate(logit: Tensor) -> Tensor:
    """``2·σ(θ)``: 1 at ``θ = 0``, in (0, 2)."""
    return 2.0 * torch.sigmoid(logit)


class HeadGate(nn.Module):
    """Parametrization of ``attn.out_proj.weight`` scaling head ``h``'s column block by ``g_h``."""

    def __init__(self, heads: int, head_dim: int) -> None:
        super().__init__()
        self.heads, self.head_dim = int(heads), int(head_dim)
        self.logits = nn.Parameter(torch.zeros(self.heads))
        self.register_buffer("mask", torch.ones(self.heads, dtype=torch.bool))
        self.taylor = torch.zeros(self.heads)  # Σ g·∂L/∂g since the last read (not state)

    def gates(self) -> Tensor:
        return self.mask.to(self.logits.dtype) * open_gate(self.logits)

    def forward(self, weight: Tensor) -> Tensor:
        g = self.gates()
        if g.requires_grad and torch.is_grad_enabled():
            value = g.detach()
            g.register_hook(lambda grad: self._record(grad * value))
        return weight * g.repeat_interleave(self.head_dim).to(weight.dtype)[None, :]

    def _record(self, contribution: Tensor) -> None:
        self.taylor = self.taylor.to(contribution.device) + contribution.detach().float()

    def take_taylor(self) -> Tensor:
        out, self.taylor = self.taylor, torch.zeros_like(self.taylor)
        return out.cpu()


def run_gated(gps: nn.Module, x: Tensor, edge_index, batch: Optional[Tensor], kwargs: Dict[str, object],
              scale, token_gate: Optional[Tensor], keep: Optional[Tensor], edge_keys: Sequence[str],
              calib: Optional[dict] = None) -> Tensor:
    """``x + scale·t·(GPS(x_kept) − x)`` on the kept nodes, ``x`` on the others (see the module)."""
    if keep is None:
        n_in, e_in = x.size(0), _num_edges(edge_index)
        counter = _start_counter(gps, calib)
        out = gps(x, edge_index, batch, **kwargs)
        _finish_counter(counter, calib, n_in, e_in)
        w = scale if token_gate is None else scale * token_gate[:, None]
        return x + w * (out - x)
    edges, rest = split_edge_kwargs(kwargs, edge_keys, _num_edges(edge_index))
    idx, sub_ei, sub_batch, sub_edges, _ = induced_subgraph(keep, edge_index, batch, edges)
    x_k = x.index_select(0, idx)
    counter = _start_counter(gps, calib)
    out_k = gps(x_k, sub_ei, sub_batch, **rest, **sub_edges)
    _finish_counter(counter, calib, x_k.size(0), sub_ei.size(1))
    w = scale if token_gate is None else scale * token_gate.index_select(0, idx)[:, None]
    return x.index_copy(0, idx, x_k + w * (out_k - x_k))


def _num_edges(edge_index) -> int:
    return int(edge_index.size(1)) if isinstance(edge_index, Tensor) else int(edge_index.nnz())


def _start_counter(gps: nn.Module, calib: Optional[dict]) -> Optional[FlopsCounter]:
    if calib is None:
        return None
    return FlopsCounter(gps, parts={}, select=lambda m: not isinstance(m, nn.MultiheadAttention)).start()


def _finish_counter(counter: Optional[FlopsCounter], calib: Optional[dict], n: int, e: int) -> None:
    """Per-node and per-edge FLOPs of the layer's linear maps and message passing."""
    if counter is None:
        return
    counter.stop()
    node = edge = 0.0
    for kind, rows, flops in counter.calls:
        if kind == "message" or (kind == "linear" and rows == e and rows != n):
            edge += flops
        elif kind == "linear":
            node += flops
    calib["node"].append(node / max(n, 1))
    calib["edge"].append(edge / max(e, 1))


class GTSPLayer(nn.Module):
    """A ``GPSConv`` with a layer gate and, with ``tokens=True``, a token scorer (see the
    module). Called like the ``GPSConv`` it wraps: ``layer(x, edge_index, batch, **kwargs)``;
    ``edge_keys`` names the keyword arguments that are edge-level tensors (they are filtered
    with the edges when tokens are dropped)."""

    def __init__(self, gps: nn.Module, tokens: bool = True, edge_keys: Sequence[str] = ("edge_attr", "edge_weight"),
                 token_noise: float = 1.0) -> None:
        super().__init__()
        self.gps = gps
        self.layer_logit = nn.Parameter(torch.zeros(()))
        self.register_buffer("layer_open", torch.tensor(True))
        self.register_buffer("token_keep", torch.tensor(1.0))
        self.token_scorer = nn.Linear(gps.channels, 1) if tokens else None
        self.edge_keys = tuple(edge_keys)
        self.token_noise = float(token_noise)
        self.generator: Optional[torch.Generator] = None  # Gumbel noise source (the controller's)
        self.taylor_layer = torch.zeros(())
        self.taylor_band = torch.zeros(())
        self.band_count = 0
        self.calib: Optional[dict] = None  # set while the controller calibrates costs

    def gate(self) -> Tensor:
        return self.layer_open.to(self.layer_logit.dtype) * open_gate(self.layer_logit)

    def forward(self, x: Tensor, edge_index, batch: Optional[Tensor] = None, **kwargs) -> Tensor:
        if self.calib is not None:
            self.calib["sizes"].append(graph_sizes(batch, x.size(0)).tolist())
            self.calib["edges"].append(_num_edges(edge_index))
        if not bool(self.layer_open):
            return x
        track = self.training and torch.is_grad_enabled()
        g = open_gate(self.layer_logit)
        if track:
            value = g.detach()
            g.register_hook(lambda grad: self._add("taylor_layer", grad * value))
        keep, t = None, None
        if self.token_scorer is not None:
            keep, t = self._select(x, batch, track)
        return run_gated(self.gps, x, edge_index, batch, kwargs, g, t, keep, self.edge_keys, self.calib)

    def _select(self, x: Tensor, batch: Optional[Tensor], track: bool):
        ratio = float(self.token_keep)
        if ratio >= 1.0 and not track:
            return None, None
        s = self.token_scorer(x).squeeze(-1)
        sel = s.detach()
        if self.training and self.token_noise > 0:
            sel = sel + self.token_noise * gumbel(sel.numel(), self.generator, sel.device, sel.dtype)
        keep, rank = topk_per_graph(sel, ratio, batch)
        t = None
        if track:
            p = torch.sigmoid(s)
            t = 1.0 + p - p.detach()
            band = marginal_mask(rank, batch, ratio)
            self.band_count += int(band.sum())
            band = band.to(t.dtype)
            t.register_hook(lambda grad: self._add("taylor_band", (grad * band).sum()))
        return (keep if ratio < 1.0 else None), t

    def _add(self, name: str, value: Tensor) -> None:
        setattr(self, name, getattr(self, name).to(value.device) + value.detach().float())

    def take_taylor(self) -> tuple:
        """``(g·∂L/∂g, Σ_m ∂L/∂t_m / |m|)`` accumulated since the last call."""
        layer, band = self.taylor_layer.cpu(), self.taylor_band.cpu() / max(self.band_count, 1)
        self.taylor_layer, self.taylor_band, self.band_count = torch.zeros(()), torch.zeros(()), 0
        return layer, band

    def extra_repr(self) -> str:
        return f"open={bool(self.layer_open)}, token_keep={float(self.token_keep):.3g}"


class PrunedGPSLayer(nn.Module):
    """A finalized GTSP layer: ``out = x + s·(GPS(x_kept) − x)`` on the ``⌈ρ·n_g⌉`` best-scored
    nodes of each graph, ``x`` on the others; ``s`` and ``ρ`` are fixed numbers, the scorer
    exists only when ``ρ < 1``."""

    def __init__(self, gps: nn.Module, scale: float, token_keep: float = 1.0, scorer: Optional[nn.Linear] = None,
                 edge_keys: Sequence[str] = ("edge_attr", "edge_weight")) -> None:
        super().__init__()
        self.gps = gps
        self.register_buffer("scale", torch.tensor(float(scale)))
        self.register_buffer("token_keep", torch.tensor(float(token_keep)))
        self.token_scorer = scorer if token_keep < 1.0 else None
        self.edge_keys = tuple(edge_keys)

    def forward(self, x: Tensor, edge_index, batch: Optional[Tensor] = None, **kwargs) -> Tensor:
        keep = None
        if self.token_scorer is not None:
            keep, _ = topk_per_graph(self.token_scorer(x).squeeze(-1).detach(), float(self.token_keep), batch)
        return run_gated(self.gps, x, edge_index, batch, kwargs, self.scale.to(x.dtype), None, keep, self.edge_keys)

    def extra_repr(self) -> str:
        return f"scale={float(self.scale):.4g}, token_keep={float(self.token_keep):.3g}"


class SkipLayer(nn.Module):
    """A removed GPS layer: returns its node features unchanged."""

    def forward(self, x: Tensor, *args, **kwargs) -> Tensor:
        return x
