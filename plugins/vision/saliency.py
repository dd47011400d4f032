"""Joint intra-/inter-layer channel saliency (PAGCP's filter score).

Ye et al., 2023, "Performance-aware Approximation of Global Channel Pruning for Multitask
CNNs" (TPAMI, https://arxiv.org/abs/2303.11923) argue that a filter's saliency cannot be read
from the filter alone: removing output channel ``u`` of layer ``l`` also removes the input
kernels of ``u`` in every consumer of layer ``l + 1``, and the channel's effect on the next
layer's output is the product of what it produces and how strongly it is read. On a coupled
channel group (every tensor slice a unit owns) we score

    S_u = ‖θ_u^intra‖₂ · ‖θ_u^inter‖₂

with ``θ_u^intra`` the entries on the producing side (the rows of the convolutions/linears
that output the channel, their biases, the BatchNorm scale and shift, depthwise filters) and
``θ_u^inter`` the entries on the consuming side (input columns of the next convolutions and
linears: the slices along dim 1 of a weight with at least two dims). A channel that is never
read (``θ^inter = 0``) scores 0 however large its filter, and a strong filter read weakly
scores low. Groups with no consuming slice (their output leaves the model directly) score
``‖θ^intra‖₂``. Limitation: a transposed convolution stores its inputs along dim 0 and an
embedding its outputs along dim 1, so their sides are swapped by this rule.

Registered as ``"joint_saliency"``. Scores only rank units *within* a group (PAGCP prunes
layer by layer), so no normalisation across groups is applied.
"""
from __future__ import annotations

from typing import List, Tuple

import torch

from sparsity_core.criteria.base import Criterion, ScoreContext
from sparsity_core.registry import CRITERIA
from sparsity_core.targets import Target, TensorSlice

from .criteria import _group
from .groups import ChannelGroup


def split_sides(group: ChannelGroup) -> Tuple[List[TensorSlice], List[TensorSlice]]:
    """``(intra, inter)`` parameter slices of ``group``: inter = slices along dim 1 of a
    weight with two or more dims (consumer input columns), intra = every other one."""
    intra, inter = [], []
    for s in group.slices:
        if not s.is_param:
            continue
        t = group.tensor(s)
        (inter if t.dim() >= 2 and s.dim == 1 and s.tensor.endswith("weight") else intra).append(s)
    return intra, inter


@CRITERIA.register("joint_saliency")
class JointSaliency(Criterion):
    """``S_u = ‖θ_u^intra‖₂ · ‖θ_u^inter‖₂`` (see the module docstring)."""

    def score(self, target: Target, context: ScoreContext) -> torch.Tensor:
        g = _group(target, self)
        intra, inter = split_sides(g)
        square = lambda t, s: t.detach().double() ** 2  # noqa: E731 - the value function of per_unit
        a = g.per_unit(square, intra).sqrt() if intra else torch.ones(g.num_units, dtype=torch.float64)
        b = g.per_unit(square, inter).sqrt() if inter else torch.ones(g.num_units, dtype=torch.float64)
        return (a * b).float()

    def __repr__(self) -> str:
        return "JointSaliency()"
