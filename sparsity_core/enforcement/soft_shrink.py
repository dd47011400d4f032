"""Soft shrinkage (Jiang et al., 2023, "Iterative Soft Shrinkage Learning for Efficient Image
Super-Resolution", ISS-P).

Weights outside the mask are not zeroed: at every mask update they are shrunk by a fraction
``shrink`` of their magnitude,

    w ← w · (1 − shrink · (1 − m)),

and keep training between updates, so a weight that turns out to matter can grow back into
the mask. Finalize zeroes the weights that are outside the mask at the end.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..masks import MaskSet
from ..registry import ENFORCEMENTS
from .base import Enforcement, weight_targets


@ENFORCEMENTS.register("soft_shrink")
class SoftShrink(Enforcement):
    name = "soft_shrink"
    needs_parameters = True

    def __init__(self, shrink: float = 0.1) -> None:
        super().__init__()
        if not 0.0 < shrink <= 1.0:
            raise ValueError(f"shrink must be in (0, 1], got {shrink!r}")
        self.shrink = float(shrink)

    @torch.no_grad()
    def apply_masks(self, ctrl, previous: Optional[MaskSet]) -> None:
        for t in weight_targets(ctrl):
            t.param.data.mul_(1.0 - self.shrink * (1.0 - self.factor(ctrl, t)))

    @torch.no_grad()
    def finalize(self, ctrl) -> None:
        for t in weight_targets(ctrl):
            t.param.data.mul_(self.factor(ctrl, t))

    def __repr__(self) -> str:
        return f"SoftShrink(shrink={self.shrink})"
