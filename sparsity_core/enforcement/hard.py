"""Hard masking: pruned weights are zero and stay zero.

When masks change, pruned weights and their optimizer state (Adam moments, SGD momentum:
every state tensor shaped like the weight) are zeroed, so no stale momentum revives them.
Before each optimizer step their gradients are zeroed; after it the weights are zeroed again
(weight decay or an optimizer's own arithmetic cannot move them)."""
from __future__ import annotations

from typing import Optional

import torch

from ..masks import MaskSet, mask_optimizer_state_
from ..registry import ENFORCEMENTS
from .base import Enforcement, weight_targets


@ENFORCEMENTS.register("hard")
class HardMask(Enforcement):
    name = "hard"
    needs_parameters = True

    @torch.no_grad()
    def apply_masks(self, ctrl, previous: Optional[MaskSet]) -> None:
        for t in weight_targets(ctrl):
            t.param.data.mul_(self.factor(ctrl, t))
            for opt in ctrl.optimizers:
                mask_optimizer_state_(opt, t.param, t, ctrl.masks[t.name])

    @torch.no_grad()
    def before_optimizer_step(self, ctrl, optimizer) -> None:
        for t in weight_targets(ctrl, optimizer):
            if t.param.grad is not None:
                t.param.grad.mul_(self.factor(ctrl, t))

    @torch.no_grad()
    def after_optimizer_step(self, ctrl) -> None:
        for t in weight_targets(ctrl):
            t.param.data.mul_(self.factor(ctrl, t))

    def finalize(self, ctrl) -> None:
        self.after_optimizer_step(ctrl)
