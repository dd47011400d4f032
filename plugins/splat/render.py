"""Differentiable 3D Gaussian Splatting renderer in plain PyTorch, and a dispatcher that
uses gsplat's CUDA ``rasterization`` when the tensors are on a GPU.

:func:`rasterize` follows ``gsplat.rasterization`` (3D Gaussian Splatting, Kerbl et al.
2023, https://arxiv.org/abs/2308.04079; gsplat, Ye et al. 2024,
https://arxiv.org/abs/2409.06765): the same arguments, the same pixel rule and the same
``info`` fields that ``gsplat.strategy.DefaultStrategy`` reads. The pipeline:

1. project (:mod:`.render_project`): EWA projection to ``means2d``, ``conics``, ``depths``
   and opacity-aware integer ``radii``;
2. colour: ``colors`` as given, or ``max(0, Σ_l,m c_lm Y_lm(d) + ½)`` for SH coefficients
   with ``d`` the direction from the camera centre to the Gaussian (gsplat's convention);
3. bin (:mod:`.render_tiles`): one row per (tile, Gaussian) the footprint touches, front to
   back inside each tile;
4. composite (:mod:`.render_composite`): ``C(p) = Σ_i α_i T_i c_i + T·bg`` per tile, with
   ``α_i = min(0.999, o_i exp(−σ_i))`` and early termination at ``T ≤ 1e-4``.

Only tiles a Gaussian touches are evaluated, so the work is ``Σ_tiles (Gaussians in it ×
pixels of a tile)``, not Gaussians × pixels. Small tiles (4×4) are fastest on a CPU.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
from torch import Tensor

from ._deps import gsplat
from .render_checks import check_inputs
from .render_composite import composite_tiles
from .render_project import project_gaussians
from .render_stats import contribution_stats
from .render_tiles import bin_tiles, from_tiles

BACKENDS = ("auto", "torch", "gsplat")


def rasterize(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    colors: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    *,
    sh_degree: Optional[int] = None,
    backgrounds: Optional[Tensor] = None,
    tile_size: int = 4,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    radius_clip: float = 0.0,
    eps2d: float = 0.3,
    render_mode: str = "RGB",
    with_stats: bool = False,
    loss_map: Optional[Tensor] = None,
    absgrad: bool = False,
) -> Tuple[Tensor, Tensor, Dict]:
    """Render N Gaussians into C pinhole cameras with plain PyTorch (any device, autograd).

    Args:
        means: [N, 3] centres. quats: [N, 4] rotations (wxyz, normalised here).
        scales: [N, 3] standard deviations (already ``exp``-ed, as for gsplat).
        opacities: [N] in [0, 1] (already ``sigmoid``-ed).
        colors: [N, D] or [C, N, D] colours, or with ``sh_degree`` SH coefficients
            [N, K, 3] / [C, N, K, 3] with ``(sh_degree + 1)² <= K``.
        viewmats: [C, 4, 4] world→camera (OpenCV: x right, y down, z forward).
        Ks: [C, 3, 3] intrinsics (pixels). width, height: image size.
        backgrounds: [C, D] colour behind the Gaussians (``+ bg·(1 − alpha)``).
        tile_size: side of the square tiles (4 is fastest on a CPU; the image does not
            depend on it).
        near_plane, far_plane, radius_clip, eps2d: as gsplat (culling depths, minimum
            radius in pixels, low-pass variance added to the 2D covariance).
        render_mode: "RGB", "D" (accumulated depth Σ w z), "ED" (Σ w z / Σ w),
            "RGB+D" or "RGB+ED" (depth as the last channel).
        with_stats: add per-Gaussian contribution statistics (see :mod:`.render_stats`):
            ``hits``, ``sum_weight``, ``max_weight`` [C, N] and, with ``loss_map``
            [C, H, W] (or [C, H, W, 1]), ``loss_hits`` and ``loss_weight``.
        absgrad: as gsplat: ``backward`` also sets ``info["means2d"].absgrad`` [C, N, 2], the
            per-pixel absolute gradients summed (AbsGS; ``DefaultStrategy(absgrad=True)``).

    Returns:
        ``(colors [C, H, W, D'], alphas [C, H, W, 1], info)``. ``info`` has gsplat's
        non-packed fields: ``means2d`` [C, N, 2] (the tensor the image was rendered from,
        with ``retain_grad``, so ``info["means2d"].grad`` is filled by ``backward`` as
        ``DefaultStrategy`` expects), ``radii`` [C, N, 2] int32 (0 = not rendered),
        ``depths`` [C, N], ``conics`` [C, N, 3], ``opacities`` [C, N], ``width``,
        ``height``, ``n_cameras``, ``tile_size``, ``tile_width``, ``tile_height``,
        ``n_isects`` (rows of the tile table), ``gaussian_ids = camera_ids = None``.

    Raises:
        ValueError: for mismatched shapes, non-finite values, an unknown render mode or a
            non-positive size, before any work.
    """
    check_inputs(means, quats, scales, opacities, colors, viewmats, Ks, width, height, sh_degree=sh_degree,
                 backgrounds=backgrounds, tile_size=tile_size, near_plane=near_plane, far_plane=far_plane,
                 radius_clip=radius_clip, eps2d=eps2d, render_mode=render_mode, with_stats=with_stats,
                 loss_map=loss_map)
    C, N = viewmats.shape[0], means.shape[0]
    means2d, conics, depths, radii = project_gaussians(
        means, quats, scales, opacities, viewmats, Ks, width, height,
        near_plane=near_plane, far_plane=far_plane, eps2d=eps2d, radius_clip=radius_clip)
    if means2d.requires_grad:
        means2d.retain_grad()

    channels = _channels(means, colors, viewmats, sh_degree, render_mode, depths)
    opa = opacities[None, :, None].expand(C, N, 1)
    feats = torch.cat([means2d, conics, opa, channels], dim=-1)
    feats = feats.reshape(C * N, feats.shape[-1])
    rows = bin_tiles(means2d.detach(), conics.detach(), opacities.detach(), radii, depths.detach(), width, height,
                     tile_size)
    comp = composite_tiles(rows, feats, C, tile_size,
                           absgrad_of=means2d if absgrad and means2d.requires_grad else None)
    image = from_tiles(comp.colors, C, rows, tile_size, width, height)
    alphas = from_tiles(comp.alphas[..., None], C, rows, tile_size, width, height)

    if render_mode in ("ED", "RGB+ED"):
        image = torch.cat([image[..., :-1], image[..., -1:] / alphas.clamp_min(1e-10)], dim=-1)
    if backgrounds is not None and render_mode not in ("D", "ED"):
        if render_mode != "RGB":
            backgrounds = torch.cat([backgrounds, backgrounds.new_zeros(C, 1)], dim=-1)
        image = image + backgrounds[:, None, None, :] * (1.0 - alphas)

    info = {
        "camera_ids": None, "gaussian_ids": None, "radii": radii, "means2d": means2d, "depths": depths,
        "conics": conics, "opacities": opa[..., 0], "width": width, "height": height, "n_cameras": C,
        "tile_size": tile_size, "tile_width": rows.tiles_x, "tile_height": rows.tiles_y,
        "n_isects": rows.n_isects,
    }
    if with_stats:
        lmap = None if loss_map is None else loss_map.reshape(C, height, width)
        info.update(contribution_stats(comp.weights, rows, C, N, tile_size, width, height, lmap))
    return image, alphas, info


def _channels(means: Tensor, colors: Tensor, viewmats: Tensor, sh_degree: Optional[int], render_mode: str,
              depths: Tensor) -> Tensor:
    """Per-(camera, Gaussian) values to composite [C, N, D'] for the render mode."""
    C, N = depths.shape
    if render_mode in ("D", "ED"):
        return depths[..., None]
    if sh_degree is None:
        rgb = colors if colors.dim() == 3 else colors[None].expand(C, N, colors.shape[-1])
    else:
        campos = torch.inverse(viewmats)[:, :3, 3]  # camera centres, as gsplat
        dirs = means[None, :, :] - campos[:, None, :]
        shs = colors if colors.dim() == 4 else colors[None].expand((C,) + tuple(colors.shape))
        rgb = torch.clamp_min(gsplat("cuda._torch_impl")._spherical_harmonics(sh_degree, dirs, shs) + 0.5, 0.0)
    if render_mode == "RGB":
        return rgb
    return torch.cat([rgb, depths[..., None]], dim=-1)


def render(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    colors: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    *,
    backend: str = "auto",
    tile_size: Optional[int] = None,
    **kwargs,
) -> Tuple[Tensor, Tensor, Dict]:
    """Render with gsplat's CUDA ``rasterization`` or with :func:`rasterize`.

    ``backend="auto"`` picks gsplat when the tensors are on CUDA and no statistics are
    asked for (gsplat computes none), else :func:`rasterize`; ``"torch"`` and ``"gsplat"``
    force one. Keyword arguments are :func:`rasterize`'s; ``tile_size=None`` means 4 for
    the torch renderer and 16 (gsplat's default) for gsplat. gsplat is called with
    ``packed=False`` so both return the same ``info`` layout (``radii`` [C, N, 2],
    ``gaussian_ids=None``).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    unknown = sorted(set(kwargs) - set(_GSPLAT_KWARGS) - {"with_stats", "loss_map"})
    if unknown:
        raise ValueError(f"unknown keyword arguments {unknown}; valid: {sorted(_GSPLAT_KWARGS)}, "
                         "with_stats, loss_map")
    stats = bool(kwargs.get("with_stats", False)) or kwargs.get("loss_map") is not None
    use_gsplat = backend == "gsplat" or (backend == "auto" and means.is_cuda and not stats)
    if not use_gsplat:
        return rasterize(means, quats, scales, opacities, colors, viewmats, Ks, width, height,
                         tile_size=4 if tile_size is None else tile_size, **kwargs)
    if stats:
        raise ValueError("with_stats/loss_map need backend='torch' (gsplat computes no statistics)")
    if not means.is_cuda:
        raise ValueError(f"backend='gsplat' needs CUDA tensors, got {means.device}")
    options = dict(_GSPLAT_KWARGS, **{k: v for k, v in kwargs.items() if k in _GSPLAT_KWARGS})
    check_inputs(means, quats, scales, opacities, colors, viewmats, Ks, width, height, tile_size=tile_size,
                 with_stats=False, loss_map=None, **{k: v for k, v in options.items() if k != "absgrad"})
    return gsplat().rasterization(means, quats, scales, opacities, colors, viewmats, Ks, width, height,
                                  packed=False, tile_size=16 if tile_size is None else tile_size, **options)


_GSPLAT_KWARGS = {"sh_degree": None, "backgrounds": None, "near_plane": 0.01, "far_plane": 1e10,
                  "radius_clip": 0.0, "eps2d": 0.3, "render_mode": "RGB", "absgrad": False}
