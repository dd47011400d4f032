"""Static sparse-attention patterns of video diffusion transformers, as block masks.

Sparse-vDiT (Chen et al., 2025, arXiv:2506.03065) and Sparse VideoGen (Xi et al., 2025,
arXiv:2502.01776) observe that most heads of a video DiT attend in a few recurring shapes;
STA (Zhang et al., 2025, arXiv:2502.04507) uses 3D windows. With tokens at ``(t, y, x)``
(see :mod:`.layout`), a query ``q`` may attend a key ``k`` under

* ``dense``: always;
* ``diagonal(t=0, h=∞, w=∞)``: ``|t_q−t_k| ≤ t ∧ |y_q−y_k| ≤ h ∧ |x_q−x_k| ≤ w`` (a spatial
  window within the frame, widened to ``±t`` frames: a band around the main diagonal);
* ``multidiagonal(h=0, w=0)``: ``|y_q−y_k| ≤ h ∧ |x_q−x_k| ≤ w`` in every frame (the same
  spatial neighbourhood across frames: diagonals at multiples of the frame length);
* ``stripe(f=1, n=f·H·W)``: ``k`` among the first ``n`` video tokens (sink / global tokens:
  vertical stripes);
* ``a+b``: the union.

Text tokens are dense in every pattern (their rows and columns are always kept). A pattern
is written as a spec string, e.g. ``"diagonal(h=2,w=2)+stripe(f=1)"``, parsed by a strict
grammar (never evaluated). The attention kernel works on ``block_size × block_size`` blocks:
block ``(i, j)`` is kept iff some token pair in it is allowed; a sequence whose length is
not a multiple of the block size has a shorter last block (its tail is never computed).
With a ``tile`` (STA's 3D tiles, :mod:`.tiling`) the blocks are taken over the tokens in
tiled order: block ``(i, j)`` is kept iff some pair ``(perm[a], perm[b])`` with ``a`` in
block ``i`` and ``b`` in block ``j`` is allowed.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Dict, Tuple

import torch
from torch import Tensor

from sparsity_core.validation import check_int

from .layout import TokenLayout
from .tiling import Tile, _orders, check_tile

#: parameters each pattern kind accepts, with their defaults (``None``: unbounded / derived)
PATTERN_KINDS: Dict[str, Dict[str, object]] = {
    "dense": {},
    "diagonal": {"t": 0, "h": None, "w": None},
    "multidiagonal": {"h": 0, "w": 0},
    "stripe": {"f": 1, "n": None},
}

_PART = re.compile(r"^([a-z]+)(?:\(([^()]*)\))?$")
_PARAM = re.compile(r"^([a-z])=(\d{1,7})$")


@dataclass(frozen=True)
class Pattern:
    """A union of pattern parts, each ``(kind, ((param, value), ...))`` with its defaults filled."""

    parts: Tuple[Tuple[str, Tuple[Tuple[str, object], ...]], ...]

    @classmethod
    def parse(cls, spec: "str | Pattern") -> "Pattern":
        """The pattern of ``spec`` (see the module); ``ValueError`` naming the valid kinds."""
        if isinstance(spec, Pattern):
            return spec
        if not isinstance(spec, str) or not spec.strip():
            raise ValueError(f"a pattern is a non-empty spec string like 'diagonal(h=2,w=2)+stripe', got {spec!r}")
        parts = []
        for raw in spec.replace(" ", "").split("+"):
            m = _PART.match(raw)
            if m is None or m.group(1) not in PATTERN_KINDS:
                name = m.group(1) if m else raw
                raise ValueError(f"unknown attention pattern {name!r} in {spec!r}; valid: {sorted(PATTERN_KINDS)}")
            kind, params = m.group(1), dict(PATTERN_KINDS[m.group(1)])
            for item in filter(None, (m.group(2) or "").split(",")):
                pm = _PARAM.match(item)
                if pm is None or pm.group(1) not in params:
                    raise ValueError(f"pattern {kind!r} takes integer parameters {sorted(params)} (like "
                                     f"{kind}({','.join(f'{p}=1' for p in params)})), got {item!r} in {spec!r}")
                params[pm.group(1)] = int(pm.group(2))
            parts.append((kind, tuple(sorted(params.items()))))
        return cls(tuple(sorted(set(parts))))

    def __str__(self) -> str:
        out = []
        for kind, params in self.parts:
            args = ",".join(f"{k}={v}" for k, v in params if v is not None and v != PATTERN_KINDS[kind][k])
            out.append(f"{kind}({args})" if args else kind)
        return "+".join(out)

    @property
    def is_dense(self) -> bool:
        return any(kind == "dense" for kind, _ in self.parts)

    def allowed(self, layout: TokenLayout, q_pos: Tensor, k_pos: Tensor) -> Tensor:
        """Token-level mask ``[len(q_pos), len(k_pos)]``: may query ``q_pos[i]`` attend key ``k_pos[j]``."""
        qt, qtt, qy, qx = (c[:, None] for c in layout.coords(q_pos))
        kt, ktt, ky, kx = (c[None, :] for c in layout.coords(k_pos))
        out = qt | kt
        for kind, params in self.parts:
            p = dict(params)
            if kind == "dense":
                return torch.ones(len(q_pos), len(k_pos), dtype=torch.bool)
            if kind == "diagonal":
                h = layout.height if p["h"] is None else p["h"]
                w = layout.width if p["w"] is None else p["w"]
                out = out | (((qtt - ktt).abs() <= p["t"]) & ((qy - ky).abs() <= h) & ((qx - kx).abs() <= w))
            elif kind == "multidiagonal":
                out = out | (((qy - ky).abs() <= p["h"]) & ((qx - kx).abs() <= p["w"]))
            elif kind == "stripe":
                n = p["f"] * layout.frame_tokens if p["n"] is None else p["n"]
                video_index = ktt * layout.frame_tokens + ky * layout.width + kx
                out = out | ((video_index < n) & ~kt)
        return out


def check_block_size(block_size: int, layout: TokenLayout) -> int:
    """A block size in ``[1, sequence length]``."""
    check_int(block_size, "block_size", minimum=1)
    if block_size > layout.total:
        raise ValueError(f"block_size {block_size} is larger than the sequence ({layout.total} tokens: "
                         f"{layout.frames}×{layout.height}×{layout.width} video + {layout.text} text)")
    return int(block_size)


def _dilate(grid: Tensor, axis: int, radius: "int | None") -> Tensor:
    """Max over ``±radius`` along ``axis`` of ``grid`` ``[nb, F, H, W]`` (``None``: the whole axis)."""
    size = grid.shape[axis]
    if radius is None or radius >= size - 1:
        return grid.amax(axis, keepdim=True).expand_as(grid)
    if radius == 0:
        return grid
    moved = grid.movedim(axis, -1)
    flat = moved.reshape(-1, 1, size)
    out = torch.nn.functional.max_pool1d(flat, 2 * radius + 1, stride=1, padding=radius)
    return out.reshape(moved.shape).movedim(-1, axis)


def _reach(kind: str, p: Dict[str, object], grid: Tensor, layout: TokenLayout) -> Tensor:
    """``[nb, video]``: video keys some query video token of each block may attend under one part."""
    nb = grid.shape[0]
    if kind == "diagonal":
        out = _dilate(_dilate(_dilate(grid, 1, p["t"]), 2, p["h"]), 3, p["w"])
    elif kind == "multidiagonal":
        out = _dilate(_dilate(_dilate(grid, 1, None), 2, p["h"]), 3, p["w"])
    else:  # stripe: the first n video keys, for any block holding a video query
        n = p["f"] * layout.frame_tokens if p["n"] is None else p["n"]
        keys = (torch.arange(layout.video) < n).to(grid.dtype)
        return grid.reshape(nb, -1).amax(1, keepdim=True) * keys[None, :]
    return out.reshape(nb, -1)


@lru_cache(maxsize=256)
def _block_mask(pattern: Pattern, layout: TokenLayout, block_size: int, tile: "Tile | None" = None) -> Tensor:
    """Block pooling of :meth:`Pattern.allowed` without the ``S²`` token mask: the video keys
    reachable from a block's queries are its query grid dilated per axis (max pooling). With
    a tile, the query grid of block ``i`` marks the original tokens ``perm[a]`` of its tiled
    positions ``a``, and the reached keys are moved to their tiled positions ``inv[·]``."""
    s, bs = layout.total, block_size
    nb = math.ceil(s / bs)
    if pattern.is_dense:
        return torch.ones(nb, nb, dtype=torch.bool)
    pos = torch.arange(s)
    is_text = layout.coords(pos)[0]  # text stays in place under tiling
    perm, inv = _orders(layout, tile) if tile is not None else (pos, pos)
    grid = torch.zeros(nb, layout.video)
    video = (~is_text).nonzero().flatten()  # sequence positions holding video tokens
    grid[video // bs, perm[video] - layout.video_start] = 1.0
    grid = grid.view(nb, layout.frames, layout.height, layout.width)
    keys = torch.zeros(nb, nb * bs)
    key_pos = inv[layout.video_start:layout.video_start + layout.video]  # video token -> its position
    for kind, params in pattern.parts:
        keys[:, key_pos] += _reach(kind, dict(params), grid, layout)
    keys[:, :s][:, is_text] = 1.0  # every query reaches text keys
    out = keys.view(nb, nb, bs).amax(2) > 0
    text_rows = torch.nn.functional.pad(is_text, (0, nb * bs - s)).view(nb, bs).any(1)
    out[text_rows] = True  # text queries reach everything
    return out


def block_mask(pattern: "str | Pattern", layout: TokenLayout, block_size: int,
               tile: "Tile | None" = None) -> Tensor:
    """``[nb, nb]`` bool block mask of ``pattern`` with ``nb = ⌈S / block_size⌉`` (a new
    tensor), over the tokens in STA tiled order when ``tile = (t, h, w)`` is given."""
    return _block_mask(Pattern.parse(pattern), layout, check_block_size(block_size, layout),
                       check_tile(tile)).clone()


def block_lengths(seq_len: int, block_size: int) -> Tensor:
    """Tokens in each block (the last one may be shorter)."""
    nb = math.ceil(seq_len / block_size)
    lengths = torch.full((nb,), block_size, dtype=torch.float64)
    lengths[-1] = seq_len - (nb - 1) * block_size
    return lengths


def density(mask: Tensor, seq_len: int, block_size: int) -> float:
    """Fraction of the ``S²`` query-key pairs the block mask computes (tail blocks weigh less)."""
    lengths = block_lengths(seq_len, block_size)
    return float((lengths[:, None] * mask.to(torch.float64) * lengths[None, :]).sum() / seq_len ** 2)
