"""Scores of coupled channel groups and attention heads (higher = keep).

All sums run over every entry a unit owns in every tensor of its group (see
:class:`~sparsity_plugins.vision.groups.ChannelGroup`).

- ``group_l1`` / ``group_l2`` (group magnitude, as in DepGraph): ``Σ|w|`` or ``(Σw²)^½``,
  divided by its mean over the group's units so that one global ranking treats layers of
  different scale fairly (``normalize=False`` keeps raw values).
- ``bn_scale`` (network slimming; Liu et al., 2017, "Learning Efficient Convolutional Networks
  through Network Slimming"): ``Σ|γ|`` over the BatchNorm scales of the unit.
- ``group_taylor`` (Molchanov et al., 2019): ``(Σ_{e∈u} g_e·w_e)²`` averaged over the
  optimizer steps since the last mask update.
- ``head_sensitivity`` (HeSS-style; Fisher approximation of the Hessian): a unit's
  sensitivity is E[(∂L/∂ξ_u)²] for a gate ξ_u = 1 on its output, and ∂L/∂ξ_u = Σ_{e∈u} g_e·w_e,
  so it accumulates the same statistic as Taylor but, filled from a calibration set
  (:meth:`HeadSensitivity.calibrate`), it is comparable across layers: with the global
  allocator it moves the head budget to the layers whose heads matter most.
"""
from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import nn

from sparsity_core.criteria.base import AccumulatingCriterion, Criterion, ScoreContext
from sparsity_core.registry import CRITERIA
from sparsity_core.targets import Target

from .groups import ChannelGroup


def _group(target: Target, criterion: object) -> ChannelGroup:
    if not isinstance(target, ChannelGroup):
        raise ValueError(f"{type(criterion).__name__} scores channel groups; {target.name!r} is a {type(target).__name__}")
    return target


@CRITERIA.register("group_magnitude")
class GroupMagnitude(Criterion):
    def __init__(self, p: int = 2, normalize: bool = True) -> None:
        if p not in (1, 2):
            raise ValueError(f"group magnitude norm p must be 1 or 2, got {p!r}")
        self.p, self.normalize = p, bool(normalize)

    def score(self, target: Target, context: ScoreContext) -> torch.Tensor:
        g = _group(target, self)
        if self.p == 1:
            s = g.per_unit(lambda t, s: t.abs())
        else:
            s = g.per_unit(lambda t, s: t * t).sqrt()
        if self.normalize:
            s = s / s.mean().clamp_min(1e-30)
        return s.float()

    def __repr__(self) -> str:
        return f"GroupMagnitude(p={self.p}, normalize={self.normalize})"


CRITERIA.register("group_l1", lambda: GroupMagnitude(p=1))
CRITERIA.register("group_l2", lambda: GroupMagnitude(p=2))


@CRITERIA.register("bn_scale")
class BNScale(Criterion):
    def score(self, target: Target, context: ScoreContext) -> torch.Tensor:
        g = _group(target, self)
        scales = [s for s in g.slices if s.norm_scale]
        if not scales:
            raise ValueError(f"bn_scale: group {g.name!r} has no BatchNorm; use group_l2 or group_taylor")
        return g.per_unit(lambda t, s: t.abs(), scales).float()

    def __repr__(self) -> str:
        return "BNScale()"


@CRITERIA.register("group_taylor")
class GroupTaylor(AccumulatingCriterion):
    def statistic(self, target: Target, weight, grad) -> torch.Tensor:  # unused: see observe
        raise NotImplementedError

    def observe(self, target: Target, context: ScoreContext) -> None:
        g = _group(target, self)
        if all(g.tensor(s).grad is None for s in g.slices if s.is_param):
            return
        gate_grad = g.per_unit(lambda t, s: None if t.grad is None else t.grad * t)
        stat = gate_grad.pow(2).float()
        if g.name in self._sums:
            self._sums[g.name] += stat
            self._counts[g.name] += 1
        else:
            self._sums[g.name] = stat
            self._counts[g.name] = 1

    def score(self, target: Target, context: ScoreContext) -> torch.Tensor:
        return self.accumulated(target)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


@CRITERIA.register("head_sensitivity")
class HeadSensitivity(GroupTaylor):
    """Fisher sensitivity of heads/channels; fill it from a calibration set with
    :meth:`calibrate` (or let it accumulate during training like Taylor)."""

    def calibrate(self, model: nn.Module, targets: Iterable[Target], batches: Iterable,
                  loss_fn: Callable[[nn.Module, object], torch.Tensor]) -> int:
        """Accumulate ``(∂L/∂ξ_u)²`` over ``batches`` (one backward each); returns the count.

        ``loss_fn(model, batch)`` returns a scalar loss. Gradients already held by the
        model are restored afterwards; weights are not changed.
        """
        targets = [_group(t, self) for t in targets]
        params = [p for p in model.parameters() if p.requires_grad]
        saved = [None if p.grad is None else p.grad.clone() for p in params]
        was_training = model.training
        model.eval()
        n = 0
        try:
            for batch in batches:
                for p in params:
                    p.grad = None
                loss_fn(model, batch).backward()
                for t in targets:
                    self.observe(t, ScoreContext())
                n += 1
        finally:
            for p, g in zip(params, saved):
                p.grad = g
            model.train(was_training)
        if n == 0:
            raise ValueError("head sensitivity calibration got no batches")
        return n
