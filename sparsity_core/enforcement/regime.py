"""Regimes built from parts: one mask action plus any number of parts.

    Regime(StraightThrough(), SRSTE(2e-4), PruneRegrow("gradient", every=100, end_step=T))

The **mask action** says how a mask acts on the weights (an :class:`Enforcement`: ``HardMask``
zeros weights, gradients and moments; ``StraightThrough`` keeps dense weights and masks the
forward; ``DecayingMask`` lets pruned weights fade; ``SoftShrink`` shrinks them). **Parts**
add to it (:class:`RegimePart`): a gradient rule (``SRSTE``'s decay of pruned weights), a
regrowth (``PruneRegrow``: SET, RigL, Hebbian), a regulariser. Combining two methods is
listing two parts, not writing a class. A part passed alone as ``enforcement=`` runs on its
``default_action`` (SR-STE on straight-through, prune-and-regrow on hard masks).

Order at each hook: parts ``observe_gradients`` (the raw gradients, before the action masks
them); the action's ``before_optimizer_step``; parts ``adjust_gradients`` (the gradients the
optimizer will use, the action's weights in place); after the step the action first, then the
parts (a regrowth asks the controller for new masks through ``replace_masks``, the one path).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, List, Optional

import torch

from ..masks import MaskSet
from ..state import NoState
from ..targets import Target
from .base import Enforcement

if TYPE_CHECKING:  # pragma: no cover
    from ..controller import SparsityController


class RegimePart(NoState):
    """A piece of a regime; every hook is a no-op by default. ``regime`` gives the action's
    view of the weights (``regime.factor``, ``regime.dense_weight``)."""

    name = "part"

    def default_action(self) -> Enforcement:
        from .hard import HardMask

        return HardMask()

    def attach(self, regime: "Regime", ctrl: "SparsityController") -> None:
        """Validate against the targets (``ValueError`` before anything changes)."""

    def apply_masks(self, regime: "Regime", ctrl: "SparsityController", previous: Optional[MaskSet]) -> None:
        pass

    def observe_gradients(self, regime: "Regime", ctrl: "SparsityController", optimizer) -> None:
        """The step's gradients, before the action masks them."""

    def adjust_gradients(self, regime: "Regime", ctrl: "SparsityController", optimizer) -> None:
        """Change the gradients the optimizer will use (after the action)."""

    def after_optimizer_step(self, regime: "Regime", ctrl: "SparsityController") -> None:
        pass

    def bind(self, regime: "Regime", ctrl: "SparsityController") -> None:
        pass



class Regime(Enforcement):
    """A mask action with parts (see the module docstring)."""

    name = "regime"

    def __init__(self, action: Optional[Enforcement] = None, *parts: RegimePart) -> None:
        super().__init__()
        if isinstance(action, RegimePart):  # Regime(part, ...): the first part's default action
            parts, action = (action,) + parts, action.default_action()
        if action is None:
            raise ValueError("a regime needs a mask action (an Enforcement) or at least one part")
        if not isinstance(action, Enforcement) or isinstance(action, Regime):
            raise TypeError(f"a regime's action must be a plain Enforcement, got {type(action).__name__}")
        for part in parts:
            if not isinstance(part, RegimePart):
                raise TypeError(f"regime parts must be RegimePart instances, got {type(part).__name__}")
        self.action = action
        self.parts: List[RegimePart] = list(parts)

    def part(self, kind: type) -> Optional[RegimePart]:
        """The first part of type ``kind``, or ``None``."""
        return next((p for p in self.parts if isinstance(p, kind)), None)

    def factor(self, ctrl, target: Target) -> torch.Tensor:
        return self.action.factor(ctrl, target)

    def attach(self, ctrl) -> None:
        self.action.attach(ctrl)
        for p in self.parts:
            p.attach(self, ctrl)

    def apply_masks(self, ctrl, previous: Optional[MaskSet]) -> None:
        self.action.apply_masks(ctrl, previous)
        for p in self.parts:
            p.apply_masks(self, ctrl, previous)

    def before_optimizer_step(self, ctrl, optimizer) -> None:
        for p in self.parts:
            p.observe_gradients(self, ctrl, optimizer)
        self.action.before_optimizer_step(ctrl, optimizer)
        for p in self.parts:
            p.adjust_gradients(self, ctrl, optimizer)

    def after_optimizer_step(self, ctrl) -> None:
        self.action.after_optimizer_step(ctrl)
        for p in self.parts:
            p.after_optimizer_step(self, ctrl)

    def finalize(self, ctrl) -> None:
        self.action.finalize(ctrl)

    def weights_reset(self, ctrl) -> None:
        self.action.weights_reset(ctrl)

    def bind(self, ctrl) -> None:
        self.action.bind(ctrl)
        for p in self.parts:
            p.bind(self, ctrl)

    def dense_weight(self, target: Target) -> torch.Tensor:
        return self.action.dense_weight(target)

    def state_dict(self) -> Dict[str, object]:
        return {"action": self.action.state_dict(), "parts": [p.state_dict() for p in self.parts]}

    def load_state_dict(self, state: Dict[str, object]) -> None:
        parts = state.get("parts", [])
        if "action" not in state or len(parts) != len(self.parts):
            raise ValueError(f"regime state for {len(parts)} part(s) does not fit {self!r}")
        self.action.load_state_dict(state["action"])
        for p, s in zip(self.parts, parts):
            p.load_state_dict(s)

    def __getattr__(self, name: str) -> Any:  # the action's own attributes (e.g. STE's ``dense``)
        if name in ("action", "parts") or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.action, name)

    def __repr__(self) -> str:
        return f"Regime({', '.join(repr(x) for x in [self.action, *self.parts])})"


def build_enforcement(spec: Any) -> Enforcement:
    """An enforcement from a registered name, a class or an instance; a regime part given
    where an enforcement is expected runs on its default action."""
    from ..registry import ENFORCEMENTS

    obj = ENFORCEMENTS.build(spec)
    if isinstance(obj, type):
        obj = obj()
    if isinstance(obj, RegimePart):
        obj = Regime(obj)
    if not isinstance(obj, Enforcement):
        raise TypeError(f"enforcement must be a name in {ENFORCEMENTS.names()}, an Enforcement or a RegimePart, "
                        f"got {type(obj).__name__}")
    return obj
