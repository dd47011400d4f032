"""Scores that only channel groups have (higher = keep).

The core criteria score channel groups and heads directly (``magnitude``, ``l2``,
``taylor``, ``movement``, ``random``): a :class:`~sparsity_plugins.vision.groups.ChannelGroup`
sums over every entry a unit owns in every tensor of its group. Named configurations:

- ``group_l1`` / ``group_l2`` (group magnitude, as in DepGraph): the core ``Magnitude`` with
  ``p=1`` / ``p=2`` and ``normalize=True`` (divided by its mean over the group's units, so
  one global ranking treats layers of different scale fairly).

And two criteria of their own:

- ``bn_scale`` (network slimming; Liu et al., 2017, "Learning Efficient Convolutional Networks
  through Network Slimming"): ``Σ|γ|`` over the BatchNorm scales of the unit.
- ``head_sensitivity`` (HeSS-style; Fisher approximation of the Hessian): a unit's
  sensitivity is E[(∂L/∂ξ_u)²] for a gate ξ_u = 1 on its output, and ∂L/∂ξ_u = Σ_{e∈u} g_e·w_e,
  so it accumulates the core Taylor statistic but, filled from a calibration set
  (:meth:`HeadSensitivity.calibrate`), it is comparable across layers: with the global
  allocator it moves the head budget to the layers whose heads matter most.
"""
from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import nn

from sparsity_core.criteria.base import Criterion, ScoreContext
from sparsity_core.criteria.magnitude import Magnitude
from sparsity_core.criteria.taylor import Taylor
from sparsity_core.oneshot import gradient_pass
from sparsity_core.registry import CRITERIA
from sparsity_core.targets import Target

from .groups import ChannelGroup


def _group(target: Target, criterion: object) -> ChannelGroup:
    if not isinstance(target, ChannelGroup):
        raise ValueError(f"{type(criterion).__name__} scores channel groups; {target.name!r} is a {type(target).__name__}")
    return target


CRITERIA.register("group_l1", lambda: Magnitude(p=1, normalize=True))
CRITERIA.register("group_l2", lambda: Magnitude(p=2, normalize=True))


@CRITERIA.register("bn_scale")
class BNScale(Criterion):
    def score(self, target: Target, context: ScoreContext) -> torch.Tensor:
        g = _group(target, self)
        scales = [s for s in g.slices if s.tag == "norm_scale"]
        if not scales:
            raise ValueError(f"bn_scale: group {g.name!r} has no BatchNorm; use group_l2 or taylor")
        return g.per_unit(lambda t, s: t.abs(), scales).float()

    def __repr__(self) -> str:
        return "BNScale()"


@CRITERIA.register("head_sensitivity")
class HeadSensitivity(Taylor):
    """Fisher sensitivity of heads/channels; fill it from a calibration set with
    :meth:`calibrate` (or let it accumulate during training like Taylor)."""

    def calibrate(self, model: nn.Module, targets: Iterable[Target], batches: Iterable,
                  loss_fn: Callable[[nn.Module, object], torch.Tensor]) -> int:
        """Accumulate ``(∂L/∂ξ_u)²`` over ``batches`` (one backward each); returns the count.

        ``loss_fn(model, batch)`` returns a scalar loss. Gradients already held by the
        model are restored afterwards; weights are not changed.
        """
        targets = [_group(t, self) for t in targets]
        was_training = model.training
        model.eval()
        try:
            return gradient_pass(model, targets, self, batches, loss_fn)
        finally:
            model.train(was_training)

    def __repr__(self) -> str:
        return "HeadSensitivity()"
