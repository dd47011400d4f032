"""A global sparsity schedule split over groups (blocks) by a fixed allocation.

``BlockAllocation(base=Cubic(...), allocation={"layer.0": 0.1, "layer.1": 0.4})`` follows the
global schedule ``base`` and gives each group ``g`` the sub-budget

    s_g(step) = a_g · base.value(step) / ā,      ā = mean_g a_g  (= base's final sparsity),

clipped to [0, 1): every group reaches its allocated sparsity ``a_g`` when ``base`` reaches its
final value, and all of them ramp together. ``value(step)`` is the mean of the group values
(equal cost per group, as for the blocks of a uniform transformer). FTP's sparsity scheduler
(Li et al., 2024, "FTP: A Fine-grained Token-wise Pruner for Large Language Models via Token
Routing", https://arxiv.org/abs/2412.11494) is this schedule with the allocation found by its
search (:func:`sparsity_core.calibration.ftp.search_allocation`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional

from ..validation import check_sparsity
from .base import Schedule


@dataclass(kw_only=True)
class BlockAllocation(Schedule):
    """``base`` (any schedule; its ``start_step``/``end_step`` are taken over) split over the
    groups of ``allocation`` (``{group: final sparsity}``, whose mean must equal ``base.final``
    within ``tolerance``)."""

    base: Schedule
    allocation: Dict[str, float] = field(default_factory=dict)
    tolerance: float = 1e-6

    def __post_init__(self) -> None:
        if not isinstance(self.base, Schedule):
            raise ValueError(f"base must be a Schedule, got {type(self.base).__name__}")
        if not isinstance(self.allocation, dict) or not self.allocation:
            raise ValueError(f"allocation must be a non-empty {{group: sparsity}} dict, got {self.allocation!r}")
        self.allocation = {str(g): check_sparsity(a, f"allocated sparsity of {g!r}") for g, a in self.allocation.items()}
        self.start_step, self.end_step = self.base.start_step, self.base.end_step
        super().__post_init__()
        mean = sum(self.allocation.values()) / len(self.allocation)
        if abs(mean - self.base.final) > self.tolerance:
            raise ValueError(f"the allocation's mean sparsity {mean:.6g} differs from the base schedule's final "
                             f"sparsity {self.base.final:.6g}")

    def group_values(self, step: int) -> Optional[Dict[str, float]]:
        final = self.base.final
        if final <= 0.0:
            return {g: 0.0 for g in self.allocation}
        ratio = self.base.value(step) / final
        return {g: min(max(a * ratio, 0.0), 1.0 - 1e-9) for g, a in self.allocation.items()}

    def value(self, step: int) -> float:
        groups = self.group_values(step)
        return sum(groups.values()) / len(groups)

    def is_update_step(self, step: int, every: int = 1) -> bool:
        return self.base.is_update_step(step, every)
