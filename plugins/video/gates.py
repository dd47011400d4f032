"""Learned block gates: SeerAttention and Trainable Dynamic Mask Attention, distilled from dense attention.

**SeerAttention** (Gao et al., 2024, arXiv:2410.13276). Per layer, a gate pools each query
block by its mean and each key block by the concatenation ``[max, min, mean]`` of its keys,
projects them per head to a small width ``d_g`` (``W_q ∈ R^{D×d_g}``, ``W_k ∈ R^{3D×d_g}``) and
predicts the block importance ``P = softmax_j(q̄_i W_q (k̂_j W_k)ᵀ / √d_g)`` ``[B, H, nb, nb]``.
Each query block keeps its ``⌈density·nb⌉`` most important key blocks, or every block with
``P > threshold``. Ground truth: the dense map ``A = softmax(QKᵀ·scale)`` max-pooled over each
``block × block`` tile and row-normalised (:func:`dense_block_targets`); the gate is trained by
``KL(target ‖ P)`` with the model frozen (:mod:`.distill`).

**Trainable Dynamic Mask Attention** (Shi et al., 2025, arXiv:2508.02124). Per head ``h`` a
learned projection of the values scores every key, ``z_j = softplus(v_j·w_h)·A_h``; the
predicted share of attention mass of key block ``J`` is ``softmax_J(log Σ_{j∈J} exp z_j)``
(a per-key distribution ``softmax(z)`` summed per block), and every query block keeps the
``⌈density·nb⌉`` key blocks of highest share (the base adds the diagonal and text). The paper
adds ``z`` to the attention logits of the kept keys; on a pretrained model that changes the
outputs, so by default (``bias=False``) ``z`` only selects; ``bias=True`` adds it (a masked dense
computation: a reference, not a speed-up). Target: each key block's share of the dense
attention mass, ``(1/S)·Σ_i Σ_{j∈J} A_ij``.

Assumptions where the papers differ from a frozen video DiT: q/k arrive after the model's
rotary embedding, so the Seer gate adds no RoPE of its own; gates run in float32 with no
bias terms; TDMA pools ``z`` per block by log-sum-exp and selects one key set per head for all
query blocks (the paper's content mask is per key, not per query); ``d_g = 32`` by default.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sparsity_core.validation import check_int, check_range

from .dynamic import DynamicAttention, mask_density, pooled, safe_mask, top_blocks
from .layout import TokenLayout

_sdpa = F.scaled_dot_product_attention  # as imported here: processors may swap the module's function


def _blocks(x: Tensor, block_size: int, how: str) -> Tensor:
    """Pool the last dim of ``x`` in blocks (short tail included): ``max`` or ``sum``."""
    s = x.shape[-1]
    nb = math.ceil(s / block_size)
    x = F.pad(x, (0, nb * block_size - s)).unflatten(-1, (nb, block_size))  # probabilities: 0-padding is neutral
    return x.amax(-1) if how == "max" else x.sum(-1)


@torch.no_grad()
def dense_block_targets(q: Tensor, k: Tensor, scale: Optional[float], block_size: int,
                        max_elements: int = 1 << 24):
    """``(tiles, mass)`` of the dense map ``softmax(QKᵀ·scale)`` of ``[B, H, S, D]`` inputs:
    ``tiles`` ``[B, H, nb, nb]`` the per-tile maxima row-normalised (SeerAttention's target),
    ``mass`` ``[B, H, nb]`` each key block's mean share of a query's attention (TDMA's target).
    One head at a time, in chunks of whole query blocks of at most ``max_elements`` scores."""
    b, h, s, _ = q.shape
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    nb = math.ceil(s / block_size)
    rows = max(1, max_elements // max(s, 1) // block_size) * block_size
    tiles = q.new_zeros(b, h, nb, nb, dtype=torch.float32)
    mass = q.new_zeros(b, h, nb, dtype=torch.float32)
    for i in range(b):
        for j in range(h):
            kk = k[i, j].float()
            for r0 in range(0, s, rows):
                a = torch.softmax(q[i, j, r0:r0 + rows].float() @ kk.T * scale, -1)  # [r, S]
                b0 = r0 // block_size
                t = _blocks(_blocks(a, block_size, "max").T, block_size, "max").T  # [r blocks, nb]
                tiles[i, j, b0:b0 + t.shape[0]] = t
                mass[i, j] += _blocks(a.sum(0), block_size, "sum")
    return tiles / tiles.sum(-1, keepdim=True), mass / s


def block_recall(pred: Tensor, target: Tensor, keep: int) -> float:
    """Fraction of each row's ``keep`` truly largest blocks (by ``target``) among ``pred``'s ``keep`` largest."""
    n = torch.tensor(keep)
    hit = top_blocks(pred, n) & top_blocks(target, n)
    return float(hit.sum() / (hit[..., 0].numel() * keep))


class SeerGate(nn.Module):
    """SeerAttention's gate of one layer: block importance ``[B, H, nb, nb]`` from q and k."""

    def __init__(self, heads: int, head_dim: int, gate_dim: int = 32) -> None:
        super().__init__()
        self.heads, self.head_dim, self.gate_dim = heads, head_dim, gate_dim
        self.q_proj = nn.Parameter(torch.randn(heads, head_dim, gate_dim) / math.sqrt(head_dim))
        self.k_proj = nn.Parameter(torch.randn(heads, 3 * head_dim, gate_dim) / math.sqrt(3 * head_dim))

    def logits(self, q: Tensor, k: Tensor, v: Optional[Tensor], block_size: int) -> Tensor:
        q, k = q.detach().to(self.q_proj), k.detach().to(self.q_proj)
        qp = pooled(q, block_size, "mean")
        kp = torch.cat([pooled(k, block_size, how) for how in ("max", "min", "mean")], -1)
        qg = torch.einsum("bhnd,hde->bhne", qp, self.q_proj)
        kg = torch.einsum("bhnd,hde->bhne", kp, self.k_proj)
        return qg @ kg.transpose(-1, -2) / math.sqrt(self.gate_dim)

    def forward(self, q: Tensor, k: Tensor, v: Optional[Tensor], block_size: int) -> Tensor:
        return torch.softmax(self.logits(q, k, v, block_size), -1)


class DynamicMaskGate(nn.Module):
    """TDMA's value projection of one layer: per-key scores ``z`` and key-block shares ``[B, H, nb]``."""

    def __init__(self, heads: int, head_dim: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.w = nn.Parameter(torch.randn(heads, head_dim) / math.sqrt(head_dim))
        self.A = nn.Parameter(torch.ones(heads))

    def scores(self, v: Tensor) -> Tensor:
        """``z = softplus(v·w_h)·A_h``, ``[B, H, S]``."""
        z = F.softplus(torch.einsum("bhsd,hd->bhs", v.detach().to(self.w), self.w))
        return z * self.A[:, None]

    def logits(self, q: Optional[Tensor], k: Optional[Tensor], v: Tensor, block_size: int) -> Tensor:
        z = self.scores(v)
        nb = math.ceil(z.shape[-1] / block_size)
        z = F.pad(z, (0, nb * block_size - z.shape[-1]), value=-math.inf).unflatten(-1, (nb, block_size))
        return z.logsumexp(-1)

    def forward(self, q: Optional[Tensor], k: Optional[Tensor], v: Tensor, block_size: int) -> Tensor:
        return torch.softmax(self.logits(q, k, v, block_size), -1)


class LearnedGates(DynamicAttention):
    """A dynamic method with one trainable gate per self-attention layer (``gates``)."""

    target_kind = "tiles"

    def __init__(self, gates: nn.ModuleList, density: Optional[float], dense_steps: int) -> None:
        super().__init__(dense_steps)
        if density is not None:
            check_range(density, "density", 0.0, 1.0, low_open=True)
        self.density = density
        self.gates = gates

    def check_model(self, model: nn.Module) -> None:
        """``ValueError`` unless ``model`` has one self-attention layer per gate, with the gates' heads."""
        from .models import attention_layers, num_heads
        layers, heads = len(attention_layers(model)), num_heads(model)
        if layers != len(self.gates):
            raise ValueError(f"layers: {self.name} has {len(self.gates)} gates, {type(model).__name__} has "
                             f"{layers} self-attention layers")
        if heads != self.gates[0].heads:
            raise ValueError(f"heads: {self.name}'s gates have {self.gates[0].heads} heads, the model {heads}")

    def gate(self, layer: int, q: Tensor) -> nn.Module:
        if not 0 <= layer < len(self.gates):
            raise ValueError(f"layers: {self.name} has {len(self.gates)} gates, called for layer {layer}")
        g = self.gates[layer]
        if q.shape[1] != g.heads or q.shape[-1] != g.head_dim:
            raise ValueError(f"heads: layer {layer}'s gate takes {g.heads} heads × {g.head_dim}, got "
                             f"{q.shape[1]} × {q.shape[-1]}")
        if next(g.parameters()).device != q.device:
            g.to(q.device)
        return g

    def predict(self, layer: int, q: Tensor, k: Tensor, v: Tensor, block_size: int) -> Tensor:
        """The gate's block distribution (with grad)."""
        return self.gate(layer, q)(q, k, v, block_size)

    def distill_loss(self, layer: int, q: Tensor, k: Tensor, v: Tensor, scale: Optional[float],
                     block_size: int) -> Tensor:
        """``KL(target ‖ prediction)`` averaged over rows (gradient to the gate only)."""
        tiles, mass = dense_block_targets(q, k, scale, block_size)
        target = tiles if self.target_kind == "tiles" else mass
        logp = torch.log_softmax(self.gate(layer, q).logits(q, k, v, block_size), -1)
        return F.kl_div(logp, target.to(logp), reduction="none").sum(-1).mean()

    def keep(self, nb: int) -> int:
        return max(1, math.ceil(self.density * nb - 1e-9))


class SeerAttention(LearnedGates):
    """SeerAttention (see the module): a :class:`SeerGate` per layer; top ``density`` of the key
    blocks per query block (default 0.5), or the blocks of predicted probability above ``threshold``."""

    name = "seer"

    def __init__(self, layers: int, heads: int, head_dim: int, density: Optional[float] = None,
                 threshold: Optional[float] = None, gate_dim: int = 32, dense_steps: int = 0) -> None:
        for value, what in ((layers, "layers"), (heads, "heads"), (head_dim, "head_dim"), (gate_dim, "gate_dim")):
            check_int(value, what, minimum=1)
        if density is not None and threshold is not None:
            raise ValueError("density and threshold: give one of them, not both")
        if threshold is not None:
            check_range(threshold, "threshold", 0.0, 1.0)
        elif density is None:
            density = 0.5
        super().__init__(nn.ModuleList(SeerGate(heads, head_dim, gate_dim) for _ in range(layers)), density,
                         dense_steps)
        self.threshold = threshold

    @torch.no_grad()
    def select(self, layer: int, q: Tensor, k: Tensor, v: Tensor, scale: Optional[float], layout: TokenLayout,
               block_size: int) -> Tensor:
        p = self.predict(layer, q, k, v, block_size)
        if self.threshold is not None:
            return p > self.threshold
        return top_blocks(p, torch.tensor(self.keep(p.shape[-1]), device=p.device))


class TrainableDynamicMask(LearnedGates):
    """Trainable Dynamic Mask Attention (see the module): a :class:`DynamicMaskGate` per layer,
    the ``density`` top key blocks per head; ``bias=True`` adds ``z`` to the kept logits."""

    name = "tdma"
    target_kind = "mass"

    def __init__(self, layers: int, heads: int, head_dim: int, density: float = 0.5, bias: bool = False,
                 dense_steps: int = 0) -> None:
        for value, what in ((layers, "layers"), (heads, "heads"), (head_dim, "head_dim")):
            check_int(value, what, minimum=1)
        super().__init__(nn.ModuleList(DynamicMaskGate(heads, head_dim) for _ in range(layers)), density,
                         dense_steps)
        self.bias = bool(bias)

    @torch.no_grad()
    def select(self, layer: int, q: Tensor, k: Tensor, v: Tensor, scale: Optional[float], layout: TokenLayout,
               block_size: int) -> Tensor:
        p = self.predict(layer, q, k, v, block_size)  # [B, H, nb]
        nb = p.shape[-1]
        return top_blocks(p, torch.tensor(self.keep(nb), device=p.device))[..., None, :].expand(-1, -1, nb, -1)

    def attend(self, layer: int, q: Tensor, k: Tensor, v: Tensor, scale: Optional[float], layout: TokenLayout,
               block_size: int) -> Tensor:
        if not self.bias:
            return super().attend(layer, q, k, v, scale, layout, block_size)
        masks = safe_mask(self.select(layer, q, k, v, scale, layout, block_size), layout, block_size)
        self.record(mask_density(masks, q.shape[2], block_size))
        with torch.no_grad():
            z = self.gate(layer, q).scores(v).to(q.dtype)
        s = q.shape[2]
        allowed = masks.repeat_interleave(block_size, -1).repeat_interleave(block_size, -2)[..., :s, :s]
        bias = torch.where(allowed, z[:, :, None, :], torch.tensor(-math.inf, dtype=q.dtype, device=q.device))
        return _sdpa(q, k, v, attn_mask=bias, scale=scale)
