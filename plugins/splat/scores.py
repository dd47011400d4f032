"""Per-Gaussian importance scores from training-time priors (Taming 3DGS).

Taming 3DGS (Mallick et al., 2024) decides which Gaussians to densify by sampling them in
proportion to a score that mixes several priors gathered while training. Each prior ``p_c``
is divided by its median over the Gaussians that have it (so priors of different units
weigh alike) and the score is the weighted sum

    score_i = ε + Σ_c w_c · p_{c,i} / median_j(p_{c,j}),

``ε`` keeping every Gaussian sampleable. Priors (all ≥ 0, accumulated since the last
refinement unless said otherwise):

- ``grad``: mean norm of the image-plane position gradient (the 3DGS densification signal);
- ``opacity``: σ(opacity logit);
- ``depth``: inverse mean depth (near Gaussians cover more pixels per unit of error);
- ``coverage``: pixels the Gaussian reached with α ≥ 1/255;
- ``volume``: product of its three scales;
- ``blend``: summed blend weight α·T over the pixels it reached;
- ``loss``: pixel hits weighted by the per-pixel loss (appearance error under it).
"""
from __future__ import annotations

from typing import Dict, Mapping

import torch
from torch import Tensor

PRIORS = ("grad", "opacity", "depth", "coverage", "volume", "blend", "loss")
DEFAULT_WEIGHTS: Dict[str, float] = {"grad": 1.0, "opacity": 0.5, "depth": 0.25, "coverage": 0.5, "volume": 0.25,
                                     "blend": 1.0, "loss": 1.0}


def check_weights(weights: Mapping[str, float]) -> Dict[str, float]:
    unknown = sorted(set(weights) - set(PRIORS))
    if unknown:
        raise ValueError(f"unknown score prior(s) {unknown}; valid: {', '.join(PRIORS)}")
    bad = {k: v for k, v in weights.items() if not (isinstance(v, (int, float)) and v >= 0)}
    if bad:
        raise ValueError(f"score weights must be numbers >= 0, got {bad}")
    if not any(v > 0 for v in weights.values()):
        raise ValueError("at least one score weight must be > 0")
    return {k: float(v) for k, v in weights.items()}


def median_normalized(values: Tensor) -> Tensor:
    """``values / median`` of its positive entries (all zeros stay zeros)."""
    values = values.float().clamp_min(0)
    positive = values[values > 0]
    if positive.numel() == 0:
        return torch.zeros_like(values)
    return values / positive.median()


def importance(priors: Mapping[str, Tensor], weights: Mapping[str, float], eps: float = 1e-6) -> Tensor:
    """The weighted score above over the priors present in ``priors`` (missing ones skipped)."""
    present = [k for k, w in weights.items() if w > 0 and k in priors]
    if not present:
        raise ValueError(f"none of the weighted priors {sorted(k for k, w in weights.items() if w > 0)} is available; "
                         f"have {sorted(priors)}")
    n = priors[present[0]].numel()
    score = torch.full((n,), eps, device=priors[present[0]].device)
    for k in present:
        p = priors[k].reshape(-1)
        if p.numel() != n:
            raise ValueError(f"prior {k!r} has {p.numel()} entries, expected {n}")
        if not torch.isfinite(p).all():
            raise ValueError(f"prior {k!r} has NaN/Inf entries")
        score += weights[k] * median_normalized(p)
    return score
