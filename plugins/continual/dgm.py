"""Dynamic gradient masking, SparCL's DGM (Wang et al., NeurIPS 2022), a core regime part.

After the mask action has zeroed the gradients of pruned weights, each weight tensor keeps
only the top fraction ``keep`` of the |gradient| entries among the weights its mask keeps:
with A the kept (active) entries,

    k = round(keep · |A|),   G = top-k_{e ∈ A} |g_e|,   g ← g ⊙ 1_G.

G is recomputed every ``every`` optimizer steps (the first step included) and the cached G
is applied in between; when the weight masks change, G is recomputed at the next step. Ties
in |g| go to the earlier entry (the core's ``top_k_mask``). State: the cached masks and the
step counter (plain tensors and ints).
"""
from __future__ import annotations

from typing import Dict, Optional

import torch

from sparsity_core.enforcement.base import weight_targets
from sparsity_core.enforcement.regime import RegimePart
from sparsity_core.layouts import top_k_mask
from sparsity_core.masks import MaskSet
from sparsity_core.validation import check_int, check_range


def top_gradient_mask(grad: torch.Tensor, active: torch.Tensor, keep: float) -> torch.Tensor:
    """Bool mask shaped like ``grad``: the ``round(keep·|active|)`` largest |grad| entries
    among the ``active`` ones (at least one when any is active)."""
    n_active = int(active.sum())
    k = min(n_active, max(1, int(round(keep * n_active)))) if n_active else 0
    scores = torch.where(active, grad.abs().float(), torch.full_like(grad, float("-inf"), dtype=torch.float))
    return top_k_mask(scores.reshape(-1), k).reshape(grad.shape)


class DynamicGradientMask(RegimePart):
    """Args: ``keep`` (fraction of the active gradient entries kept, SparCL: 0.2), ``every``
    (refresh interval in optimizer steps, SparCL: 30)."""

    name = "dgm"

    def __init__(self, keep: float = 0.2, every: int = 30) -> None:
        self.keep = check_range(keep, "gradient keep fraction", 0.0, 1.0, low_open=True)
        self.every = check_int(every, "every", 1)
        self.cached: Dict[str, torch.Tensor] = {}
        self.steps = 0

    def apply_masks(self, regime, ctrl, previous: Optional[MaskSet]) -> None:
        self.cached.clear()  # the active sets changed: refresh at the next step

    @torch.no_grad()
    def adjust_gradients(self, regime, ctrl, optimizer) -> None:
        refresh = self.steps % self.every == 0
        for t in weight_targets(ctrl, optimizer):
            g = t.param.grad
            if g is None:
                continue
            if refresh or t.name not in self.cached:
                active = regime.factor(ctrl, t).expand_as(g) != 0
                self.cached[t.name] = top_gradient_mask(g, active, self.keep)
            g.mul_(self.cached[t.name].to(g.dtype))
        self.steps += 1

    def density(self, name: str, numel: int) -> Optional[float]:
        """Fraction of the tensor's gradient entries the cached mask keeps (``None``: no mask yet)."""
        mask = self.cached.get(name)
        return None if mask is None else float(mask.sum()) / max(1, numel)

    def state_dict(self) -> Dict[str, object]:
        return {"cached": {k: v.detach().cpu().clone() for k, v in self.cached.items()}, "steps": self.steps}

    def load_state_dict(self, state: Dict[str, object]) -> None:
        if set(state) != {"cached", "steps"}:
            raise ValueError(f"not a DynamicGradientMask state: keys {sorted(state)}")
        self.cached = {str(k): v.clone().bool() for k, v in state["cached"].items()}
        self.steps = int(state["steps"])

    def bind(self, regime, ctrl) -> None:
        params = {t.name: t.param for t in ctrl.targets if t.param is not None}
        self.cached = {k: v.to(params[k].device) if k in params else v for k, v in self.cached.items()}

    def __repr__(self) -> str:
        return f"DynamicGradientMask(keep={self.keep}, every={self.every})"
