"""Projected gradient descent onto the ℓ₀ ball (as TEDDY trains its weights; Seo et al.,
2024).

The optimizer updates the weights without any mask (pruned weights receive their gradients
and may grow back); after every optimizer step the weights are projected onto
``{θ : ‖θ‖₀ ≤ k}``, ``k = ⌈(1 − s)·|θ|⌉`` for the schedule's current sparsity ``s``: the
controller's criterion and allocator (magnitude + global ranking = the exact Euclidean
projection) choose the kept entries and all others are set to zero, their optimizer
moments too. The new masks are installed through the controller's one path
(:meth:`~sparsity_core.controller.SparsityController.replace_masks`: broadcast under DDP, a
history entry when they changed).
"""
from __future__ import annotations

import torch

from ..registry import ENFORCEMENTS
from .hard import HardMask


@ENFORCEMENTS.register("projected_l0")
class ProjectedL0(HardMask):
    name = "projected_l0"

    def before_optimizer_step(self, ctrl, optimizer) -> None:
        """Gradients stay dense: the projection happens after the step."""

    @torch.no_grad()
    def after_optimizer_step(self, ctrl) -> None:
        if ctrl.current_sparsity <= 0.0:
            return
        new = ctrl.masks_for(ctrl.current_sparsity, ctrl.compute_scores(ctrl.step))
        ctrl.replace_masks(new, ctrl.step, event="projection", only_if_changed=True)
