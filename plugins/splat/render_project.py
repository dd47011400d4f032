"""EWA projection of 3D Gaussians onto the image planes of pinhole cameras.

Each Gaussian has a mean ``μ`` and a covariance ``Σ = R S Sᵀ Rᵀ`` (``R`` from the
normalised quaternion ``q = (w, x, y, z)``, ``S = diag(scales)``). A camera maps it with
its world→camera rotation and translation ``(W, t)``: ``μ_c = W μ + t``, ``Σ_c = W Σ Wᵀ``.
The perspective map is linearised at ``μ_c`` (EWA splatting, Zwicker et al. 2001, as used
by 3D Gaussian Splatting, Kerbl et al. 2023, https://arxiv.org/abs/2308.04079)::

    μ' = K[:2, :3] μ_c / z
    J  = [[fx/z, 0, -fx·u/z], [0, fy/z, -fy·v/z]]      u, v = x/z, y/z clamped to 1.3× the FoV
    Σ' = J Σ_c Jᵀ + eps2d·I                             (low-pass filter, ≥ ~1 px footprint)
    conic = Σ'⁻¹ stored as (a, b, c): σ(d) = ½(a dx² + c dy²) + b dx dy

``Σ'`` is formed as ``A Aᵀ`` with ``A = J W R S`` (2×3), which never builds ``Σ_c``.
The footprint is gsplat's opacity-aware bounding box (Radl et al. 2024, "StopThePop",
https://arxiv.org/abs/2402.00525, appendix B.2): a pixel can only receive
``α = o·exp(−σ) ≥ 1/255`` where ``dᵀ Σ'⁻¹ d ≤ 2 ln(255·o)``, whose axis-aligned box has
half-widths ``k·sqrt(Σ'_xx)``, ``k·sqrt(Σ'_yy)`` with ``k = min(3.33, sqrt(2 ln(255·o)))``.
The conventions (clamp, radii, validity rules) follow gsplat 1.5.3's fused CUDA projection,
so ``means2d`` and ``conics`` agree with ``gsplat.cuda._torch_impl._fully_fused_projection``.
"""
from __future__ import annotations

import math
from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

ALPHA_THRESHOLD = 1.0 / 255.0
EXTEND_MAX = 3.33


def quat_to_rotmat(quats: Tensor) -> Tensor:
    """Rotation matrices [N, 3, 3] of quaternions [N, 4] (wxyz, normalised here)."""
    w, x, y, z = F.normalize(quats, p=2, dim=-1).unbind(-1)
    rows = (
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    )
    return torch.stack(rows, dim=-1).reshape(quats.shape[:-1] + (3, 3))


def project_gaussians(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    eps2d: float = 0.3,
    radius_clip: float = 0.0,
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Project N Gaussians into C cameras (differentiable in means, quats, scales).

    Args are gsplat's: ``means`` [N, 3], ``quats`` [N, 4], ``scales`` [N, 3] (already
    exponentiated), ``opacities`` [N] (already sigmoid-ed; used for the footprint only),
    ``viewmats`` [C, 4, 4] world→camera, ``Ks`` [C, 3, 3].

    Returns ``(means2d [C, N, 2], conics [C, N, 3], depths [C, N], radii [C, N, 2] int32)``.
    A Gaussian is culled in a camera (radii 0; its means2d and conics are 0 as in gsplat's
    CUDA kernel) when its depth is outside ``[near_plane, far_plane]``, its 2D covariance
    is singular, its opacity is below 1/255, both radii are ``<= radius_clip`` or its box
    misses the image. ``depths`` is the camera-space z of every Gaussian.
    """
    rot = quat_to_rotmat(quats)
    rs = rot * scales[:, None, :]  # R S: [N, 3, 3]
    wv, tv = viewmats[:, :3, :3], viewmats[:, :3, 3]
    means_c = torch.einsum("cij,nj->cni", wv, means) + tv[:, None, :]  # [C, N, 3]
    x, y, z = means_c.unbind(-1)
    depth_ok = (z >= near_plane) & (z <= far_plane)
    zs = torch.where(depth_ok, z, torch.ones_like(z))  # keeps culled entries finite (no NaN grads)

    fx, fy = Ks[:, 0, 0, None], Ks[:, 1, 1, None]
    cx, cy = Ks[:, 0, 2, None], Ks[:, 1, 2, None]
    tan_fovx, tan_fovy = 0.5 * width / fx, 0.5 * height / fy
    lim_x_pos, lim_x_neg = (width - cx) / fx + 0.3 * tan_fovx, cx / fx + 0.3 * tan_fovx
    lim_y_pos, lim_y_neg = (height - cy) / fy + 0.3 * tan_fovy, cy / fy + 0.3 * tan_fovy
    u = torch.maximum(torch.minimum(x / zs, lim_x_pos), -lim_x_neg)
    v = torch.maximum(torch.minimum(y / zs, lim_y_pos), -lim_y_neg)

    wrs = torch.einsum("cij,njk->cnik", wv, rs)  # W R S: [C, N, 3, 3]
    a0 = (fx / zs)[..., None] * (wrs[..., 0, :] - u[..., None] * wrs[..., 2, :])  # rows of A = J W R S
    a1 = (fy / zs)[..., None] * (wrs[..., 1, :] - v[..., None] * wrs[..., 2, :])
    cov_xx = (a0 * a0).sum(-1) + eps2d
    cov_xy = (a0 * a1).sum(-1)
    cov_yy = (a1 * a1).sum(-1) + eps2d
    det = cov_xx * cov_yy - cov_xy * cov_xy
    det_ok = det > 0
    dets = torch.where(det_ok, det, torch.ones_like(det))
    conics = torch.stack([cov_yy / dets, -cov_xy / dets, cov_xx / dets], dim=-1)
    means2d = torch.einsum("cij,cnj->cni", Ks[:, :2, :3], torch.stack([x, y, zs], -1)) / zs[..., None]

    radii, valid = _footprint(means2d.detach(), cov_xx.detach(), cov_yy.detach(), opacities.detach(),
                              depth_ok & det_ok, width, height, radius_clip)
    means2d = torch.where(valid[..., None], means2d, torch.zeros_like(means2d))
    conics = torch.where(valid[..., None], conics, torch.zeros_like(conics))
    return means2d, conics, z, radii


@torch.no_grad()
def _footprint(
    means2d: Tensor, cov_xx: Tensor, cov_yy: Tensor, opacities: Tensor, ok: Tensor,
    width: int, height: int, radius_clip: float,
) -> Tuple[Tensor, Tensor]:
    """Opacity-aware integer radii [C, N, 2] and the visibility mask [C, N]."""
    opa = opacities[None, :].expand_as(cov_xx)
    ok = ok & (opa >= ALPHA_THRESHOLD)
    extend = torch.sqrt(2.0 * torch.log(opa.clamp_min(ALPHA_THRESHOLD) / ALPHA_THRESHOLD)).clamp_max(EXTEND_MAX)
    rx = torch.ceil(extend * cov_xx.clamp_min(0).sqrt())
    ry = torch.ceil(extend * cov_yy.clamp_min(0).sqrt())
    ok = ok & ~((rx <= radius_clip) & (ry <= radius_clip))
    mx, my = means2d.unbind(-1)
    ok = ok & (mx + rx > 0) & (mx - rx < width) & (my + ry > 0) & (my - ry < height)
    ok = ok & torch.isfinite(rx) & torch.isfinite(ry)
    radii = torch.stack([rx, ry], dim=-1).nan_to_num(0.0).clamp_max(math.ldexp(1.0, 30))
    radii = torch.where(ok[..., None], radii, torch.zeros_like(radii)).to(torch.int32)
    return radii, ok
