"""The concrete relaxation of a binary mask, and the criterion that scores by its logits.

Each unit ``i`` gets a logit ``s_i``; its retention probability is ``p_i = σ(s_i)``. A
Binary Concrete sample (Maddison et al., 2017; Jang et al., 2017) with temperature ``τ`` is

    u ~ U(0, 1),   m̃_i = σ((s_i + log u − log(1 − u)) / τ)

a differentiable surrogate of ``Bernoulli(p_i)`` that becomes binary as ``τ → 0``. The hard
concrete variant (Louizos, Welling & Kingma, 2018) stretches it to ``(γ, ζ)`` and clips:
``m̃_i = min(1, max(0, m̃_i (ζ − γ) + γ))``, so exact zeros and ones have positive probability
(``γ = −0.1, ζ = 1.1`` in that paper).

Concrete Ticket Search (Arora & Teuscher, 2025, "Winning the Lottery by Preserving Network
Training Dynamics with Concrete Ticket Search", arXiv:2512.07142) learns the logits
(:mod:`~sparsity_core.tickets.search`); the final mask keeps the units with the largest
logits. :class:`ConcreteScores` is that last step in the core's vocabulary: a criterion whose
scores are the learned logits, so the usual allocator and layout pick exactly the requested
number of units.
"""
from __future__ import annotations

from typing import Dict, Mapping, Optional, Tuple

import torch

from ..criteria.base import Criterion, ScoreContext
from ..registry import CRITERIA
from ..targets import Target

EPS = 1e-6


def check_stretch(stretch: Optional[Tuple[float, float]]) -> Optional[Tuple[float, float]]:
    """``None`` or a hard concrete interval ``(γ, ζ)`` with ``γ < 0`` and ``ζ > 1``."""
    if stretch is None:
        return None
    try:
        low, high = (float(v) for v in stretch)
    except (TypeError, ValueError):
        raise ValueError(f"stretch must be None or a pair (gamma < 0, zeta > 1), got {stretch!r}") from None
    if not (low < 0 and high > 1):
        raise ValueError(f"stretch must be None or a pair (gamma < 0, zeta > 1), got {stretch!r}")
    return low, high


def binary_concrete(logits: torch.Tensor, temperature: float, generator: Optional[torch.Generator] = None,
                    stretch: Optional[Tuple[float, float]] = None) -> torch.Tensor:
    """A relaxed mask sample ``m̃`` (differentiable in ``logits``); ``stretch=(γ, ζ)`` gives the
    hard concrete sample."""
    u = torch.rand(logits.shape, generator=generator, dtype=logits.dtype).to(logits.device).clamp_(EPS, 1 - EPS)
    y = torch.sigmoid((logits + torch.log(u) - torch.log1p(-u)) / temperature)
    if stretch is not None:
        low, high = stretch
        y = (y * (high - low) + low).clamp(0.0, 1.0)
    return y


def expected_density(logits: Mapping[str, torch.Tensor], weights: Optional[Mapping[str, float]] = None) -> torch.Tensor:
    """``Σ_i w_i σ(s_i) / Σ_i w_i`` over every unit of every target (``w``: parameters per unit,
    1 by default): the expected fraction kept, differentiable in the logits."""
    num = den = 0.0
    for name, s in logits.items():
        w = 1.0 if weights is None else float(weights[name])
        num = num + w * torch.sigmoid(s).sum()
        den += w * s.numel()
    return num / den


@CRITERIA.register("concrete")
class ConcreteScores(Criterion):
    """Scores = learned concrete logits ``s`` (higher = keep), one tensor per target shaped
    like its mask. Filled by :func:`~sparsity_core.tickets.search.concrete_ticket_search`
    (or loaded from a state); scoring a target without logits is an error."""

    observes = "never"

    def __init__(self, logits: Optional[Mapping[str, torch.Tensor]] = None) -> None:
        self.logits: Dict[str, torch.Tensor] = {k: v.detach().clone() for k, v in (logits or {}).items()}

    def score(self, target: Target, context: ScoreContext) -> torch.Tensor:
        if target.name not in self.logits:
            raise ValueError(f"ConcreteScores has no learned logits for {target.name!r}; run concrete_ticket_search "
                             "(or the 'cts' program) first")
        s = self.logits[target.name]
        if s.numel() != target.num_units:
            raise ValueError(f"learned logits for {target.name!r} have {s.numel()} entries, the target has "
                             f"{target.num_units} units")
        return s.reshape(-1)

    def reset(self) -> None:
        """The logits are the search's result, not statistics of the last interval: kept."""

    def state_dict(self) -> Dict[str, object]:
        return {"logits": {k: v.detach().cpu().clone() for k, v in self.logits.items()}}

    def load_state_dict(self, state: Dict[str, object]) -> None:
        logits = state.get("logits") if isinstance(state, Mapping) else None
        if not isinstance(logits, Mapping) or not all(isinstance(v, torch.Tensor) for v in logits.values()):
            raise ValueError(f"not a ConcreteScores state: {sorted(state) if isinstance(state, Mapping) else state!r}")
        self.logits = {k: v.clone() for k, v in logits.items()}

    def __repr__(self) -> str:
        return f"ConcreteScores(targets={len(self.logits)})"
