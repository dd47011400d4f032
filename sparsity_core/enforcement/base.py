"""Enforcement: how masks act on training.

The controller calls an enforcement at these points; a regime overrides the ones it needs:

- ``attach(ctrl)``: once, at construction: validate against the targets, set up hooks.
- ``apply_masks(ctrl, previous)``: masks were just recomputed (``previous`` is the old
  :class:`MaskSet`, or ``None`` the first time).
- ``before_optimizer_step(ctrl, optimizer)``: gradients of the step are final (unscaled
  under AMP, all-reduced under DDP); the optimizer is about to update.
- ``after_optimizer_step(ctrl)``: once per optimizer step, after the update.
- ``finalize(ctrl)``: make the sparsity permanent (plain weights with zeros); masks stop
  acting afterwards.

``dense_weight(target)`` returns the weights criteria should score (a regime that keeps
dense weights aside returns those). State is plain tensors keyed by target name.
Regimes such as SR-STE, soft shrinkage, progressive decay and prune-and-regrow are
subclasses: the Lightning callback only talks to this interface.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Dict, Iterable, Optional

import torch

from ..masks import MaskSet
from ..registry import ENFORCEMENTS
from ..targets import Target

if TYPE_CHECKING:  # pragma: no cover
    from ..controller import SparsityController


def params_of(optimizer: torch.optim.Optimizer) -> set:
    return {id(p) for group in optimizer.param_groups for p in group["params"]}


def weight_targets(ctrl: "SparsityController", optimizer: Optional[torch.optim.Optimizer] = None) -> Iterable[Target]:
    """Parameter-backed targets with a mask (of ``optimizer`` only, if given)."""
    owned = params_of(optimizer) if optimizer is not None else None
    for t in ctrl.targets:
        if t.param is None or t.name not in ctrl.masks:
            continue
        if owned is not None and id(t.param) not in owned:
            continue
        yield t


@ENFORCEMENTS.register("masks")
class Enforcement:
    """The base class, and as ``"masks"`` the enforcement that computes and keeps masks without
    touching any tensor: the program applies them itself (a hook masking a layer's inputs, an
    edge mask in message passing)."""

    name = "masks"
    #: the enforcement writes into the targets' parameters, so every target needs one
    needs_parameters = False

    def __init__(self) -> None:
        self._factors: Dict[str, tuple] = {}

    def factor(self, ctrl: "SparsityController", target: Target) -> torch.Tensor:
        """The target's mask as 0/1 in the parameter's dtype, broadcastable to it.

        Cached per mask tensor: multiplying by a float mask is several times faster than by
        a boolean one, and this runs after every optimizer step.
        """
        mask = ctrl.masks[target.name]
        cached = self._factors.get(target.name)
        if cached is None or cached[0] is not mask:
            p = target.param
            cached = (mask, target.expand_mask(mask).to(device=p.device, dtype=p.dtype))
            self._factors[target.name] = cached
        return cached[1]

    def attach(self, ctrl: "SparsityController") -> None:
        """Called once by the controller's constructor: validate the configuration against
        the targets (raise ``ValueError`` before anything changes) and set up hooks."""
        if self.needs_parameters:
            bare = [t.name for t in ctrl.targets if t.param is None]
            if bare:
                raise ValueError(
                    f"{type(self).__name__} masks parameters, but {bare[:5]} have none; use enforcement='masks' "
                    "and apply the masks where the units are used (or an enforcement of the plugin)")

    def apply_masks(self, ctrl: "SparsityController", previous: Optional[MaskSet]) -> None:
        pass

    def before_optimizer_step(self, ctrl: "SparsityController", optimizer: torch.optim.Optimizer) -> None:
        pass

    def after_optimizer_step(self, ctrl: "SparsityController") -> None:
        pass

    def finalize(self, ctrl: "SparsityController") -> None:
        pass

    def weights_reset(self, ctrl: "SparsityController") -> None:
        """The parameters were overwritten from outside (lottery-ticket rewinding): state
        that shadows the weights must follow them."""

    def bind(self, ctrl: "SparsityController") -> None:
        """Called after state is loaded: move state to the parameters' devices."""

    def dense_weight(self, target: Target) -> torch.Tensor:
        """The values criteria score: the parameter (or computed tensor) itself by default."""
        return target.read()

    def state_dict(self) -> Dict[str, object]:
        return {}

    def load_state_dict(self, state: Dict[str, object]) -> None:
        pass

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
