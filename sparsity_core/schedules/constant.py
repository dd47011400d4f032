"""Constant sparsity from ``start_step`` on (one-shot pruning at ``start_step``)."""
from __future__ import annotations

from dataclasses import dataclass

from ..validation import check_sparsity
from ..registry import SCHEDULES
from .base import Schedule


@SCHEDULES.register("constant")
@dataclass(kw_only=True)
class Constant(Schedule):
    """0 before ``start_step``, ``sparsity`` from it on. Masks are computed at ``start_step``
    and, when ``end_step > start_step``, recomputed every ``every`` steps until ``end_step``."""

    sparsity: float = 0.5

    def __post_init__(self) -> None:
        if self.end_step < self.start_step:
            self.end_step = self.start_step
        super().__post_init__()
        check_sparsity(self.sparsity)

    def value(self, step: int) -> float:
        return float(self.sparsity) if step >= self.start_step else 0.0


@SCHEDULES.register("oneshot")
def one_shot(sparsity: float = 0.5, step: int = 0) -> Constant:
    """Prune once, at ``step``, to ``sparsity``."""
    return Constant(start_step=step, end_step=step, sparsity=sparsity)
