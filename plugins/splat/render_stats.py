"""Per-Gaussian contribution statistics gathered from the compositing weights.

With ``w_{i,p} = α_{i,p}·T_{i,p}`` the blend weight of Gaussian ``i`` at pixel ``p`` of a
camera (see :mod:`.render_composite`), each camera gets, per Gaussian:

- ``hits``: ``#{p : w_{i,p} > 0}``, the pixels it contributes to (``α ≥ 1/255`` and the
  pixel not yet saturated, so fully occluded Gaussians count 0);
- ``sum_weight``: ``Σ_p w_{i,p}``; ``max_weight``: ``max_p w_{i,p}``;
- given a per-pixel loss map ``L``: ``loss_hits = Σ_{p : w>0} L_p`` and
  ``loss_weight = Σ_p w_{i,p}·L_p``.

These are the visibility and loss-aware terms of the Gaussian scores of Taming 3DGS
(Mallick et al. 2024, https://arxiv.org/abs/2406.15643). They are scatter-adds over the
(tile, Gaussian, pixel) rows already built for rendering: no Gaussians×pixels array, no
autograd graph (computed on detached weights).
"""
from __future__ import annotations

from typing import Dict, Optional

import torch
from torch import Tensor

from .render_tiles import ROW_BLOCK, TileRows, to_tiles


@torch.no_grad()
def contribution_stats(
    weights: Tensor,
    rows: TileRows,
    n_cameras: int,
    n_gaussians: int,
    tile_size: int,
    width: int,
    height: int,
    loss_map: Optional[Tensor] = None,
) -> Dict[str, Tensor]:
    """Statistics [C, N] of the blend ``weights`` [M, s²] of the rows; ``loss_map`` [C, H, W]."""
    w = weights.detach()
    row_key = rows.block_key.repeat_interleave(ROW_BLOCK)
    inside = to_tiles(torch.ones(n_cameras, height, width, device=w.device, dtype=w.dtype), rows, tile_size)
    w = w * inside.index_select(0, row_key)  # pixels of border tiles that lie outside the image
    hit = w > 0
    size = n_cameras * n_gaussians + 1  # the last slot collects the padding rows

    def scatter(values: Tensor) -> Tensor:
        return torch.zeros(size, device=w.device, dtype=values.dtype).index_add_(0, rows.pair, values)

    out = {
        "hits": scatter(hit.sum(dim=1, dtype=torch.int32)),
        "sum_weight": scatter(w.sum(dim=1)),
        "max_weight": torch.zeros(size, device=w.device, dtype=w.dtype).scatter_reduce_(
            0, rows.pair, w.amax(dim=1), reduce="amax"),
    }
    if loss_map is not None:
        loss = to_tiles(loss_map.detach().to(w.dtype), rows, tile_size).index_select(0, row_key)
        out["loss_hits"] = scatter((loss * hit).sum(dim=1))
        out["loss_weight"] = scatter((loss * w).sum(dim=1))
    return {k: v[:-1].reshape(n_cameras, n_gaussians) for k, v in out.items()}
