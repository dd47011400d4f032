"""Front-to-back alpha compositing of the (tile, Gaussian) rows, with an analytic backward.

For a pixel centre ``p = (x + ½, y + ½)`` and the Gaussians ``i = 1..n`` of its tile in depth
order (3D Gaussian Splatting, Kerbl et al. 2023, https://arxiv.org/abs/2308.04079, eq. 3)::

    d = p − μ'_i,   σ_i = ½(a dx² + c dy²) + b dx dy          (conic (a, b, c) = Σ'⁻¹)
    α_i = min(0.999, o_i·exp(−σ_i)),  set to 0 when α_i < 1/255   (σ_i ≥ 0: conics are PD)
    T_i = ∏_{j<i} (1 − α_j),   w_i = α_i·T_i
    colour = Σ_i w_i c_i (+ T·background later),   alpha = Σ_i w_i = 1 − T

A pixel stops at the first Gaussian whose ``T_i(1 − α_i) ≤ 1e-4``; it and everything behind
it get ``w = 0`` (as gsplat's CUDA rasterizer). ``T`` is a segmented product over the rows of
a tile, computed as ``exp`` of a cumulative sum of ``log(1 − α)``: inside each block of
``ROW_BLOCK`` rows (a block never straddles two tiles, see :mod:`.render_tiles`) plus a
float64 scan of the block totals.

Backward (what autograd would derive, in a few fused array passes)::

    ∂L/∂w_i = Σ_d ∂L/∂colour_d · c_{i,d} + ∂L/∂alpha
    ∂L/∂α_i = ∂L/∂w_i · T_i − (Σ_{j>i} ∂L/∂w_j · w_j) / (1 − α_i)
    ∂L/∂σ_i = −α_i ∂L/∂α_i,  ∂L/∂o_i = Σ_p ∂L/∂α_i · α_i / o_i   (where 1/255 ≤ α_i < 0.999)
    ∂σ/∂μ'_x = −(a dx + b dy),  ∂σ/∂μ'_y = −(c dy + b dx),  ∂σ/∂(a, b, c) = (½dx², dx dy, ½dy²)

Arrays are [rows, pixels of a tile]; colour sums are small matrix products per block.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .render_project import ALPHA_THRESHOLD
from .render_tiles import ROW_BLOCK, TileRows

ALPHA_MAX = 0.999
T_MIN = 1e-4


class Composite(NamedTuple):
    colors: Tensor  # [C·T, s², D] per-tile pixels
    alphas: Tensor  # [C·T, s²]
    weights: Tensor  # [Mp, s²] blend weight w of each (padded) row at each pixel of its tile; no gradient


def composite_tiles(rows: TileRows, feats: Tensor, n_cameras: int, tile_size: int,
                    absgrad_of: Optional[Tensor] = None) -> Composite:
    """Composite ``feats`` [C·N, 6 + D] (``means2d`` 2, ``conics`` 3, opacity 1, colour D per
    (camera, Gaussian)) over the rows; differentiable in ``feats``.

    With ``absgrad_of`` (the ``means2d`` tensor [C, N, 2]) the backward pass also sets
    ``absgrad_of.absgrad = Σ_pixels |∂L_p/∂μ'|`` per axis, as gsplat's ``absgrad=True``
    (AbsGS, Ye et al. 2024, https://arxiv.org/abs/2404.10484)."""
    s, B = tile_size, ROW_BLOCK
    n_tiles = n_cameras * rows.tiles_x * rows.tiles_y
    tile = rows.block_key % (rows.tiles_x * rows.tiles_y)
    ox = ((tile % rows.tiles_x) * s).to(feats.dtype)[:, None].expand(-1, B).reshape(-1)
    oy = (torch.div(tile, rows.tiles_x, rounding_mode="floor") * s).to(feats.dtype)[:, None].expand(-1, B).reshape(-1)
    padded = torch.cat([feats, feats.new_zeros(1, feats.shape[1])])  # padding rows: opacity 0
    colors, alphas, weights = _CompositeRows.apply(padded.index_select(0, rows.pair), rows, ox, oy, n_tiles, s,
                                                   [absgrad_of])
    return Composite(colors=colors.permute(0, 2, 1), alphas=alphas, weights=weights)


def _blocks(x: Tensor) -> Tensor:
    return x.reshape(-1, ROW_BLOCK, x.shape[-1])


def _block_prefix(totals: Tensor, bound: Tensor, before: bool) -> Tensor:
    """Per block [nb, P]: the sum of the block totals of the same tile before it
    (``before``, ``bound`` = first block) or after it (``bound`` = last block); float64 scan."""
    incl = torch.cumsum(totals.to(torch.float64), dim=0)
    if before:
        excl = incl - totals
        return (excl - excl.index_select(0, bound)).to(totals.dtype)
    return (incl.index_select(0, bound) - incl).to(totals.dtype)


def _moment_matrix(s: int, like: Tensor) -> Tensor:
    """[s², 3s] 0/1 and coordinate columns: ``h @ Q`` gives, per row, Σ_y h[y, x] (x-columns),
    Σ_x h[y, x] (y-columns) and Σ_x h[y, x]·(x + ½) (y-columns) of ``h`` [M, s²]."""
    p = torch.arange(s * s, device=like.device)
    x, y = p % s, torch.div(p, s, rounding_mode="floor")
    cols = torch.arange(s, device=like.device)
    ix = (x[:, None] == cols).to(like.dtype)
    iy = (y[:, None] == cols).to(like.dtype)
    return torch.cat([ix, iy, iy * (x[:, None].to(like.dtype) + 0.5)], dim=1)


class _CompositeRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, f, rows, ox, oy, n_tiles, s, absgrad_of):
        M, P = f.shape[0], s * s
        mx, my, ca, cb, cc, opa = f[:, :6].t().contiguous()
        col = f[:, 6:]
        centre = torch.arange(s, device=f.device, dtype=f.dtype) + 0.5
        dx = (ox[:, None] + centre) - mx[:, None]  # [M, s (x in tile)]
        dy = (oy[:, None] + centre) - my[:, None]  # [M, s (y in tile)]
        # log(o) − σ; padding rows have o = 0, so α = exp(−inf) = 0
        log_a = (-cb[:, None] * dy)[:, :, None] * dx[:, None, :]
        log_a += (torch.log(opa)[:, None] - 0.5 * cc[:, None] * dy * dy)[:, :, None]
        log_a -= (0.5 * ca[:, None] * dx * dx)[:, None, :]
        alpha = torch.exp(log_a.reshape(M, P)).clamp_max_(ALPHA_MAX)  # pixel y·s + x
        alpha.masked_fill_(alpha < ALPHA_THRESHOLD, 0.0)

        # log T_i = Σ_{j<i, same tile} log(1 − α_j): a scan inside each block of rows plus the
        # totals of the tile's earlier blocks; the pixel is alive while T_i (1 − α_i) > T_MIN.
        log_keep = _blocks(torch.log1p(-alpha))
        upto = torch.cumsum(log_keep, dim=1)
        upto += _block_prefix(upto[:, -1], rows.block_first, True)[:, None, :]  # log T_i (1 − α_i)
        trans = torch.exp(upto - log_keep).masked_fill_(upto <= math.log(T_MIN), 0.0).reshape(M, P)
        weights = alpha * trans  # [M, P]

        w3 = _blocks(weights)
        colors = torch.index_add(f.new_zeros(n_tiles, col.shape[1], P), 0, rows.block_key,
                                 torch.matmul(_blocks(col).transpose(1, 2), w3))
        alphas = torch.index_add(f.new_zeros(n_tiles, P), 0, rows.block_key, w3.sum(1))
        ctx.rows, ctx.absgrad_of = rows, absgrad_of[0]  # a list, so autograd does not track it
        ctx.save_for_backward(f, dx, dy, alpha, weights)
        ctx.mark_non_differentiable(weights)
        return colors, alphas, weights

    @staticmethod
    @once_differentiable
    def backward(ctx, g_colors, g_alphas, _g_weights):
        f, dx, dy, alpha, weights = ctx.saved_tensors
        rows = ctx.rows
        M, s = dx.shape
        _, _, ca, cb, cc, opa = f[:, :6].t()
        col3, w3 = _blocks(f[:, 6:]), _blocks(weights)
        g_blocks = g_colors.index_select(0, rows.block_key)  # [nb, D, P]
        g_col = torch.matmul(w3, g_blocks.transpose(1, 2)).reshape(M, f.shape[1] - 6)
        g_w = torch.matmul(col3, g_blocks).add_(g_alphas.index_select(0, rows.block_key)[:, None, :])

        # h = α ∂L/∂α = ∂L/∂w · w − behind · α / (1 − α);  behind_i = Σ_{j>i in tile} ∂L/∂w_j w_j
        v = g_w.mul_(w3)
        incl = torch.cumsum(v, dim=1)
        total = incl[:, -1].clone()
        behind = incl.neg_().add_(total[:, None, :]).add_(_block_prefix(total, rows.block_last, False)[:, None, :])
        h = behind.reshape(M, s * s).mul_(alpha / (1.0 - alpha)).neg_().add_(v.reshape(M, s * s))
        h.masked_fill_(alpha >= ALPHA_MAX, 0.0)  # clamped α: no gradient to σ and o
        if ctx.absgrad_of is not None:
            _set_absgrad(ctx.absgrad_of, h, f, dx, dy, rows.pair)

        # ∂L/∂σ = −h;  moments H_· = Σ_p h·(dx, dy, dx², dy², dx dy) from one matrix product
        mom = h @ _moment_matrix(s, h)
        sum_y, sum_x, sum_x_xc = mom[:, :s], mom[:, s:2 * s], mom[:, 2 * s:]  # per x, per y, per y
        h_x, h_xx = (sum_y * dx).sum(1), (sum_y * dx * dx).sum(1)
        h_y, h_yy = (sum_x * dy).sum(1), (sum_x * dy * dy).sum(1)
        h_xy = (((dx[:, :1] - 0.5) * sum_x + sum_x_xc) * dy).sum(1)  # dx = (dx[0] − ½) + (x + ½)
        g_opa = sum_y.sum(1) / opa.clamp_min(ALPHA_THRESHOLD)  # padding rows: opacity 0 and h 0
        g_geo = torch.stack([ca * h_x + cb * h_y, cc * h_y + cb * h_x, -0.5 * h_xx, -h_xy, -0.5 * h_yy, g_opa], 1)
        return torch.cat([g_geo, g_col], dim=1), None, None, None, None, None, None


def _set_absgrad(means2d: Tensor, h: Tensor, f: Tensor, dx: Tensor, dy: Tensor, pair: Tensor) -> None:
    """``means2d.absgrad`` [C, N, 2] = Σ_p |h_p (a dx + b dy)|, Σ_p |h_p (c dy + b dx)|."""
    M, s = dx.shape
    ca, cb, cc = f[:, 2:5].t()
    h3 = h.reshape(M, s, s)  # [M, y, x]
    gx = (h3 * ((ca[:, None] * dx)[:, None, :] + (cb[:, None] * dy)[:, :, None])).abs_().sum((1, 2))
    gy = (h3 * ((cc[:, None] * dy)[:, :, None] + (cb[:, None] * dx)[:, None, :])).abs_().sum((1, 2))
    rows = torch.stack([gx, gy], 1).to(means2d.dtype)
    flat = torch.zeros(means2d.shape[0] * means2d.shape[1] + 1, 2, dtype=means2d.dtype, device=means2d.device)
    means2d.absgrad = flat.index_add_(0, pair, rows)[:-1].reshape(means2d.shape)
