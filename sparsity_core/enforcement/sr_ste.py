"""SR-STE: sparse-refined straight-through estimator (Zhou et al., 2021, "Learning N:M
Fine-grained Structured Sparse Neural Networks From Scratch", ICLR).

Forward with the mask, w̃ = m ⊙ w; the dense weights are updated with the straight-through
gradient plus a decay that pulls pruned weights toward zero:

    w ← w − η · ( ∂L/∂w̃ + λ · (1 − m) ⊙ w )

which damps the mask oscillation ("flip") that plain STE suffers. The paper uses λ = 2e-4
with SGD + momentum (the form above, ``decoupled=False``, the default).

With an adaptive optimizer the term above passes through the optimizer's per-weight
rescaling (Adam divides it by √v̂ together with ∂L/∂w̃), so its strength depends on the
gradient statistics of each weight. ``decoupled=True`` applies the decay to the weights
instead, outside the optimizer's update, the way AdamW decouples weight decay (Loshchilov &
Hutter, 2019, "Decoupled Weight Decay Regularization"), restricted to the pruned entries:

    w ← w − η · λ · (1 − m) ⊙ w − η · u(∂L/∂w̃)

where η is the learning rate of the weight's parameter group at this step and u the
optimizer's own update direction from the straight-through gradient alone. As in
``torch.optim.AdamW`` the shrink is applied just before the optimizer's step, and not to
parameters without a gradient (a step that a gradient scaler then skips for an overflow
still shrinks). The per-step shrink is η·λ, so a decoupled λ is on AdamW's
``weight_decay`` scale (η·λ is what matters), not on the coupled λ's. In ``bench/nm.py``
(MNIST, AdamW, 2:4) decoupling halved the mask flips but did not raise accuracy over STE,
so the default stays the paper's coupled form.

A regime part (a gradient rule): alone it runs on straight-through masking; with another
action or other parts, compose it, e.g. ``Regime(DecayingMask(...), SRSTE(2e-4))`` or
``Regime(StraightThrough(), SRSTE(), PruneRegrow("gradient", ...))``.
"""
from __future__ import annotations

from typing import Dict

import torch

from ..registry import ENFORCEMENTS
from ..validation import check_nonnegative
from .base import Enforcement, weight_targets
from .regime import RegimePart
from .straight_through import StraightThrough


def _learning_rates(optimizer) -> Dict[int, float]:
    """The current learning rate of every parameter of ``optimizer``, by ``id``."""
    return {id(p): float(group["lr"]) for group in optimizer.param_groups for p in group["params"]}


@ENFORCEMENTS.register("sr_ste")
class SRSTE(RegimePart):
    """SR-STE's decay of pruned weights (see the module docstring).

    Args:
        decay: λ ≥ 0.
        decoupled: ``False``: add λ(1 − m) ⊙ w to the gradient (the paper's form, for SGD);
            ``True``: shrink the pruned weights by η·λ directly, outside the optimizer's
            update (AdamW-style).
    """

    name = "sr_ste"

    def __init__(self, decay: float = 2e-4, decoupled: bool = False) -> None:
        self.decay = check_nonnegative(decay, "SR-STE decay λ")
        if not isinstance(decoupled, bool):
            raise ValueError(f"SR-STE decoupled must be True or False, got {decoupled!r}")
        self.decoupled = decoupled

    def default_action(self) -> Enforcement:
        return StraightThrough()

    @torch.no_grad()
    def adjust_gradients(self, regime, ctrl, optimizer) -> None:
        if self.decay == 0.0:
            return
        lrs = _learning_rates(optimizer) if self.decoupled else {}
        for t in weight_targets(ctrl, optimizer):  # the action put the dense w in the parameter
            if t.param.grad is None:
                continue
            pruned = 1.0 - regime.factor(ctrl, t)
            if self.decoupled:  # the tensor the optimizer is about to update
                t.param.data.mul_(1.0 - lrs[id(t.param)] * self.decay * pruned)
            else:
                t.param.grad.add_(regime.dense_weight(t) * pruned, alpha=self.decay)

    def __repr__(self) -> str:
        extra = ", decoupled=True" if self.decoupled else ""
        return f"SRSTE(decay={self.decay}{extra})"
