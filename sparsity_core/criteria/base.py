"""Criterion interface: ``score(target, context) -> Tensor[num_units]`` (higher = keep).

Stateless criteria (magnitude, random) score from the current weights. Stateful criteria
(Taylor, movement) accumulate statistics in :meth:`Criterion.observe`, which the controller
calls once per optimizer step while gradients are present (``needs_gradients = True``);
their accumulators are plain tensors returned by :meth:`Criterion.state_dict`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, Optional

import torch

from ..targets import Target


def _param_weight(target: Target) -> torch.Tensor:
    if target.param is None:
        raise ValueError(f"target {target.name!r} has no parameter: this criterion needs weights")
    return target.param.detach()


@dataclass
class ScoreContext:
    """What a criterion may read besides the target.

    ``weight(target)`` returns the weights to score: the dense weights kept by a
    straight-through enforcement, else the parameter itself.
    """

    step: int = 0
    weight: Callable[[Target], torch.Tensor] = field(default=_param_weight)

    def grad(self, target: Target) -> Optional[torch.Tensor]:
        return None if target.param is None or target.param.grad is None else target.param.grad.detach()


class Criterion:
    """Base class. ``needs_gradients`` criteria must be observed at optimizer steps."""

    needs_gradients: bool = False

    def score(self, target: Target, context: ScoreContext) -> torch.Tensor:
        raise NotImplementedError

    def observe(self, target: Target, context: ScoreContext) -> None:
        """Accumulate statistics for ``target`` (called once per optimizer step)."""

    def reset(self) -> None:
        """Forget accumulated statistics (called after masks are recomputed)."""

    def state_dict(self) -> Dict[str, object]:
        return {}

    def load_state_dict(self, state: Dict[str, object]) -> None:
        if state:
            raise ValueError(f"{type(self).__name__} keeps no state, got keys {sorted(state)}")


class AccumulatingCriterion(Criterion):
    """Keeps a per-target running sum and the number of observations."""

    needs_gradients = True

    def __init__(self) -> None:
        self._sums: Dict[str, torch.Tensor] = {}
        self._counts: Dict[str, int] = {}

    def statistic(self, target: Target, weight: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """Per-unit statistic of one step."""
        raise NotImplementedError

    def observe(self, target: Target, context: ScoreContext) -> None:
        grad = context.grad(target)
        if grad is None:
            return
        self._accumulate(target.name, self.statistic(target, context.weight(target), grad).to(torch.float32))

    def _accumulate(self, name: str, stat: torch.Tensor) -> None:
        """Add one observation (a new shape, e.g. after a resize, restarts the sum)."""
        if name in self._sums and self._sums[name].shape == stat.shape:
            self._sums[name] += stat
            self._counts[name] += 1
        else:
            self._sums[name] = stat.clone()
            self._counts[name] = 1

    def accumulated(self, target: Target) -> torch.Tensor:
        if target.name not in self._sums:
            raise ValueError(
                f"{type(self).__name__} has no gradient statistics for {target.name!r}: "
                "it must observe at least one optimizer step (gradients) before scoring"
            )
        return self._sums[target.name] / self._counts[target.name]

    def reset(self) -> None:
        self._sums.clear()
        self._counts.clear()

    def state_dict(self) -> Dict[str, object]:
        return {"sums": {k: v.detach().cpu().clone() for k, v in self._sums.items()}, "counts": dict(self._counts)}

    def load_state_dict(self, state: Dict[str, object]) -> None:
        sums, counts = state.get("sums", {}), state.get("counts", {})
        if set(sums) != set(counts):
            raise ValueError("criterion state: 'sums' and 'counts' cover different targets")
        self._sums = {k: v.clone() for k, v in sums.items()}
        self._counts = {k: int(v) for k, v in counts.items()}
