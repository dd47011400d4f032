"""Learning-rate schedules for a fixed iteration budget.

:class:`UBA` is the Unified Budget-Aware schedule of Tang, Dong, Zeng, Zhou & Lin, "Stepsize
anything: A unified learning rate schedule for budgeted-iteration training" (NeurIPS 2025,
arXiv:2505.24452). For a budget of ``T`` optimizer steps, a peak rate ``η_max`` (the
optimizer's initial ``lr`` of each parameter group), a floor ``η_min`` and the paper's single
hyper-parameter ``φ > 0``::

    θ_t = π · min(t, T) / T
    η_t = η_min + (η_max − η_min) · 2 (1 + cos θ_t) / (2φ + (2 − φ)(1 + cos θ_t))
        = η_min + 2 (η_max − η_min) / (2 + φ · tan²(θ_t / 2))

so ``η_0 = η_max``, ``η_T = η_min`` and the rate decreases monotonically in between. ``φ = 2``
is cosine annealing; a smaller ``φ`` keeps the rate high for longer and drops it late, a
larger one drops it early (the paper ties ``φ`` to the condition number of the loss
landscape).

Source of the formula: the search corpus held the paper's abstract but not its equations;
the expression above is the one a public implementation of the paper's schedule uses, and it
was checked here to satisfy the properties the paper states (one hyper-parameter, budget
``T``, ``η_0 = η_max``, ``η_T = η_min``, cosine as a member of the family). The paper's
multi-stage (restart) variant is not implemented.

Use from Lightning (the budget counts optimizer steps, so step the scheduler every step)::

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)
        sched = UBA(opt, total_steps=self.trainer.estimated_stepping_batches, phi=0.5)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
"""
from __future__ import annotations

import math
from typing import List

import torch
from torch.optim.lr_scheduler import LRScheduler

from .validation import check_int, check_nonnegative, check_positive


def uba_factor(step: int, total_steps: int, phi: float) -> float:
    """``(η_t − η_min) / (η_max − η_min)`` at ``step`` of a budget of ``total_steps``: 1 at
    step 0, 0 from ``total_steps`` on."""
    c = 1.0 + math.cos(math.pi * min(max(step, 0), total_steps) / total_steps)  # 1 + cos θ in [0, 2]
    return 2.0 * c / (2.0 * phi + (2.0 - phi) * c)


class UBA(LRScheduler):
    """Unified Budget-Aware learning-rate schedule (see the module docstring for the formula).

    Args:
        optimizer: its parameter groups' initial ``lr`` are the peak rates ``η_max``.
        total_steps: the iteration budget ``T`` (scheduler steps; use ``interval="step"``).
        phi: the schedule's hyper-parameter ``φ > 0`` (2 is cosine annealing).
        eta_min: the final rate ``η_min`` (at most every group's peak rate).
        last_epoch: index of the last step taken (``-1`` for a fresh schedule), as in PyTorch.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, total_steps: int, phi: float = 1.0, eta_min: float = 0.0,
                 last_epoch: int = -1) -> None:
        self.total_steps = check_int(total_steps, "total_steps", 1)
        phi = check_positive(phi, "phi (2 is cosine annealing)")
        eta_min = check_nonnegative(eta_min, "eta_min")
        peaks = [g.get("initial_lr", g["lr"]) for g in optimizer.param_groups]
        low = [p for p in peaks if isinstance(p, (int, float)) and p < eta_min]
        if low:
            raise ValueError(f"eta_min={eta_min} is above the peak learning rate {min(low)} of a parameter group")
        self.phi = float(phi)
        self.eta_min = float(eta_min)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> List[float]:
        return self._get_closed_form_lr()

    def _get_closed_form_lr(self) -> List[float]:
        f = uba_factor(self.last_epoch, self.total_steps, self.phi)
        return [self.eta_min + (base - self.eta_min) * f for base in self.base_lrs]

    def __repr__(self) -> str:
        return f"UBA(total_steps={self.total_steps}, phi={self.phi}, eta_min={self.eta_min})"
