"""Iterative magnitude pruning rounds (Frankle & Carbin, 2019, "The Lottery Ticket
Hypothesis"; rewinding: Frankle et al., 2020, "Linear Mode Connectivity and the Lottery
Ticket Hypothesis").

Round r (1..R) ends at step start_step + r·steps_per_round and prunes the same fraction of
the remaining weights, so after round r the sparsity is  1 − (1 − s_f)^(r/R).  With
``rewind_step=k`` the weights of the whole model are saved at step k and restored (kept
units only) after every round: the lottery ticket with rewinding.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..allocators.budget import check_sparsity
from ..registry import SCHEDULES
from .base import Schedule


@SCHEDULES.register("iterative")
@dataclass(kw_only=True)
class Iterative(Schedule):
    final_sparsity: float = 0.9
    rounds: int = 5
    steps_per_round: int = 1000
    rewind_step: Optional[int] = None

    def __post_init__(self) -> None:
        check_sparsity(self.final_sparsity, "final sparsity")
        for name in ("rounds", "steps_per_round"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        self.end_step = self.start_step + self.rounds * self.steps_per_round
        super().__post_init__()
        if self.rewind_step is not None:
            first_prune = self.start_step + self.steps_per_round
            if not isinstance(self.rewind_step, int) or not 0 <= self.rewind_step < first_prune:
                raise ValueError(
                    f"rewind_step must be an int in [0, {first_prune}) (before the first pruning round), got {self.rewind_step!r}"
                )

    def round_at(self, step: int) -> int:
        """Number of rounds completed at ``step``."""
        if step < self.start_step:
            return 0
        return min(self.rounds, (step - self.start_step) // self.steps_per_round)

    def value(self, step: int) -> float:
        r = self.round_at(step)
        return 1.0 - (1.0 - self.final_sparsity) ** (r / self.rounds) if r else 0.0

    def is_update_step(self, step: int, every: int = 1) -> bool:
        offset = step - self.start_step
        return 0 < offset <= self.rounds * self.steps_per_round and offset % self.steps_per_round == 0
