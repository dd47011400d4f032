"""Straight-through masking (STE; Bengio et al., 2013; as used for sparse training by Zhou
et al., 2021, "Learning N:M Fine-grained Structured Sparse Neural Networks From Scratch").

The forward pass uses w̃ = m ⊙ w while the dense weights w are kept and updated with the
gradient taken at w̃ (straight through the mask):  w ← w − η·∂L/∂w̃.  Pruned weights keep
learning and can come back when masks are recomputed.

Implementation: the parameter holds w̃ at all times outside the optimizer step, so the
model's ``state_dict`` keys and values are those of a plain sparse model; the dense weights
live in this enforcement (and in the callback state). Right before the optimizer step the
parameter is filled with the dense weights; right after it the result is stored as the new
dense weights and the parameter is masked again.
"""
from __future__ import annotations

from typing import Dict, Optional

import torch

from ..masks import MaskSet
from ..registry import ENFORCEMENTS
from ..targets import Target
from .base import Enforcement, weight_targets


@ENFORCEMENTS.register("ste")
class StraightThrough(Enforcement):
    name = "ste"
    needs_parameters = True

    def __init__(self) -> None:
        super().__init__()
        self.dense: Dict[str, torch.Tensor] = {}
        self._swapped: set = set()

    def write_forward_weight(self, ctrl, target: Target) -> None:
        """Fill the parameter with the weights the forward pass uses, m ⊙ w (regimes with
        soft masks override this)."""
        torch.mul(self.dense[target.name], self.factor(ctrl, target), out=target.param.data)

    @torch.no_grad()
    def apply_masks(self, ctrl, previous: Optional[MaskSet]) -> None:
        for t in weight_targets(ctrl):
            if t.name not in self.dense:
                self.dense[t.name] = t.param.detach().clone()
            self.write_forward_weight(ctrl, t)

    @torch.no_grad()
    def before_optimizer_step(self, ctrl, optimizer) -> None:
        for t in weight_targets(ctrl, optimizer):
            if t.name in self.dense and t.name not in self._swapped:
                t.param.data.copy_(self.dense[t.name])
                self._swapped.add(t.name)

    @torch.no_grad()
    def after_optimizer_step(self, ctrl) -> None:
        for t in weight_targets(ctrl):
            if t.name in self._swapped:
                self.dense[t.name].copy_(t.param.data)
                self._swapped.discard(t.name)
            if t.name in self.dense:
                self.write_forward_weight(ctrl, t)

    @torch.no_grad()
    def finalize(self, ctrl) -> None:
        self.after_optimizer_step(ctrl)
        for t in weight_targets(ctrl):
            t.param.data.mul_(self.factor(ctrl, t))
        self.dense.clear()

    @torch.no_grad()
    def weights_reset(self, ctrl) -> None:
        for t in weight_targets(ctrl):
            if t.name in self.dense:
                self.dense[t.name].copy_(t.param.data)

    def dense_weight(self, target: Target) -> torch.Tensor:
        if target.name in self.dense:
            return self.dense[target.name]
        return super().dense_weight(target)

    def state_dict(self) -> Dict[str, object]:
        return {"dense": {k: v.detach().cpu().clone() for k, v in self.dense.items()}}

    def load_state_dict(self, state: Dict[str, object]) -> None:
        self.dense = {k: v.clone() for k, v in state.get("dense", {}).items()}
        self._swapped.clear()

    def bind(self, ctrl) -> None:
        """Move loaded dense weights to their parameters' devices/dtypes."""
        for t in weight_targets(ctrl):
            if t.name in self.dense:
                self.dense[t.name] = self.dense[t.name].to(device=t.param.device, dtype=t.param.dtype)
