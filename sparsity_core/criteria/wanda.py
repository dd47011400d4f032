"""Wanda: pruning by weights and activations (Sun et al., 2023, "A Simple and Effective
Pruning Approach for Large Language Models", https://arxiv.org/abs/2306.11695).

The score of weight ``W_ij`` (output ``i``, input feature ``j``) is

    S_ij = |W_ij| · ‖X_j‖₂,    ‖X_j‖₂ = (Σ_r X_rj²)^½,

with ``X`` the calibration inputs of the layer, one row per token (the ``sq_sum`` of
:class:`~sparsity_core.observe.InputStats`). For a convolution weight
``(out, in/groups, k_1, ...)`` the per-input-channel norm is broadcast over the kernel
(grouped convolutions use the channels of their group). Element layouts get one score per
weight; structured layouts sum them per unit (``layout.reduce_sum``).

The paper compares weights within each output row; here the allocator decides where the
budget goes (``"uniform"`` keeps the same fraction per layer, ``"global"`` ranks all layers
together). ``normalize=True`` uses the root mean square ``(Σ_r X_rj² / rows)^½`` instead of
the norm, so layers that saw different numbers of rows (convolutions with different
resolutions) are on one scale for a global ranking; within one layer the order is the same.
"""
from __future__ import annotations

import torch

from ..registry import CRITERIA
from ..targets import Target
from .base import Criterion, ScoreContext


def input_scale(target: Target, weight: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
    """Per-input-feature ``norms`` arranged to broadcast against ``weight`` (out, in, *kernel)."""
    if weight.dim() < 2:
        raise ValueError(f"wanda needs a weight with input features (2-D or more); {target.name!r} has shape "
                         f"{tuple(weight.shape)}")
    out_ch, in_per_group = weight.shape[0], weight.shape[1]
    features = norms.numel()
    groups = features // in_per_group if in_per_group else 0
    if groups < 1 or features % in_per_group or out_ch % groups:
        raise ValueError(f"wanda: the input statistics of {target.name!r} have {features} features, which does not "
                         f"fit a weight of shape {tuple(weight.shape)}")
    scale = norms.reshape(groups, in_per_group).repeat_interleave(out_ch // groups, dim=0)  # (out, in/groups)
    return scale.reshape(out_ch, in_per_group, *([1] * (weight.dim() - 2)))


@CRITERIA.register("wanda")
class Wanda(Criterion):
    observes = "calibration"
    uses_activations = True

    def __init__(self, normalize: bool = False) -> None:
        if not isinstance(normalize, bool):
            raise ValueError(f"normalize must be True or False, got {normalize!r}")
        self.normalize = normalize

    def score(self, target: Target, context: ScoreContext) -> torch.Tensor:
        stats = context.input_stats(target)
        if stats is None or not stats.rows:
            raise ValueError(
                f"wanda needs calibration input statistics for target {target.name!r}, and there are none: "
                "use one_shot_prune(..., criterion='wanda', batches=...), train with it (the program "
                "observes the training forwards) or pass "
                "ScoreContext(activations=observe(model, targets, batches))"
            )
        weight = context.weight(target)
        scale = input_scale(target, weight, stats.norms(mean=self.normalize).to(weight.device))
        return target.layout.reduce_sum(weight.double().abs() * scale).float()

    def __repr__(self) -> str:
        return f"Wanda(normalize={self.normalize})"
