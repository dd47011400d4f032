"""Iterative magnitude pruning rounds (Frankle & Carbin, 2019, "The Lottery Ticket
Hypothesis"; rewinding: Frankle et al., 2020, "Linear Mode Connectivity and the Lottery
Ticket Hypothesis").

Round r (1..R) ends at step start_step + r·steps_per_round and prunes the same fraction of
the remaining weights, so after round r the sparsity is  1 − (1 − s_f)^(r/R).  With
``rewind_step=k`` the weights of the whole model are saved at step k and restored (kept
units only) after every round: the lottery ticket with rewinding.

Groups pruned at their own per-round rates (UGS prunes 5% of the edges and 20% of the
weights per round; Frankle & Carbin prune convolutions and dense layers at different rates):
``rates={"edges": 0.05, "weights": 0.2}`` gives the sub-budget ``1 − (1 − p_g)^r`` of group
``g`` after ``r`` rounds (:meth:`Iterative.group_values`), which the ``grouped`` allocator
applies to the targets of each group; ``final_sparsity`` is then unused and ``value`` is the
largest group sparsity.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional

from ..validation import check_int, check_sparsity
from ..registry import SCHEDULES
from .base import Schedule


@SCHEDULES.register("iterative")
@dataclass(kw_only=True)
class Iterative(Schedule):
    final_sparsity: float = 0.9
    rounds: int = 5
    steps_per_round: int = 1000
    rewind_step: Optional[int] = None
    rates: Optional[Dict[str, float]] = None

    def __post_init__(self) -> None:
        check_sparsity(self.final_sparsity, "final sparsity")
        if self.rates is not None:
            if not isinstance(self.rates, dict) or not self.rates:
                raise ValueError(f"rates must be a non-empty {{group: per-round rate}} dict, got {self.rates!r}")
            self.rates = {str(g): check_sparsity(p, f"per-round rate of {g!r}") for g, p in self.rates.items()}
        for name in ("rounds", "steps_per_round"):
            setattr(self, name, check_int(getattr(self, name), name, 1))
        self.end_step = self.start_step + self.rounds * self.steps_per_round
        super().__post_init__()
        if self.rewind_step is not None:
            first_prune = self.start_step + self.steps_per_round
            self.rewind_step = check_int(self.rewind_step, "rewind_step (before the first pruning round)", 0, first_prune - 1)

    def round_at(self, step: int) -> int:
        """Number of rounds completed at ``step``."""
        if step < self.start_step:
            return 0
        return min(self.rounds, (step - self.start_step) // self.steps_per_round)

    def value(self, step: int) -> float:
        groups = self.group_values(step)
        if groups is not None:
            return max(groups.values())
        r = self.round_at(step)
        if r >= self.rounds:  # exactly the configured value, not 1 - (1 - final)**1
            return float(self.final_sparsity)
        return 1.0 - (1.0 - self.final_sparsity) ** (r / self.rounds) if r else 0.0

    def group_values(self, step: int) -> Optional[Dict[str, float]]:
        if self.rates is None:
            return None
        r = self.round_at(step)
        return {g: 1.0 - (1.0 - p) ** r for g, p in self.rates.items()}

    @property
    def snapshot_step(self) -> Optional[int]:
        return self.rewind_step

    def is_update_step(self, step: int, every: int = 1) -> bool:
        offset = step - self.start_step
        return 0 < offset <= self.rounds * self.steps_per_round and offset % self.steps_per_round == 0
