"""Schedules map an optimizer step to a target sparsity: ``value(step) -> float``.

Steps are optimizer steps (``trainer.global_step``), never epochs or call counts, so
gradient accumulation and resumption cannot shift them. Schedules are picklable
dataclasses validated in ``__post_init__``. ``is_update_step(step, every)`` says when masks
are recomputed: every ``every`` steps from ``start_step`` through ``end_step``, and always
at ``end_step`` so the final sparsity is reached exactly.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Dict, Optional

from ..validation import check_int, check_sparsity

if TYPE_CHECKING:  # pragma: no cover
    from ..layouts import UnitLayout


@dataclass(kw_only=True)
class Schedule:
    start_step: int = 0
    end_step: int = 0

    def __post_init__(self) -> None:
        for name in ("start_step", "end_step"):
            check_int(getattr(self, name), name, 0)
        if self.end_step < self.start_step:
            raise ValueError(f"end_step ({self.end_step}) must be >= start_step ({self.start_step})")

    def value(self, step: int) -> float:
        raise NotImplementedError

    def progress(self, step: int) -> float:
        """Fraction of ``start_step..end_step`` done at ``step``, in [0, 1]."""
        if self.end_step == self.start_step:
            return 1.0 if step >= self.start_step else 0.0
        return min(1.0, max(0.0, (step - self.start_step) / (self.end_step - self.start_step)))

    @property
    def final(self) -> float:
        return self.value(self.end_step)

    def is_update_step(self, step: int, every: int = 1) -> bool:
        if step < self.start_step or step > self.end_step:
            return False
        return (step - self.start_step) % every == 0 or step == self.end_step

    # What a schedule may say besides the sparsity; the controller asks every schedule.
    def group_values(self, step: int) -> Optional[Dict[str, float]]:
        """Sub-budgets: ``{group: sparsity}`` at ``step`` for a budget tree (``None``: one budget)."""
        return None

    def layout_at(self, step: int) -> Optional["UnitLayout"]:
        """The unit layout targets take at ``step`` (``None``: layouts do not change)."""
        return None

    @property
    def snapshot_step(self) -> Optional[int]:
        """Step whose weights are saved for lottery-ticket rewinding (``None``: no rewinding)."""
        return None


@dataclass(kw_only=True)
class Ramp(Schedule):
    """From ``initial`` (at and before ``start_step``) to ``final`` (at and after ``end_step``)."""

    initial: float = 0.0
    final_sparsity: float = 0.9

    def __post_init__(self) -> None:
        super().__post_init__()
        check_sparsity(self.initial, "initial sparsity")
        check_sparsity(self.final_sparsity, "final sparsity")
        if self.end_step == self.start_step:
            raise ValueError(f"a ramp needs end_step > start_step, got {self.start_step}..{self.end_step}")


    def shape(self, t: float) -> float:
        """Ramp shape on [0, 1] -> [0, 1] (0 = initial, 1 = final)."""
        raise NotImplementedError

    def value(self, step: int) -> float:
        t = self.progress(step)
        if t <= 0.0:
            return float(self.initial)
        if t >= 1.0:
            return float(self.final_sparsity)
        return self.initial + (self.final_sparsity - self.initial) * self.shape(t)


def cosine_shape(t: float) -> float:
    return (1.0 - math.cos(math.pi * t)) / 2.0
