"""Volume rendering of a radiance field: camera rays, ray marching, alpha compositing.

Mildenhall et al., 2020, "NeRF: Representing Scenes as Neural Radiance Fields for View
Synthesis" (https://arxiv.org/abs/2003.08934), eq. 3. A ray ``r(t) = o + t·d`` (``d`` a unit
vector, ``t`` a distance) is sampled at ``t_1 < … < t_S`` with spacings ``δ_i``; the field
gives a density ``σ_i ≥ 0`` and a colour ``c_i`` at each sample, and

    α_i = 1 − exp(−σ_i·δ_i),   T_i = Π_{j<i} (1 − α_j) = exp(−Σ_{j<i} σ_j·δ_j),
    w_i = T_i·α_i,             C = Σ_i w_i·c_i + (1 − Σ_i w_i)·c_bg.

The background colour ``c_bg`` (white for the NeRF-synthetic images composited on white) is
what light passing the whole ray brings. Marching follows Müller et al., 2022, "Instant
Neural Graphics Primitives with a Multiresolution Hash Encoding"
(https://arxiv.org/abs/2201.05989), §5.4: a fixed step ``δ`` inside the scene's box
``[−bound, bound]³`` (clipped to ``[near, far]``), a random offset per ray in training, and
samples whose occupancy-grid cell is empty skipped: they are never given to the field, and
count as ``σ = 0`` (``α = 0``, ``T`` unchanged), which is exactly what they contribute when the
field is zero there (:mod:`.occupancy`).

Cameras are NeRF-synthetic's: camera→world ``[4, 4]`` matrices in the Blender/OpenGL
convention (x right, y up, the camera looks along −z), a pinhole with focal length in pixels.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, Optional, Tuple

import torch
from torch import Tensor

from sparsity_core.validation import check_int, check_positive

Field = Callable[[Tensor, Tensor], Tuple[Tensor, Tensor]]  # (points [P, 3], dirs [P, 3]) -> (σ [P], rgb [P, 3])


def check_near_far(near: float, far: float) -> Tuple[float, float]:
    """``0 < near < far``, both finite."""
    near, far = check_positive(near, "near"), check_positive(far, "far")
    if far <= near:
        raise ValueError(f"far must be > near, got near={near!r}, far={far!r}")
    return near, far


def camera_rays(poses: Tensor, height: int, width: int, focal: float) -> Tuple[Tensor, Tensor]:
    """Origins and unit directions ``[N, H, W, 3]`` of the rays through the pixel centres.

    ``poses``: camera→world ``[N, 4, 4]`` (or one ``[4, 4]``), OpenGL axes. The pixel ``(u, v)``
    (column, row) looks along ``R·((u + ½ − W/2)/f, −(v + ½ − H/2)/f, −1)``, normalised.
    """
    if not isinstance(poses, Tensor) or poses.dim() not in (2, 3) or tuple(poses.shape[-2:]) != (4, 4):
        raise ValueError(f"poses must be camera-to-world matrices [N, 4, 4] or [4, 4], got "
                         f"{tuple(poses.shape) if isinstance(poses, Tensor) else type(poses).__name__}")
    if not torch.isfinite(poses).all():
        raise ValueError("poses have NaN/Inf entries")
    height, width = check_int(height, "height", 1), check_int(width, "width", 1)
    focal = check_positive(focal, "focal")
    poses = poses.reshape(-1, 4, 4).float()
    v, u = torch.meshgrid(torch.arange(height, dtype=torch.float32), torch.arange(width, dtype=torch.float32),
                          indexing="ij")
    cam = torch.stack([(u + 0.5 - width / 2) / focal, -(v + 0.5 - height / 2) / focal, -torch.ones_like(u)], -1)
    dirs = torch.einsum("nij,hwj->nhwi", poses[:, :3, :3], cam)
    dirs = dirs / dirs.norm(dim=-1, keepdim=True)
    origins = poses[:, None, None, :3, 3].expand_as(dirs).contiguous()
    return origins, dirs


def ray_box(origins: Tensor, dirs: Tensor, bound: float) -> Tuple[Tensor, Tensor]:
    """Entry and exit distances ``[R]`` of rays through the box ``[−bound, bound]³`` (slab
    method); ``t_exit < t_enter`` when a ray misses the box."""
    safe = torch.where(dirs.abs() < 1e-12, torch.full_like(dirs, 1e-12), dirs)
    t1, t2 = (-bound - origins) / safe, (bound - origins) / safe
    return torch.minimum(t1, t2).amax(-1), torch.maximum(t1, t2).amin(-1)


def march(origins: Tensor, dirs: Tensor, near: float, far: float, bound: float, step: float,
          jitter: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """Sample distances ``t [R, S]`` every ``step`` inside ``[max(near, t_enter), min(far,
    t_exit)]`` and the mask ``[R, S]`` of those inside that segment. Sample ``k`` sits at
    ``t_0 + (k + u)·step``, ``u`` the ray's ``jitter`` in ``[0, 1)`` (``½`` when ``None``);
    ``S = ⌈min(far − near, 2√3·bound) / step⌉``."""
    t_enter, t_exit = ray_box(origins, dirs, bound)
    t0, t1 = t_enter.clamp(min=near), t_exit.clamp(max=far)
    n = max(1, math.ceil(min(far - near, 2 * math.sqrt(3) * bound) / step))
    u = torch.full_like(t0, 0.5) if jitter is None else jitter
    t = t0.unsqueeze(-1) + (torch.arange(n, dtype=t0.dtype, device=t0.device) + u.unsqueeze(-1)) * step
    return t, t < t1.unsqueeze(-1)


def composite(sigma: Tensor, rgb: Tensor, delta, background=1.0) -> Dict[str, Tensor]:
    """Alpha compositing (module docstring) of ``σ [R, S]`` and ``rgb [R, S, 3]`` with spacings
    ``delta`` (``[R, S]`` or a number). Returns ``color [R, 3]``, ``weights``, ``alpha``,
    ``transmittance`` ``[R, S]`` and ``opacity`` ``Σ w [R]``. ``T_i`` is computed as
    ``exp(−Σ_{j<i} σ_j δ_j)``, equal to ``Π_{j<i}(1 − α_j)``."""
    tau = sigma * delta
    alpha = 1.0 - torch.exp(-tau)
    transmittance = torch.exp(-(torch.cumsum(tau, -1) - tau))
    weights = transmittance * alpha
    opacity = weights.sum(-1)
    bg = torch.as_tensor(background, dtype=rgb.dtype, device=rgb.device)
    color = (weights.unsqueeze(-1) * rgb).sum(-2) + (1.0 - opacity).unsqueeze(-1) * bg
    return {"color": color, "weights": weights, "alpha": alpha, "transmittance": transmittance, "opacity": opacity}


def render_rays(field: Field, origins: Tensor, dirs: Tensor, near: float, far: float, bound: float, step: float,
                occupied: Optional[Callable[[Tensor], Tensor]] = None, background=1.0,
                generator: Optional[torch.Generator] = None) -> Dict[str, Tensor]:
    """Render rays ``[R, 3]``: march (:func:`march`; a random offset per ray from
    ``generator`` when given), evaluate ``field`` only at samples inside the box and, with
    ``occupied`` (points ``[..., 3]`` -> bool), inside occupied cells; composite on
    ``background``. Returns :func:`composite`'s values plus ``samples`` (how many points the
    field evaluated), ``candidates`` (samples inside the box), ``points [R, S, 3]`` and
    ``evaluated [R, S]`` (the mask of the samples given to the field)."""
    near, far = check_near_far(near, far)
    bound, step = check_positive(bound, "bound"), check_positive(step, "step")
    if origins.dim() != 2 or origins.shape[-1] != 3 or origins.shape != dirs.shape:
        raise ValueError(f"origins and dirs must both be [R, 3], got {tuple(origins.shape)} and {tuple(dirs.shape)}")
    jitter = None if generator is None else torch.rand(origins.shape[0], generator=generator).to(origins.device)
    t, inside = march(origins, dirs, near, far, bound, step, jitter)
    points = origins.unsqueeze(1) + t.unsqueeze(-1) * dirs.unsqueeze(1)
    keep = inside & occupied(points) if occupied is not None else inside
    sigma = points.new_zeros(t.shape)
    rgb = points.new_zeros(*t.shape, 3)
    n = int(keep.sum())
    if n:
        s, c = field(points[keep], dirs.unsqueeze(1).expand_as(points)[keep])
        sigma = sigma.masked_scatter(keep, s)
        rgb = rgb.masked_scatter(keep.unsqueeze(-1), c)
    out = composite(sigma, rgb, step, background)
    out["samples"] = torch.tensor(n)
    out["candidates"] = inside.sum()
    out["points"], out["evaluated"] = points, keep
    return out
