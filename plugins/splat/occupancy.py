"""Occupancy grid: which cells of the scene's box hold density, so that ray marching skips
the empty ones.

Müller et al., 2022, "Instant Neural Graphics Primitives with a Multiresolution Hash
Encoding" (https://arxiv.org/abs/2201.05989), §5.4 and appendix E.2. The box
``[−bound, bound]³`` is cut into ``R³`` cells. Every update draws one uniform point ``x_c`` in
each cell ``c``, evaluates there the optical thickness of one marching step ``σ(x_c)·δ``
(what Instant-NGP and nerfacc threshold: the opacity ``α ≈ σ·δ`` one sample would have) and
keeps a decaying maximum

    d_c ← max(λ·d_c, σ(x_c)·δ)        (λ = ``decay``, 0.95 in Instant-NGP),

and a cell is occupied when ``d_c > min(τ, mean_c d_c)`` (τ = ``threshold``, 0.01: one
percent opacity per step; the mean keeps cells on while the whole field is still below τ).
Before the first update every cell is occupied. Marching (:func:`.nerf_render.render_rays`) evaluates the field only at
samples in occupied cells; a skipped sample counts as ``σ = 0``, so where the field is exactly
zero in every empty cell, skipping leaves the image unchanged.

The grid is plain buffers (``density``, ``bits``): it is saved and loaded with its module.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor, nn

from sparsity_core.validation import check_int, check_positive, check_range


class OccupancyGrid(nn.Module):
    """``R³`` occupancy bits over ``[−bound, bound]³`` (module docstring).

    Args:
        resolution: cells per axis ``R``.
        bound: half the side of the scene's box.
        threshold: optical thickness per step ``τ`` above which a cell is occupied.
        decay: ``λ``, how fast a cell's remembered density fades.
    """

    def __init__(self, resolution: int = 64, bound: float = 1.5, threshold: float = 0.01,
                 decay: float = 0.95) -> None:
        super().__init__()
        self.resolution = check_int(resolution, "occupancy resolution (cells per axis)", 1)
        self.bound = check_positive(bound, "bound")
        self.threshold = check_positive(threshold, "occupancy threshold")
        self.decay = check_range(decay, "occupancy decay", 0.0, 1.0)
        self.register_buffer("density", torch.zeros(resolution ** 3))
        self.register_buffer("bits", torch.ones(resolution ** 3, dtype=torch.bool))

    def cell_index(self, points: Tensor) -> Tensor:
        """Flat cell index ``[...]`` of ``points [..., 3]`` (``i·R² + j·R + k`` for the cell
        ``(i, j, k)`` along x, y, z); points outside the box get ``−1``."""
        r = self.resolution
        cell = ((points + self.bound) * (r / (2 * self.bound))).floor().long()
        inside = ((cell >= 0) & (cell < r)).all(-1)
        flat = (cell[..., 0] * r + cell[..., 1]) * r + cell[..., 2]
        return torch.where(inside, flat, torch.full_like(flat, -1))

    def occupied(self, points: Tensor) -> Tensor:
        """Bool ``[...]``: ``points [..., 3]`` lie in an occupied cell (False outside the box)."""
        idx = self.cell_index(points)
        return self.bits[idx.clamp(min=0)] & (idx >= 0)

    def cell_points(self, generator: Optional[torch.Generator] = None) -> Tensor:
        """One point ``[R³, 3]`` per cell, in flat cell order: uniform in the cell with a
        ``generator``, else its centre."""
        r = self.resolution
        ijk = torch.stack(torch.meshgrid(*[torch.arange(r)] * 3, indexing="ij"), -1).reshape(-1, 3).float()
        offset = torch.full_like(ijk, 0.5) if generator is None else torch.rand(ijk.shape, generator=generator)
        return ((ijk + offset) * (2 * self.bound / r) - self.bound).to(self.density.device)

    @torch.no_grad()
    def update(self, density_fn: Callable[[Tensor], Tensor], generator: Optional[torch.Generator] = None,
               chunk: int = 65536) -> float:
        """Evaluate ``density_fn`` (points ``[P, 3]`` -> ``σ·δ [P]``, the optical thickness of
        one step; any non-negative field compared with ``threshold``) at one point per cell, fold
        it into the decaying maximum and recompute the bits. Checks every chunk's output
        before changing the grid. Returns the occupied fraction."""
        check_int(chunk, "chunk", 1)
        points = self.cell_points(generator)
        values = []
        for part in points.split(chunk):
            sigma = density_fn(part)
            if not isinstance(sigma, Tensor) or tuple(sigma.shape) != (part.shape[0],):
                raise ValueError(f"density_fn must return one density per point ([{part.shape[0]}]), got "
                                 f"{tuple(sigma.shape) if isinstance(sigma, Tensor) else type(sigma).__name__}")
            if not torch.isfinite(sigma).all():
                raise ValueError("density_fn returned NaN/Inf densities")
            values.append(sigma.float())
        self.density.copy_(torch.maximum(self.density * self.decay, torch.cat(values)))
        self.bits.copy_(self.density > min(self.threshold, float(self.density.mean())))
        return self.fraction()

    def fraction(self) -> float:
        """Fraction of occupied cells."""
        return float(self.bits.float().mean())

    def extra_repr(self) -> str:
        return f"resolution={self.resolution}, bound={self.bound}, threshold={self.threshold}, decay={self.decay}"
