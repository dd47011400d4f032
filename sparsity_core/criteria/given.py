"""Scores computed elsewhere: ``scores[target.name]`` (one per unit), handed to the core's
allocation and selection unchanged. For methods that score once, before training, by a pass
the training loop does not make (a gradient pass over calibration batches, a comparison with
another run's weights), and for users who bring their own importance."""
from __future__ import annotations

from typing import Dict, Mapping, Optional

import torch

from ..registry import CRITERIA
from ..targets import Target
from .base import Criterion, ScoreContext


@CRITERIA.register("given")
class GivenScores(Criterion):
    def __init__(self, scores: Optional[Mapping[str, torch.Tensor]] = None) -> None:
        self.scores: Dict[str, torch.Tensor] = {}
        if scores is not None:
            self.set(scores)

    def set(self, scores: Mapping[str, torch.Tensor]) -> None:
        """Replace the scores (a tensor per target name; shapes are checked when scoring)."""
        bad = [k for k, v in scores.items() if not isinstance(v, torch.Tensor)]
        if bad:
            raise ValueError(f"scores must be tensors; not for {bad[:5]}")
        self.scores = {k: v.detach() for k, v in scores.items()}

    def score(self, target: Target, context: ScoreContext) -> torch.Tensor:
        if target.name not in self.scores:
            raise ValueError(f"no given scores for target {target.name!r} (have {sorted(self.scores)[:5]})")
        s = self.scores[target.name].reshape(-1).float()
        if s.numel() != target.num_units:
            raise ValueError(f"given scores of {target.name!r} have {s.numel()} entries, the target "
                             f"{target.num_units} units")
        return s

    def __repr__(self) -> str:
        return f"GivenScores(<{len(self.scores)} targets>)"
