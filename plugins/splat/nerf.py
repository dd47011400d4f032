"""``NeRFField``: an Instant-NGP-style radiance field, the plugin's hash encoding and a tiny MLP.

Müller et al., 2022, "Instant Neural Graphics Primitives with a Multiresolution Hash
Encoding" (https://arxiv.org/abs/2201.05989), §5.4; the radiance field of Mildenhall et al.,
2020, "NeRF" (https://arxiv.org/abs/2003.08934). A point ``x`` of the scene's box
``[−b, b]³`` is mapped to ``[0, 1]³`` and encoded by a 3D
:class:`~.hashgrid.HashEncoding` ``h(x)`` (``L·F`` values). Then

    (ρ, g) = MLP_σ(h(x))            one hidden layer; ρ a scalar, g ``geo_features`` values,
    σ(x) = exp(min(ρ, 15))          the density (Instant-NGP's exponential activation),
    c(x, d) = sigmoid(MLP_c(g, Y(d)))  the colour, two hidden layers; Y the real spherical
                                     harmonics of the view direction d up to degree 2 (9 values).

With ``saliency_resolution`` the encoding carries HollowNeRF's gate (Xie et al., 2023,
"HollowNeRF: Pruning Hashgrid-Based NeRFs with Trainable Collision Mitigation",
https://arxiv.org/abs/2308.10122): ``h(x)`` is multiplied by the trained saliency ``s(x)``, and
:class:`~.hashgrid_pruning.HashGridPruning` prunes and removes the hash entries. Rendering
is :func:`.nerf_render.render_rays`; training is :class:`.nerf_module.NeRFModule`.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor, nn

from sparsity_core.validation import check_int, check_positive

from .hashgrid import HashEncoding


def sh_degree2(d: Tensor) -> Tensor:
    """The 9 real spherical harmonics ``Y_l^m`` (l ≤ 2) of unit vectors ``d [..., 3]``."""
    x, y, z = d.unbind(-1)
    return torch.stack([
        torch.full_like(x, 0.28209479177387814),
        -0.4886025119029199 * y, 0.4886025119029199 * z, -0.4886025119029199 * x,
        1.0925484305920792 * x * y, -1.0925484305920792 * y * z, 0.31539156525252005 * (3 * z * z - 1),
        -1.0925484305920792 * x * z, 0.5462742152960396 * (x * x - y * y)], -1)


class NeRFField(nn.Module):
    """``(points [P, 3], dirs [P, 3]) -> (σ [P], rgb [P, 3])`` (module docstring).

    Args:
        bound: the scene lies in ``[−bound, bound]³``.
        levels, log2_table_size, features, base_resolution, max_resolution, table_size: the
            hash encoding (``L``, ``log2 T``, ``F``, ``N_min``, ``N_max`` over the box, ``T`` given
            directly); see :class:`~.hashgrid.HashEncoding`.
        saliency_resolution: vertices per axis of the HollowNeRF gate (``None``: no gate).
        hidden: width of the MLPs' hidden layers.
        geo_features: values passed from the density MLP to the colour MLP.
    """

    def __init__(self, bound: float = 1.5, levels: int = 8, log2_table_size: int = 14, features: int = 2,
                 base_resolution: int = 16, max_resolution: int = 256, saliency_resolution: Optional[int] = None,
                 hidden: int = 64, geo_features: int = 15, table_size: Optional[int] = None) -> None:
        super().__init__()
        self.bound = check_positive(bound, "bound")
        check_int(hidden, "hidden", 1)
        check_int(geo_features, "geo_features", 1)
        self.encoding = HashEncoding(dim=3, levels=levels, log2_table_size=log2_table_size, features=features,
                                     base_resolution=base_resolution, max_resolution=max_resolution,
                                     saliency_resolution=saliency_resolution, table_size=table_size)
        self.density_mlp = nn.Sequential(nn.Linear(self.encoding.output_dim, hidden), nn.ReLU(),
                                         nn.Linear(hidden, 1 + geo_features))
        self.color_mlp = nn.Sequential(nn.Linear(geo_features + 9, hidden), nn.ReLU(), nn.Linear(hidden, hidden),
                                       nn.ReLU(), nn.Linear(hidden, 3))

    def _check(self, points: Tensor) -> None:
        if points.dim() != 2 or points.shape[-1] != 3:
            raise ValueError(f"points must be [P, 3], got {tuple(points.shape)}")

    def _geometry(self, points: Tensor) -> Tuple[Tensor, Tensor]:
        h = self.density_mlp(self.encoding((points + self.bound) / (2 * self.bound)))
        return torch.exp(h[:, 0].clamp(max=15.0)), h[:, 1:]

    def density(self, points: Tensor) -> Tensor:
        """``σ [P]`` at ``points [P, 3]``."""
        self._check(points)
        return self._geometry(points)[0]

    def forward(self, points: Tensor, dirs: Tensor) -> Tuple[Tensor, Tensor]:
        self._check(points)
        if dirs.shape != points.shape:
            raise ValueError(f"dirs must match points {tuple(points.shape)}, got {tuple(dirs.shape)}")
        sigma, geo = self._geometry(points)
        rgb = torch.sigmoid(self.color_mlp(torch.cat([geo, sh_degree2(dirs)], -1)))
        return sigma, rgb

    def mlp_parameters(self) -> int:
        """Parameters of the two MLPs (the same in every configuration of one size)."""
        return sum(p.numel() for m in (self.density_mlp, self.color_mlp) for p in m.parameters())
