"""Tile binning: one row per (tile, Gaussian) pair whose footprint touches the tile.

The image of each camera is cut into ``tile_size × tile_size`` tiles (the last row and
column may stick out of the image). A visible Gaussian with integer radii ``(rx, ry)``
around ``μ'`` touches the tiles ``[floor((μ'−r)/s), ceil((μ'+r)/s))`` on each axis (the
rule of gsplat's ``isect_tiles``). Every pixel it can reach with ``α ≥ 1/255`` lies in
those tiles (see :mod:`.render_project`), so compositing per tile loses nothing.

Vectorised (no Python loop over Gaussians): visible (camera, Gaussian) pairs are sorted by
depth and expanded into one row per tile their ellipse ``α ≥ 1/255`` really reaches (per
tile column of the box, the exact span of tile rows it meets: about a third fewer rows than
the whole box); the rows are stably sorted by ``camera·T + tile``, which leaves them front
to back inside each tile (as the depth bits of gsplat's 64-bit intersection keys do). Each
tile's rows are then padded with empty rows to a multiple of ``ROW_BLOCK``, so the
compositor can scan and reduce fixed-size blocks that never straddle two tiles.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor


ROW_BLOCK = 16


class TileRows(NamedTuple):
    """The (tile, Gaussian) table, front to back inside each tile, each tile's rows padded to
    a multiple of ``ROW_BLOCK`` so that every block of ``ROW_BLOCK`` rows lies in one tile."""

    pair: Tensor  # [Mp] int64, camera·N + Gaussian; C·N for a padding row
    block_key: Tensor  # [Mp / ROW_BLOCK] int64, camera·tiles_x·tiles_y + tile_y·tiles_x + tile_x
    block_first: Tensor  # [Mp / ROW_BLOCK] first block of the same tile
    block_last: Tensor  # [Mp / ROW_BLOCK] last block of the same tile
    n_isects: int  # real (tile, Gaussian) rows, padding excluded
    tiles_x: int
    tiles_y: int


@torch.no_grad()
def bin_tiles(means2d: Tensor, conics: Tensor, opacities: Tensor, radii: Tensor, depths: Tensor,
              width: int, height: int, tile_size: int) -> TileRows:
    """Build the (tile, Gaussian) rows for ``means2d`` [C, N, 2], ``conics`` [C, N, 3],
    ``opacities`` [N], ``radii`` [C, N, 2] int, ``depths`` [C, N]; Gaussians with a zero radius
    get no rows. Columns of tiles come from the box; inside a column only the tiles the
    ellipse ``α ≥ 1/255`` reaches get a row (see :func:`_column_span`)."""
    C, N = depths.shape
    s = tile_size
    tiles_x, tiles_y = math.ceil(width / s), math.ceil(height / s)
    pair = torch.nonzero((radii > 0).all(dim=-1).reshape(-1)).reshape(-1)  # camera-major
    pair = pair.index_select(0, torch.sort(depths.reshape(-1).index_select(0, pair), stable=True).indices)
    if C > 1:  # back to camera-major, depth order kept inside each camera
        pair = pair.index_select(0, torch.sort(torch.div(pair, N, rounding_mode="floor"), stable=True).indices)

    m = means2d.reshape(-1, 2).index_select(0, pair).to(torch.float64)
    r = radii.reshape(-1, 2).index_select(0, pair).to(torch.float64)
    x0 = torch.floor((m[:, 0] - r[:, 0]) / s).long().clamp(0, tiles_x)
    x1 = torch.ceil((m[:, 0] + r[:, 0]) / s).long().clamp(0, tiles_x)
    y0 = torch.floor((m[:, 1] - r[:, 1]) / s).long().clamp(0, tiles_y)
    y1 = torch.ceil((m[:, 1] + r[:, 1]) / s).long().clamp(0, tiles_y)

    # one entry per (pair, tile column), then one row per tile of the column's span
    col_pair, tx = _expand(x0, x1 - x0)
    conic = conics.reshape(-1, 3).index_select(0, pair).to(torch.float64).index_select(0, col_pair)
    thr = 2.0 * torch.log(255.0 * opacities.to(torch.float64).index_select(0, torch.remainder(pair, N)))
    ty0, ty1 = _column_span(m.index_select(0, col_pair), conic, thr.index_select(0, col_pair), tx, s)
    ty0 = torch.maximum(ty0, y0.index_select(0, col_pair))
    ty1 = torch.minimum(ty1, y1.index_select(0, col_pair))
    row_col, ty = _expand(ty0, (ty1 - ty0).clamp_min(0))
    row_pair = col_pair.index_select(0, row_col)
    cam = torch.div(pair.index_select(0, row_pair), N, rounding_mode="floor")
    key = cam * (tiles_x * tiles_y) + ty * tiles_x + tx.index_select(0, row_col)
    key, perm = torch.sort(key.to(torch.int32) if C * tiles_x * tiles_y < 2**31 else key, stable=True)
    return _pad_blocks(pair.index_select(0, row_pair.index_select(0, perm)), key.long(), C * N, tiles_x, tiles_y)


def _expand(start: Tensor, count: Tensor):
    """For runs ``start + 0..count−1``: (index of the run, value) of every element."""
    run = torch.repeat_interleave(torch.arange(count.numel(), device=count.device), count)
    k = torch.arange(run.numel(), device=count.device) - (torch.cumsum(count, 0) - count).index_select(0, run)
    return run, start.index_select(0, run) + k


def _column_span(mean: Tensor, conic: Tensor, thr: Tensor, tx: Tensor, s: int):
    """Tile rows ``[ty0, ty1)`` whose pixel centres can meet ``q(u, v) <= thr`` inside tile column
    ``tx``, for ``q = a u² + 2b u v + c v²`` (offsets from ``mean``; ``thr = 2 ln(255·o)``).

    For a fixed ``u`` the ellipse spans ``v = (−b u ± sqrt(c·thr − D u²)) / c`` with
    ``D = ac − b²``; the upper branch is concave with its maximum at ``u = −b sqrt(thr/(aD))``,
    the lower one convex with its minimum at ``+b sqrt(thr/(aD))``, so over the column's band
    of ``u`` (pixel centres, cut to the ellipse's ``|u| <= sqrt(c·thr/D)``) the extremes are
    at those points clamped to the band. A small margin on ``thr`` keeps borderline tiles.
    """
    a, b, c = conic.unbind(1)
    thr = thr * (1 + 1e-6) + 2e-3
    det = (a * c - b * b).clamp_min(1e-30)
    reach = torch.sqrt(c * thr / det)
    lo = torch.maximum(tx * s + 0.5 - mean[:, 0], -reach)
    hi = torch.minimum(tx * s + (s - 0.5) - mean[:, 0], reach)
    turn = b * torch.sqrt(thr / (a * det))
    u_top = torch.maximum(torch.minimum(-turn, hi), lo)
    u_bot = torch.maximum(torch.minimum(turn, hi), lo)
    v_top = (-b * u_top + torch.sqrt((c * thr - det * u_top * u_top).clamp_min(0))) / c
    v_bot = (-b * u_bot - torch.sqrt((c * thr - det * u_bot * u_bot).clamp_min(0))) / c
    ty0 = torch.ceil((mean[:, 1] + v_bot - (s - 0.5)) / s - 1e-9).long()
    ty1 = torch.floor((mean[:, 1] + v_top - 0.5) / s + 1e-9).long() + 1
    return ty0, torch.where(lo > hi, ty0, ty1)


def _pad_blocks(pair: Tensor, key: Tensor, pad: int, tiles_x: int, tiles_y: int) -> TileRows:
    """Pad each tile's run of rows (sorted ``key``) to a multiple of ``ROW_BLOCK`` rows."""
    dev = key.device
    tiles, counts = torch.unique_consecutive(key, return_counts=True)
    blocks = torch.div(counts + ROW_BLOCK - 1, ROW_BLOCK, rounding_mode="floor")
    block_start = torch.cumsum(blocks, 0) - blocks
    shift = torch.repeat_interleave(block_start * ROW_BLOCK - (torch.cumsum(counts, 0) - counts), counts)
    padded = torch.full((int(blocks.sum()) * ROW_BLOCK,), pad, dtype=torch.long, device=dev)
    padded.index_copy_(0, torch.arange(key.numel(), device=dev) + shift, pair)
    return TileRows(
        pair=padded,
        block_key=torch.repeat_interleave(tiles, blocks),
        block_first=torch.repeat_interleave(block_start, blocks),
        block_last=torch.repeat_interleave(block_start + blocks - 1, blocks),
        n_isects=int(key.numel()),
        tiles_x=tiles_x,
        tiles_y=tiles_y,
    )


def from_tiles(x: Tensor, n_cameras: int, rows: TileRows, tile_size: int, width: int, height: int) -> Tensor:
    """[C·T, s², D] per-tile pixels → [C, H, W, D] image (tiles sticking out are cropped)."""
    s, D = tile_size, x.shape[-1]
    x = x.reshape(n_cameras, rows.tiles_y, rows.tiles_x, s, s, D).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(n_cameras, rows.tiles_y * s, rows.tiles_x * s, D)[:, :height, :width]


def to_tiles(image: Tensor, rows: TileRows, tile_size: int) -> Tensor:
    """[C, H, W] image → [C·T, s²] per-tile pixels (zero where a tile sticks out)."""
    C, H, W = image.shape
    s = tile_size
    padded = image.new_zeros(C, rows.tiles_y * s, rows.tiles_x * s)
    padded[:, :H, :W] = image
    padded = padded.reshape(C, rows.tiles_y, s, rows.tiles_x, s).permute(0, 1, 3, 2, 4)
    return padded.reshape(C * rows.tiles_y * rows.tiles_x, s * s)
