"""STA-style 3D token tiling: reorder the video tokens so each attention block is a 3D box.

In frame-major order (:mod:`.layout`) a block of ``b`` consecutive tokens is a strip of
``b / W`` rows of one frame, so a local 3D window (``diagonal(t=..,h=..,w=..)``) or a
multi-diagonal reaches keys in almost every block. Sliding Tile Attention (Zhang et al.,
2025, "Fast Video Generation with Sliding Tile Attention", arXiv:2502.04507) instead orders
the tokens tile by tile: with a tile ``(T_t, T_h, T_w)`` the video is cut into
``⌈F/T_t⌉ × ⌈H/T_h⌉ × ⌈W/T_w⌉`` boxes, token ``(t, y, x)`` lies in tile
``(t // T_t, y // T_h, x // T_w)``, tiles are numbered frame-major over the tile grid and the
tokens inside a tile frame-major too. When ``T_t·T_h·T_w`` is a multiple of the block size
(and the tiles divide the video) every block is one or several whole tiles, and a 3D window
of radius ``r`` keeps only the blocks of the tiles within ``⌈r / T⌉`` tiles per axis.

Tiles that do not divide ``F``, ``H`` or ``W`` are cut short at the far edges (partial tiles,
with fewer tokens); the order stays a bijection. Text tokens keep their positions (they are
dense in every pattern). The permutation ``perm`` maps tiled sequence positions to original
ones: ``x_tiled = x[perm]`` and ``x = x_tiled[inv]`` with ``inv = argsort(perm)``; the block
mask of a pattern in tiled order is :func:`.patterns.block_mask` with ``tile=``.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor

from .layout import TokenLayout

Tile = Tuple[int, int, int]


def check_tile(tile: "Optional[Sequence[int]]") -> Optional[Tile]:
    """``None`` or a ``(t, h, w)`` tuple of three positive ints (a list, e.g. from JSON, is
    accepted); ``ValueError`` naming ``tile`` otherwise."""
    if tile is None:
        return None
    if not isinstance(tile, (tuple, list)) or len(tile) != 3 or any(
            isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in tile):
        raise ValueError(f"tile must be None or three positive ints (frames, height, width) like (2, 4, 4), "
                         f"got {tile!r}")
    return (int(tile[0]), int(tile[1]), int(tile[2]))


@lru_cache(maxsize=64)
def _orders(layout: TokenLayout, tile: Tile) -> Tuple[Tensor, Tensor]:
    f, h, w = layout.frames, layout.height, layout.width
    tt, th, tw = tile
    t, y, x = torch.meshgrid(torch.arange(f), torch.arange(h), torch.arange(w), indexing="ij")
    gh, gw = -(-h // th), -(-w // tw)
    tile_id = ((t // tt) * gh + y // th) * gw + x // tw
    inside = ((t % tt) * th + y % th) * tw + x % tw
    key = (tile_id * (tt * th * tw) + inside).flatten()  # distinct per token: sorting gives the order
    order = torch.argsort(key)
    perm = torch.arange(layout.total)
    start = layout.video_start
    perm[start:start + layout.video] = start + order
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(layout.total)
    return perm, inv


def tile_permutation(layout: TokenLayout, tile: "Sequence[int]") -> Tensor:
    """``perm[i]``: the original sequence position of the token at tiled position ``i``
    (text positions map to themselves); a new ``int64`` tensor of length ``layout.total``."""
    return _orders(layout, check_tile(tile))[0].clone()


def tile_inverse(layout: TokenLayout, tile: "Sequence[int]") -> Tensor:
    """``inv[j]``: the tiled position of original position ``j`` (``inv[perm] = arange``)."""
    return _orders(layout, check_tile(tile))[1].clone()


def to_tiled(x: Tensor, layout: TokenLayout, tile: "Sequence[int]", dim: int = 2) -> Tensor:
    """``x`` (``S`` along ``dim``) in tiled order; ``index_select``, so differentiable."""
    perm = _orders(layout, check_tile(tile))[0]
    return x.index_select(dim, perm.to(x.device))


def from_tiled(x: Tensor, layout: TokenLayout, tile: "Sequence[int]", dim: int = 2) -> Tensor:
    """Inverse of :func:`to_tiled`."""
    inv = _orders(layout, check_tile(tile))[1]
    return x.index_select(dim, inv.to(x.device))
