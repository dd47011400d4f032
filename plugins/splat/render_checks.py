"""Input validation of the renderers: every mistake is a ``ValueError`` raised before any
work, with the shapes that were expected and the ones that came."""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from sparsity_core.validation import check_int

RENDER_MODES = ("RGB", "D", "ED", "RGB+D", "RGB+ED")
MAX_SH_DEGREE = 4


def _shape(name: str, t: object, expected: str, ok: bool) -> None:
    if not isinstance(t, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape {expected}, got {type(t).__name__}")
    if not ok:
        raise ValueError(f"{name} must have shape {expected}, got {list(t.shape)}")


def _real(name: str, value: object, low: float = -math.inf) -> None:
    """A number ``>= low`` that may be infinite (``far_plane=inf``: no far clipping), which
    the checks of :mod:`sparsity_core.validation` (finite numbers only) would refuse."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or value < low:
        raise ValueError(f"{name} must be a number >= {low}, got {value!r}")


def check_inputs(
    means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, colors: Tensor,
    viewmats: Tensor, Ks: Tensor, width: int, height: int, *,
    sh_degree: Optional[int], backgrounds: Optional[Tensor], tile_size: Optional[int],
    near_plane: float, far_plane: float, radius_clip: float, eps2d: float,
    render_mode: str, with_stats: bool, loss_map: Optional[Tensor],
) -> None:
    """Raise ``ValueError`` unless the arguments follow :func:`.render.rasterize`'s contract."""
    _shape("means", means, "[N, 3]", isinstance(means, Tensor) and means.dim() == 2 and means.shape[1] == 3)
    N = means.shape[0]
    _shape("quats", quats, f"[N={N}, 4]", isinstance(quats, Tensor) and tuple(quats.shape) == (N, 4))
    _shape("scales", scales, f"[N={N}, 3]", isinstance(scales, Tensor) and tuple(scales.shape) == (N, 3))
    _shape("opacities", opacities, f"[N={N}]", isinstance(opacities, Tensor) and tuple(opacities.shape) == (N,))
    _shape("viewmats", viewmats, "[C, 4, 4] (world→camera)",
           isinstance(viewmats, Tensor) and viewmats.dim() == 3 and viewmats.shape[1:] == (4, 4) and len(viewmats) > 0)
    C = viewmats.shape[0]
    _shape("Ks", Ks, f"[C={C}, 3, 3]", isinstance(Ks, Tensor) and tuple(Ks.shape) == (C, 3, 3))
    if sh_degree is None:
        _shape("colors", colors, f"[N={N}, D] or [C={C}, N={N}, D] (sh_degree=None)", isinstance(colors, Tensor) and (
            (colors.dim() == 2 and colors.shape[0] == N) or (colors.dim() == 3 and colors.shape[:2] == (C, N))))
        channels = colors.shape[-1]
    else:
        check_int(sh_degree, "sh_degree (or None)", 0, MAX_SH_DEGREE)
        k = (sh_degree + 1) ** 2
        _shape("colors", colors, f"[N={N}, K>={k}, 3] or [C={C}, N={N}, K>={k}, 3] (SH of degree {sh_degree})",
               isinstance(colors, Tensor) and colors.shape[-1:] == (3,) and colors.dim() in (3, 4)
               and colors.shape[-2] >= k and colors.shape[:-2] == ((N,) if colors.dim() == 3 else (C, N)))
        channels = 3
    tensors = {"means": means, "quats": quats, "scales": scales, "opacities": opacities, "colors": colors,
               "viewmats": viewmats, "Ks": Ks}
    if backgrounds is not None:
        _shape("backgrounds", backgrounds, f"[C={C}, D={channels}]",
               isinstance(backgrounds, Tensor) and tuple(backgrounds.shape) == (C, channels))
        tensors["backgrounds"] = backgrounds
    if loss_map is not None:
        if not with_stats:
            raise ValueError("loss_map is only used for the statistics: pass with_stats=True")
        _shape("loss_map", loss_map, f"[C={C}, H={height}, W={width}] or [C, H, W, 1]",
               isinstance(loss_map, Tensor) and loss_map.shape[:3] == (C, height, width)
               and (loss_map.dim() == 3 or (loss_map.dim() == 4 and loss_map.shape[3] == 1)))
        tensors["loss_map"] = loss_map
    for name, t in tensors.items():
        if not t.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got {t.dtype}")
        if t.dtype != means.dtype or t.device != means.device:
            raise ValueError(f"{name} is {t.dtype} on {t.device} but means is {means.dtype} on {means.device}")
    check_int(width, "width", 1)
    check_int(height, "height", 1)
    if tile_size is not None:
        check_int(tile_size, "tile_size", 1)
    _real("near_plane", near_plane)
    _real("far_plane", far_plane)
    if not near_plane < far_plane:
        raise ValueError(f"near_plane must be < far_plane, got {near_plane} and {far_plane}")
    _real("radius_clip", radius_clip, 0.0)
    _real("eps2d", eps2d, 0.0)
    if render_mode not in RENDER_MODES:
        raise ValueError(f"render_mode must be one of {RENDER_MODES}, got {render_mode!r}")
    for name, t in tensors.items():
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{name} contains NaN or Inf values")
