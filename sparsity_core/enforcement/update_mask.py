"""Update masking: the mask says which entries *train*; the others keep their values.

Hard masking zeroes pruned weights; fine-tuning a subnetwork (SPT, the parameters an RL or
SFT run changed, a task's free weights in PackNet) instead freezes them where they are. With
``m`` the 0/1 mask broadcast to the weight and ``w₀`` the weights when the mask was set:

- before each optimizer step: ``g ← m ⊙ g`` (no gradient reaches a frozen entry);
- after it: ``w ← m ⊙ w + (1 − m) ⊙ w₀`` (weight decay, momentum or an optimizer's own
  arithmetic cannot move a frozen entry either);
- when masks change, optimizer state of the frozen entries is zeroed and ``w₀`` is re-read.

Memory: ``(1 − m) ⊙ w₀`` is one extra tensor per masked weight. Nothing is zeroed, so the
program's weights are dense: programs using this enforcement report a trainable fraction,
not removed parameters. ``w₀`` is not saved: the frozen entries of the weights are ``w₀``,
so after a resume it is read back from the restored weights before the next step.
"""
from __future__ import annotations

from typing import Dict, Optional

import torch

from ..masks import MaskSet, mask_optimizer_state_
from ..registry import ENFORCEMENTS
from .base import Enforcement, weight_targets


@ENFORCEMENTS.register("update_mask")
class UpdateMask(Enforcement):
    name = "update_mask"
    needs_parameters = True
    #: the weights stay dense (nothing is removed)
    zeroes_weights = False

    def __init__(self) -> None:
        super().__init__()
        self._frozen: Dict[str, tuple] = {}  # name -> (mask, (1 − m) ⊙ w₀)

    def _frozen_values(self, ctrl, target) -> torch.Tensor:
        mask = ctrl.masks[target.name]
        cached = self._frozen.get(target.name)
        if cached is None or cached[0] is not mask:
            p = target.param
            cached = (mask, p.detach() * (1 - self.factor(ctrl, target)))
            self._frozen[target.name] = cached
        return cached[1]

    @torch.no_grad()
    def apply_masks(self, ctrl, previous: Optional[MaskSet]) -> None:
        self._frozen.clear()
        for t in weight_targets(ctrl):
            self._frozen_values(ctrl, t)
            for opt in ctrl.optimizers:
                mask_optimizer_state_(opt, t.param, t, ctrl.masks[t.name])

    @torch.no_grad()
    def before_optimizer_step(self, ctrl, optimizer) -> None:
        for t in weight_targets(ctrl, optimizer):
            self._frozen_values(ctrl, t)  # read w₀ before the first step after a resume
            if t.param.grad is not None:
                t.param.grad.mul_(self.factor(ctrl, t))

    @torch.no_grad()
    def after_optimizer_step(self, ctrl) -> None:
        for t in weight_targets(ctrl):
            if t.name in self._frozen:
                t.param.data.mul_(self.factor(ctrl, t)).add_(self._frozen_values(ctrl, t))

    def weights_reset(self, ctrl) -> None:
        self._frozen.clear()

    def bind(self, ctrl) -> None:
        self._frozen.clear()

    def load_state_dict(self, state: Dict[str, object]) -> None:
        self._frozen.clear()
