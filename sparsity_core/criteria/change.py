"""How far each unit moved from a reference: ``S_u = Σ_{e∈u} |w_e − r_e|``.

With the weights of a finished fine-tune as the model and the pretrained weights as the
reference (or the other way round: the score is symmetric), the units with the largest
score are those the fine-tune changed; ``S_u > ε`` is the set of parameters an RL or SFT run
actually updated (Mukherjee et al., 2025, "Reinforcement Learning Finetunes Small Subnetworks
in Large Language Models"). ``reference`` maps target names (a weight target is named after
its parameter, e.g. ``"encoder.layer.0.attention.self.query.weight"``) to tensors of the
target's shape; a model's ``state_dict()`` is such a mapping.
"""
from __future__ import annotations

from typing import Mapping

import torch

from ..registry import CRITERIA
from ..targets import Target
from .base import Criterion, ScoreContext


@CRITERIA.register("change")
class Change(Criterion):
    def __init__(self, reference: Mapping[str, torch.Tensor]) -> None:
        if not isinstance(reference, Mapping):
            raise TypeError(f"reference must map target names to tensors (a state dict), got {type(reference).__name__}")
        self.reference = reference

    def check(self, target: Target) -> torch.Tensor:
        """The reference of ``target``, checked (``ValueError`` naming what is wrong)."""
        if target.param is None:
            raise ValueError(f"the change criterion scores parameter targets; {target.name!r} has no parameter")
        if target.name not in self.reference:
            raise ValueError(f"the reference has no tensor for target {target.name!r}")
        ref = self.reference[target.name]
        if not isinstance(ref, torch.Tensor) or tuple(ref.shape) != tuple(target.param.shape):
            shape = tuple(ref.shape) if isinstance(ref, torch.Tensor) else type(ref).__name__
            raise ValueError(f"reference of {target.name!r} has shape {shape}, the parameter "
                             f"{tuple(target.param.shape)}")
        return ref

    def score(self, target: Target, context: ScoreContext) -> torch.Tensor:
        ref = self.check(target)
        return target.unit_reduce(lambda w, g: (w.float() - ref.to(w.device).float()).abs(), context).float()

    def __repr__(self) -> str:
        return f"Change(reference=<{len(self.reference)} tensors>)"
