"""SparCL's weight importance (Wang et al., NeurIPS 2022, "SparCL: Sparse Continual Learning
on the Edge"), a core criterion:

    I(w) = |w| + λ·|g|,

g the gradient of the last mini-batch's loss (the current-task loss plus the replay terms, so
what the buffer holds counts as much as the current task). Per unit: Σ over its entries.
It observes every optimizer step (the dense gradient, before masks act on it) and keeps only
the last one; before any gradient it is |w| alone.
"""
from __future__ import annotations

from typing import Dict, Optional

import torch

from sparsity_core.criteria.base import Criterion, ScoreContext
from sparsity_core.targets import Target
from sparsity_core.validation import check_nonnegative


def _abs_grad(w: torch.Tensor, g: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return None if g is None else g.float().abs()


class WeightGradientImportance(Criterion):
    """``|w| + λ|g|`` per unit (see the module); ``lam`` is λ (SparCL: 0.5)."""

    observes = "step"

    def __init__(self, lam: float = 0.5) -> None:
        self.lam = check_nonnegative(lam, "importance weight λ")
        self._grads: Dict[str, torch.Tensor] = {}

    def observe(self, target: Target, context: ScoreContext) -> None:
        g = target.unit_reduce(_abs_grad, context)
        if g is not None:
            self._grads[target.name] = g.float().reshape(-1).cpu()

    def score(self, target: Target, context: ScoreContext) -> torch.Tensor:
        w = target.unit_reduce(lambda w, g: w.float().abs(), context).float().reshape(-1).cpu()
        g = self._grads.get(target.name)
        return w if g is None or g.numel() != w.numel() else w + self.lam * g

    def reset(self) -> None:
        """Scores use the last gradient only: nothing accumulates between updates."""

    def state_dict(self) -> Dict[str, object]:
        return {"grads": {k: v.clone() for k, v in self._grads.items()}}

    def load_state_dict(self, state: Dict[str, object]) -> None:
        if set(state) - {"grads"}:
            raise ValueError(f"not a WeightGradientImportance state: keys {sorted(state)}")
        self._grads = {str(k): v.clone() for k, v in state.get("grads", {}).items()}

    def __repr__(self) -> str:
        return f"WeightGradientImportance(lam={self.lam})"
