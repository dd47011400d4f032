"""Random scores from a seeded generator (random pruning; Liu et al., 2022, "The Unreasonable
Effectiveness of Random Pruning"). The generator state is part of the criterion state, so a
resumed run draws the same scores as an uninterrupted one."""
from __future__ import annotations

from typing import Dict

import torch

from ..registry import CRITERIA
from ..targets import Target
from ..validation import check_int
from .base import Criterion, ScoreContext


@CRITERIA.register("random")
class RandomScores(Criterion):
    def __init__(self, seed: int = 0) -> None:
        self.seed = check_int(seed, "seed")
        self._generator = torch.Generator().manual_seed(self.seed)

    def score(self, target: Target, context: ScoreContext) -> torch.Tensor:
        return torch.rand(target.num_units, generator=self._generator)

    def state_dict(self) -> Dict[str, object]:
        return {"seed": self.seed, "generator": self._generator.get_state()}

    def load_state_dict(self, state: Dict[str, object]) -> None:
        self.seed = int(state["seed"])
        self._generator.set_state(state["generator"])

    def __repr__(self) -> str:
        return f"RandomScores(seed={self.seed})"
