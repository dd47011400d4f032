"""GradBalance: steer the expected density of a concrete mask to a target without a tuned
penalty weight.

Concrete Ticket Search (Arora & Teuscher, 2025, arXiv:2512.07142) controls sparsity with a
gradient-balancing scheme instead of a penalty ``λ·‖m‖₀`` whose weight would have to be
tuned per network and sparsity. The paper's exact update was not available here; this is the
scheme as implemented in this library, written to have that property. With the objective's
gradient ``g_R = ∂R/∂s`` and the gradient of the expected density ``ρ(s) = Σ_i w_i σ(s_i) / Σ_i w_i``,
``g_C = ∂ρ/∂s``, the logits receive

    g = ‖g_R‖ · ( g_R / ‖g_R‖ + β_t · g_C / ‖g_C‖ ),
    β_t = gain · clip((ρ_t − κ) / (tolerance · κ), −1, 1)

where ``κ`` is the target density (1 − sparsity). Both directions are normalised, so the
balance does not depend on the loss's scale or the number of units; far from the target
(``|ρ − κ| ≥ tolerance·κ``) the density term has ``gain`` (> 1) times the objective's norm,
so the combined gradient always has a component along ``∓g_C`` that moves ``ρ`` toward
``κ`` (the unit directions' inner product is at most 1; an adaptive optimizer's
per-coordinate scaling comes after this and is not covered by the argument); within the
tolerance band it fades in proportion to the error, letting the objective decide which units
to keep. The final mask is chosen by the largest logits at exactly the requested sparsity,
so the band only bounds the gap between the relaxed and the final mask.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence

import torch

from ..validation import check_positive, check_range


@dataclass
class GradBalance:
    """Combine objective and density gradients (see the module doc).

    Args:
        gain: weight of the density direction far from the target (> 1 guarantees progress).
        tolerance: relative density error ``|ρ − κ| / κ`` below which the push fades linearly.
    """

    gain: float = 2.0
    tolerance: float = 0.05

    def __post_init__(self) -> None:
        self.gain = check_positive(self.gain, "gain")
        self.tolerance = check_range(self.tolerance, "tolerance", 0.0, 1.0, low_open=True)

    def coefficient(self, density: float, target: float) -> float:
        """``β_t`` for the current expected density and the target density."""
        error = (density - target) / (self.tolerance * target)
        return self.gain * max(-1.0, min(1.0, error))

    def combine(self, objective: Sequence[torch.Tensor], density_grad: Sequence[torch.Tensor], density: float,
                target: float) -> List[torch.Tensor]:
        """The balanced gradients, one per logit tensor."""
        norm_r = torch.sqrt(sum((g.double() ** 2).sum() for g in objective))
        norm_c = torch.sqrt(sum((g.double() ** 2).sum() for g in density_grad))
        beta = self.coefficient(density, target)
        # ‖g_R‖ (ĝ_R + β ĝ_C) = g_R + β ‖g_R‖/‖g_C‖ g_C; a zero objective gradient counts as norm 1
        scale = 0.0 if norm_c == 0 else float(beta * (norm_r if norm_r > 0 else 1.0) / norm_c)
        return [gr + scale * gc for gr, gc in zip(objective, density_grad)]
