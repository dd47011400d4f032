"""Multiresolution hash encoding (Instant-NGP) with a saliency gate and entry removal.

Müller et al., 2022, "Instant Neural Graphics Primitives with a Multiresolution Hash
Encoding" (https://arxiv.org/abs/2201.05989). A point ``x ∈ [0, 1]^d`` (d = 2 or 3) is encoded
at ``L`` levels of resolution ``N_l = ⌊N_min · b^l⌋``, ``b = exp((ln N_max − ln N_min)/(L − 1))``.
At level ``l`` the point falls in the cell with corners ``⌊x·N_l⌋ + {0, 1}^d``; each of the
``2^d`` corners ``c`` indexes a table of ``F``-dimensional features:

- densely, ``i = Σ_k c_k (N_l + 1)^k``, when the ``(N_l + 1)^d`` vertices fit in ``T``
  entries (collision-free; the level's table then has ``(N_l + 1)^d`` entries);
- else by the spatial hash ``h(c) = (⊕_k c_k π_k) mod T`` with ``π = (1, 2654435761,
  805459861)`` (products taken modulo 2^32, as in the paper's uint32 arithmetic).

The level's feature is the d-linear interpolation ``Σ_c w_c(x) θ_l[i(c)]`` with
``w_c = Π_k (f_k if c_k is the upper corner else 1 − f_k)``, ``f = x·N_l − ⌊x·N_l⌋``; the
encoding concatenates the ``L`` levels (``L·F`` values).

Saliency gate (Xie et al., 2023, "HollowNeRF: Pruning Hashgrid-Based NeRFs with Trainable
Collision Mitigation", https://arxiv.org/abs/2308.10122): a coarse grid of logits ``G`` with
``R`` vertices per axis; the encoding is multiplied by ``s(x) = Σ_c w_c(x) σ(G[c])``, σ(G)
sampled d-linearly. Points with ``s ≈ 0`` no longer write into the hash table, so they stop
colliding with salient ones, and entries only they touch can be removed
(:mod:`.hashgrid_admm` drives ``‖σ(G)‖₁`` to a budget).

Removal (:meth:`HashEncoding.remove_entries`) really shrinks storage: a level keeps only its
kept rows plus a bitmap of ``n_l`` bits and a rank (kept entries before each 32-bit word,
int32): 2 bits of index per original entry. A removed entry reads as zero, exactly what hard
masking made it, so the output does not change. A compacted state dict loads into a fresh
(dense) encoding of the same configuration: the layout follows the tensors.
"""
from __future__ import annotations

import itertools
import math
from typing import Any, Dict, Optional, Sequence

import torch
from torch import Tensor, nn

from sparsity_core.ops import replace_parameter, select_rows
from sparsity_core.validation import check_int

PRIMES = (1, 2654435761, 805459861)
_U32 = 0xFFFFFFFF


def vertex_index(c: Sequence[Tensor], strides: Optional[Sequence[int]], table_size: int) -> Tensor:
    """Table index of integer vertices given per axis (``c[k]``: k-th coordinates): dense
    ``Σ_k c_k·strides_k`` when ``strides`` is given, else ``(⊕_k c_k π_k mod 2^32) mod T``."""
    if strides is not None:
        out = c[0] * strides[0]
        for k in range(1, len(c)):
            out = out + c[k] * strides[k]
        return out
    out = c[0] * PRIMES[0]
    for k in range(1, len(c)):
        out = out ^ ((c[k] * PRIMES[k]) & _U32)
    return out % table_size


def lookup(xt: Tensor, res: int, strides: Optional[Sequence[int]], table_size: int):
    """Indices and d-linear weights ``[2^d, B]`` of the ``2^d`` corners of the cells holding
    the points ``xt [d, B]`` (coordinate-major, in ``[0, 1]``) on a grid of ``res`` cells per axis."""
    pos = xt * res
    base = pos.floor().clamp_(0, max(res - 1, 0))
    frac = pos - base
    base = base.long()
    idx, w = [], []
    for corner in itertools.product((0, 1), repeat=xt.shape[0]):
        idx.append(vertex_index([base[k] + o for k, o in enumerate(corner)], strides, table_size))
        wc = frac[0] if corner[0] else 1.0 - frac[0]
        for k in range(1, len(corner)):
            wc = wc * (frac[k] if corner[k] else 1.0 - frac[k])
        w.append(wc)
    return torch.stack(idx), torch.stack(w)


def popcount32(v: Tensor) -> Tensor:
    """Set bits of int64 values in ``[0, 2^32)`` (SWAR popcount)."""
    v = v - ((v >> 1) & 0x55555555)
    v = (v & 0x33333333) + ((v >> 2) & 0x33333333)
    v = (v + (v >> 4)) & 0x0F0F0F0F
    return ((v * 0x01010101) & _U32) >> 24


def pack_bits(mask: Tensor):
    """A bool vector as int32 words (bit j of word k = entry 32k + j) and the exclusive
    prefix count of set bits before each word."""
    n = mask.numel()
    padded = torch.zeros(-(-n // 32) * 32, dtype=torch.long)
    padded[:n] = mask.long()
    bits = padded.view(-1, 32)
    words = (bits << torch.arange(32)).sum(1)
    rank = torch.cumsum(bits.sum(1), 0) - bits.sum(1)
    return torch.where(words >= 2 ** 31, words - 2 ** 32, words).to(torch.int32), rank.to(torch.int32)


class SaliencyGrid(nn.Module):
    """Coarse grid of logits ``G`` (``resolution`` vertices per axis over ``[0, 1]^d``,
    ``G[i, j(, k)]`` at ``x = (i, j(, k)) / (resolution − 1)``); ``forward(x)`` is
    ``Σ_c w_c(x) σ(G[c])`` (HollowNeRF's gate: σ(G) sampled d-linearly)."""

    def __init__(self, dim: int, resolution: int, init_logit: float = 2.0) -> None:
        super().__init__()
        check_int(resolution, "saliency resolution (vertices per axis)", 2)
        self.dim, self.resolution = dim, resolution
        self.logits = nn.Parameter(torch.full((resolution,) * dim, float(init_logit)))
        self._strides = [resolution ** (dim - 1 - k) for k in range(dim)]  # row-major

    def sample(self, xt: Tensor) -> Tensor:
        """``s`` at points ``xt [d, B]`` (coordinate-major, clamped to ``[0, 1]``)."""
        idx, w = lookup(xt, self.resolution - 1, self._strides, 0)
        values = torch.index_select(torch.sigmoid(self.logits.reshape(-1)), 0, idx.reshape(-1))
        return (w * values.view(idx.shape)).sum(0)

    def forward(self, x: Tensor) -> Tensor:
        return self.sample(x.reshape(-1, self.dim).clamp(0.0, 1.0).T).reshape(x.shape[:-1])

    def mass(self) -> Tensor:
        """``‖σ(G)‖₁``, the quantity the ADMM pruner constrains."""
        return torch.sigmoid(self.logits).sum()


class HashEncoding(nn.Module):
    """``x [..., d] ∈ [0, 1]^d -> [..., L·F]`` multiresolution hash encoding.

    Args:
        dim: 2 or 3 input coordinates.
        levels: ``L``.
        log2_table_size: ``T = 2^log2_table_size`` entries per hashed level.
        table_size: ``T`` given directly (any int >= 1; overrides ``log2_table_size``), e.g. to
            match another encoding's parameter count; the hash is taken modulo ``T``.
        features: ``F`` features per entry.
        base_resolution, max_resolution: ``N_min`` and ``N_max`` (``N_{L−1} = ⌊N_max⌋``).
        saliency_resolution: vertices per axis of the HollowNeRF saliency grid (``None``: no
            gate); the gate starts at σ(2) ≈ 0.88 everywhere.
        init_scale: tables start uniform in ``[−init_scale, init_scale]`` (Instant-NGP: 1e-4).

    Each level's table is the parameter ``tables.<l>`` of shape ``[n_l, F]``; its rows are the
    hash entries (the units the pruner masks).
    """

    def __init__(self, dim: int = 3, levels: int = 16, log2_table_size: int = 19, features: int = 2,
                 base_resolution: int = 16, max_resolution: int = 2048, saliency_resolution: Optional[int] = None,
                 init_scale: float = 1e-4, table_size: Optional[int] = None) -> None:
        super().__init__()
        if dim not in (2, 3):
            raise ValueError(f"dim must be 2 or 3, got {dim!r}")
        check_int(levels, "levels", 1)
        check_int(log2_table_size, "log2_table_size", 1, 30)
        check_int(features, "features", 1)
        check_int(base_resolution, "base_resolution", 1)
        if max_resolution < base_resolution:
            raise ValueError(f"max_resolution ({max_resolution}) must be >= base_resolution ({base_resolution})")
        self.dim, self.levels, self.features = dim, levels, features
        self.table_size = 2 ** log2_table_size if table_size is None else check_int(table_size, "table_size", 1)
        self.growth = math.exp((math.log(max_resolution) - math.log(base_resolution)) / max(levels - 1, 1))
        # ⌊N_min·b^l⌋, with a tolerance so that N_{L−1} = N_max despite rounding
        self.resolutions = [int(math.floor(base_resolution * self.growth ** lv + 1e-6)) for lv in range(levels)]
        self.hashed = [(n + 1) ** dim > self.table_size for n in self.resolutions]
        self.sizes = [self.table_size if h else (n + 1) ** dim for n, h in zip(self.resolutions, self.hashed)]
        self.tables = nn.ParameterList(
            [nn.Parameter(torch.empty(n, features).uniform_(-init_scale, init_scale)) for n in self.sizes])
        self.saliency = SaliencyGrid(dim, saliency_resolution) if saliency_resolution is not None else None
        self._strides = [None if h else [(n + 1) ** k for k in range(dim)]
                         for n, h in zip(self.resolutions, self.hashed)]
        self.record_usage = False
        self.usage_from_forward = True
        self._usage: Dict[int, Tensor] = {}

    @property
    def output_dim(self) -> int:
        return self.levels * self.features

    def compacted(self, level: int) -> bool:
        return hasattr(self, f"bitmap_{level}")

    # -- indexing -------------------------------------------------------------------------
    def index(self, level: int, c: Tensor) -> Tensor:
        """Table index of integer vertices ``c [..., d]`` at ``level`` (dense or hashed)."""
        return vertex_index(c.unbind(-1), self._strides[level], self.table_size)

    def _gather(self, level: int, idx: Tensor) -> Tensor:
        """Rows ``[*idx.shape, F]`` of the level's table (zeros for removed entries)."""
        table = self.tables[level]
        flat = idx.reshape(-1)
        if self.compacted(level):
            words, rank = getattr(self, f"bitmap_{level}"), getattr(self, f"rank_{level}")
            word = words[flat >> 5].long() & _U32
            bit = flat & 31
            present = ((word >> bit) & 1).bool()
            if table.shape[0] == 0:
                return table.new_zeros(*idx.shape, self.features)
            row = rank[flat >> 5].long() + popcount32(word & ((1 << bit) - 1))
            rows = torch.index_select(table, 0, torch.where(present, row, 0))
            return (rows * present.unsqueeze(1)).view(*idx.shape, self.features)
        return torch.index_select(table, 0, flat).view(*idx.shape, self.features)

    # -- forward --------------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.dim:
            raise ValueError(f"expected coordinates with last dimension {self.dim}, got shape {tuple(x.shape)}")
        lead = x.shape[:-1]
        xt = x.reshape(-1, self.dim).clamp(0.0, 1.0).T.contiguous()
        gate = self.saliency.sample(xt) if self.saliency is not None else None
        out = []
        for lv in range(self.levels):
            idx, w = lookup(xt, self.resolutions[lv], self._strides[lv], self.table_size)
            out.append((self._gather(lv, idx) * w.unsqueeze(-1)).sum(0))
            if self.record_usage and self.training and self.usage_from_forward:
                self._record(lv, idx, w if gate is None else w * gate.detach())
        feats = torch.cat(out, -1)
        if gate is not None:
            feats = feats * gate.unsqueeze(-1)
        return feats.reshape(*lead, self.output_dim)

    @torch.no_grad()
    def _record(self, level: int, idx: Tensor, weight: Tensor) -> None:
        buf = self._usage.get(level)
        if buf is None or buf.numel() != self.sizes[level]:
            buf = self._usage[level] = torch.zeros(self.sizes[level], device=idx.device)
        buf.index_add_(0, idx.reshape(-1), weight.reshape(-1).to(buf.dtype))

    @torch.no_grad()
    def record_points(self, x: Tensor, weights: Tensor) -> None:
        """Record the usage of points ``x [P, d]`` (in ``[0, 1]``) with per-point ``weights [P]``
        given by the caller (e.g. each sample's rendering weight), for an owner that sets
        ``usage_from_forward = False``: an entry's usage is then ``Σ_x weight(x)·s(x)·w_e(x)``.
        Records only while ``record_usage`` is on."""
        if not self.record_usage:
            return
        if x.dim() != 2 or x.shape[-1] != self.dim or tuple(weights.shape) != (x.shape[0],):
            raise ValueError(f"need points [P, {self.dim}] and weights [P], got {tuple(x.shape)} and "
                             f"{tuple(weights.shape)}")
        xt = x.clamp(0.0, 1.0).T.contiguous()
        if self.saliency is not None:
            weights = weights * self.saliency.sample(xt)
        for lv in range(self.levels):
            idx, w = lookup(xt, self.resolutions[lv], self._strides[lv], self.table_size)
            self._record(lv, idx, w * weights)

    def take_usage(self, level: int) -> Optional[Tensor]:
        """Saliency-weighted usage ``Σ_x s(x)·w_e(x)`` of every entry of ``level`` recorded by
        training forwards since the last call (``None`` if none), and reset it."""
        return self._usage.pop(level, None)

    # -- removal --------------------------------------------------------------------------
    @torch.no_grad()
    def remove_entries(self, masks: Sequence[Optional[Tensor]], optimizers: Any = ()) -> Dict[str, float]:
        """Keep only the entries where ``masks[l]`` is True (``None``: keep the level as is).

        Validates every mask first (nothing changes on error). The output afterwards equals
        the output with the removed rows zeroed. Each compacted table is a new parameter:
        ``optimizers`` (one or several) holding the old table get the new one in the same
        ``param_groups`` slot with the kept rows of its state (Adam moments), see
        :func:`sparsity_core.ops.replace_parameter`; optimizers not passed keep stepping the
        old tables. Returns :meth:`storage`.
        """
        if len(masks) != self.levels:
            raise ValueError(f"need one mask per level ({self.levels}), got {len(masks)}")
        for lv, m in enumerate(masks):
            if m is None:
                continue
            if self.compacted(lv):
                raise ValueError(f"level {lv} was already compacted; entries can be removed once")
            if m.dtype != torch.bool or tuple(m.shape) != (self.sizes[lv],):
                raise ValueError(f"mask of level {lv} must be bool of shape ({self.sizes[lv]},), got "
                                 f"{m.dtype} {tuple(m.shape)}")
        for lv, m in enumerate(masks):
            if m is None or bool(m.all()):
                continue
            m = m.to(self.tables[lv].device)
            keep = select_rows(m)
            self._make_compact(lv, keep(self.tables[lv].detach()), optimizers, keep)
            words, rank = pack_bits(m.cpu())
            getattr(self, f"bitmap_{lv}").copy_(words)
            getattr(self, f"rank_{lv}").copy_(rank)
        self._usage.clear()
        return self.storage()

    def _make_compact(self, level: int, table: Tensor, optimizers: Any = (), remap=None) -> None:
        """Install ``table`` (kept rows) as the level's parameter and add its bitmap and rank
        buffers (filled by the caller)."""
        old = self.tables[level]
        replace_parameter(self, f"tables.{level}", table, optimizers, remap)
        nwords = -(-self.sizes[level] // 32)
        if not self.compacted(level):
            self.register_buffer(f"bitmap_{level}", torch.zeros(nwords, dtype=torch.int32, device=old.device))
            self.register_buffer(f"rank_{level}", torch.zeros(nwords, dtype=torch.int32, device=old.device))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs) -> None:
        """A compacted checkpoint loads into a dense encoding (and a dense one into a compacted
        encoding): each level takes the layout its tensors have."""
        for lv in range(self.levels):
            table = state_dict.get(f"{prefix}tables.{lv}")
            if table is None:
                continue
            if f"{prefix}bitmap_{lv}" in state_dict:
                old = self.tables[lv]
                self._make_compact(lv, old.new_zeros(int(table.shape[0]), self.features))
            elif self.compacted(lv):
                delattr(self, f"bitmap_{lv}")
                delattr(self, f"rank_{lv}")
                old = self.tables[lv]
                self.tables[lv] = nn.Parameter(old.new_zeros(self.sizes[lv], self.features))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    # -- accounting -----------------------------------------------------------------------
    def storage(self) -> Dict[str, float]:
        """Entries and parameters of the hash tables (dense and stored), index bytes of the
        compacted levels, saliency parameters, and total bytes of everything stored."""
        entries = sum(self.sizes)
        kept = sum(int(t.shape[0]) for t in self.tables)
        index_bytes = sum(getattr(self, f"{k}_{lv}").numel() * 4 for lv in range(self.levels) if self.compacted(lv)
                          for k in ("bitmap", "rank"))
        sal = self.saliency.logits.numel() if self.saliency is not None else 0
        elem = self.tables[0].element_size()
        return {"entries": entries, "entries_kept": kept, "params_dense": entries * self.features,
                "params_kept": kept * self.features, "kept_fraction": kept / entries, "index_bytes": index_bytes,
                "saliency_params": sal, "bytes": (kept * self.features + sal) * elem + index_bytes}

    def extra_repr(self) -> str:
        dense = sum(not h for h in self.hashed)
        return (f"dim={self.dim}, levels={self.levels}, T={self.table_size}, F={self.features}, "
                f"N={self.resolutions[0]}..{self.resolutions[-1]} (b={self.growth:.4f}), dense levels={dense}")

