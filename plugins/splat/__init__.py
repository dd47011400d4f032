"""3D plugin (gsplat / NeRF-style fields): budgeted Gaussian densification, a CPU
renderer, hash-grid pruning, an Instant-NGP-style NeRF with occupancy-grid ray marching.

``gsplat`` is imported only when a function needs it (``pip install 'sparsity-suite[splat]'``).
"""
from __future__ import annotations

from importlib import import_module

from .._lazy import lazy_getattr

_EXPORTS = {"BudgetedStrategy": "budgeted", "prune_to_budget": "budgeted", "importance": "scores",
            "PosedImages": "data", "load_npz": "data", "load_nerf_synthetic": "data", "ResidualGate": "queen",
            "ResidualGating": "queen_program",
            "GaussianSplatModule": "module", "random_splats": "module", "psnr": "module", "render": "render",
            "rasterize": "render", "project_gaussians": "render_project", "contribution_stats": "render_stats",
            "HashEncoding": "hashgrid", "SaliencyGrid": "hashgrid", "SaliencyADMM": "hashgrid_admm",
            "project_budget": "hashgrid_admm", "HashGridPruning": "hashgrid_pruning",
            "SaliencyUsage": "hashgrid_pruning", "NeRFField": "nerf", "NeRFModule": "nerf_module",
            "PosedRays": "nerf_module", "OccupancyGrid": "occupancy", "camera_rays": "nerf_render",
            "composite": "nerf_render", "render_rays": "nerf_render"}

__all__ = sorted(_EXPORTS) + ["register"]


def register() -> None:
    """Entry point of the ``sparsity_suite.plugins`` group: registers the ``hashgrid`` and
    ``queen`` programs and the ``saliency_usage`` criterion."""
    import_module(f"{__name__}.hashgrid_pruning")
    import_module(f"{__name__}.queen_program")


__getattr__ = lazy_getattr(__name__, _EXPORTS)
