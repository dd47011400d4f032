"""Hardware-aware cost of attention patterns, measured on the current machine.

The cost of running a head with pattern ``p`` is its measured time relative to dense
attention, ``c_p = t_p / t_dense`` for the layout, block size and head width at hand: the
kernel's overheads (gathers, per-run calls, short tails) make ``c_p`` differ from the block
density, which is what Sparse-vDiT's and STA's searches correct for with a measured cost.
With ``measure=False`` the cost is the block density (deterministic, for tests). With an STA
``tile`` the block masks are taken over the tokens in tiled order (:mod:`.tiling`; the
permutation, the same for every candidate, is not timed).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Dict, Optional, Sequence

import torch
import torch.nn.functional as F

from sparsity_core.validation import check_int

from .kernel import block_sparse_attention
from .layout import TokenLayout
from .patterns import Pattern, block_mask, density
from .tiling import Tile, check_tile


@dataclass
class AttentionCost:
    """Relative cost per pattern spec (dense = 1) and the dense time per head in seconds."""

    relative: Dict[str, float]
    dense_seconds: float = 0.0
    measured: bool = False
    densities: Dict[str, float] = field(default_factory=dict)

    def __call__(self, spec: str) -> float:
        return 1.0 if Pattern.parse(spec).is_dense else self.relative[str(Pattern.parse(spec))]


def _median_time(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def measure_costs(specs: Sequence[str], layout: TokenLayout, block_size: int, head_dim: int = 64, heads: int = 1,
                  measure: bool = True, repeats: int = 3, seed: int = 0,
                  tile: Optional[Sequence[int]] = None) -> AttentionCost:
    """:class:`AttentionCost` of ``specs`` (median of ``repeats`` timed forward calls over
    ``heads`` heads of width ``head_dim``, no grad), or the densities when ``measure=False``;
    measured once per process and configuration."""
    check_int(head_dim, "head_dim", minimum=1)
    check_int(repeats, "repeats", minimum=1)
    tile = check_tile(tile)
    key = (tuple(specs), layout, block_size, head_dim, heads, measure, repeats, tile)
    if key not in _MEASURED:
        _MEASURED[key] = _measure(specs, layout, block_size, head_dim, heads, measure, repeats, seed, tile)
    return _MEASURED[key]


#: costs measured in this process, per (specs, layout, block size, head width, heads, ...)
_MEASURED: Dict[tuple, AttentionCost] = {}


def _measure(specs: Sequence[str], layout: TokenLayout, block_size: int, head_dim: int, heads: int, measure: bool,
             repeats: int, seed: int, tile: Optional[Tile]) -> AttentionCost:
    s = layout.total
    masks = {str(Pattern.parse(p)): block_mask(p, layout, block_size, tile) for p in specs}
    dens = {p: density(m, s, block_size) for p, m in masks.items()}
    if not measure:
        return AttentionCost(dict(dens), 0.0, False, dens)
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(1, heads, s, head_dim, generator=g) for _ in range(3))
    with torch.no_grad():
        dense = _median_time(lambda: F.scaled_dot_product_attention(q, k, v), repeats)
        rel = {p: _median_time(lambda m=m: block_sparse_attention(q, k, v, m, block_size), repeats) / dense
               for p, m in masks.items()}
    return AttentionCost(rel, dense / heads, True, dens)
