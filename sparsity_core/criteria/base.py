"""Criterion interface: ``score(target, context) -> Tensor[num_units]`` (higher = keep).

Stateless criteria (magnitude, random) score from the current weights. Other criteria
declare *when* they observe with the class attribute :attr:`Criterion.observes`:

- ``"never"`` (default): scores come from the weights alone; ``observe`` is not called.
- ``"step"``: ``observe`` once per optimizer step while gradients are present (Taylor,
  movement). ``needs_gradients`` is ``True`` exactly for these.
- ``"forward"``: statistics of the activations of training forwards (the driver installs
  the :class:`~sparsity_core.observe.ActivationObserver` hooks).
- ``"calibration"``: statistics of a calibration pass without training (Wanda);
  ``observe`` is called once per calibration batch with ``context.batch`` set, and
  ``context.activations`` holds the input statistics at scoring time.

Accumulators are plain tensors returned by :meth:`Criterion.state_dict`. Subclasses written
before ``observes`` existed and setting ``needs_gradients = True`` keep working: they
report ``observes == "step"``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Mapping, Optional, Union

import torch

from ..state import NoState
from ..targets import Target

OBSERVES = ("never", "step", "forward", "calibration")


def _param_weight(target: Target) -> torch.Tensor:
    return target.read()


@dataclass
class ScoreContext:
    """What a criterion may read besides the target.

    ``weight(target)`` returns the weights to score: the dense weights kept by a
    straight-through enforcement, else the parameter itself. ``activations`` maps target
    names to input statistics (an :class:`~sparsity_core.observe.ActivationObserver` or a
    plain ``{target name: InputStats}``); ``batch`` is the batch being observed, if any;
    ``task`` identifies the current task of a task stream (continual learning).
    """

    step: int = 0
    weight: Callable[[Target], torch.Tensor] = field(default=_param_weight)
    activations: Optional[Mapping[str, Any]] = None
    batch: Any = None
    task: Optional[Union[str, int]] = None

    def grad(self, target: Target) -> Optional[torch.Tensor]:
        return None if target.param is None or target.param.grad is None else target.param.grad.detach()

    def input_stats(self, target: Target) -> Any:
        """Input statistics recorded for ``target`` (``None`` if there are none)."""
        return None if self.activations is None else self.activations.get(target.name)


class _NeedsGradients:
    """``needs_gradients``, derived from ``observes`` (readable on the class and instances)."""

    def __get__(self, obj: Any, cls: type) -> bool:
        return (cls if obj is None else obj).observes == "step"

    def __set__(self, obj: Any, value: bool) -> None:
        obj.observes = "step" if value else ("never" if obj.observes == "step" else obj.observes)


class Criterion(NoState):
    """Base class. ``observes`` says when statistics are collected (see the module doc)."""

    observes: str = "never"
    needs_gradients = _NeedsGradients()
    #: scores read input statistics (``context.input_stats``): a program training with this
    #: criterion observes the inputs of training forwards for it
    uses_activations: bool = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        legacy = cls.__dict__.get("needs_gradients")
        if isinstance(legacy, bool):  # declared the old way: translate to `observes`
            if "observes" in cls.__dict__ and (cls.observes == "step") != legacy:
                raise ValueError(f"{cls.__name__}: needs_gradients={legacy} contradicts observes={cls.observes!r}")
            if "observes" not in cls.__dict__:
                cls.observes = "step" if legacy else ("never" if cls.observes == "step" else cls.observes)
            delattr(cls, "needs_gradients")  # the descriptor answers from `observes` again
        if cls.observes not in OBSERVES:
            raise ValueError(f"{cls.__name__}.observes must be one of {', '.join(OBSERVES)}; got {cls.observes!r}")

    def score(self, target: Target, context: ScoreContext) -> torch.Tensor:
        raise NotImplementedError

    def observe(self, target: Target, context: ScoreContext) -> None:
        """Accumulate statistics for ``target`` (when: see :attr:`observes`)."""

    def reset(self) -> None:
        """Forget accumulated statistics (called after masks are recomputed)."""


class AccumulatingCriterion(Criterion):
    """Keeps a per-target running sum and the number of observations."""

    observes = "step"

    def __init__(self) -> None:
        self._sums: Dict[str, torch.Tensor] = {}
        self._counts: Dict[str, int] = {}

    def statistic(self, target: Target, context: ScoreContext) -> Optional[torch.Tensor]:
        """Per-unit statistic of one step (``None``: nothing to observe, e.g. no gradient)."""
        raise NotImplementedError

    def observe(self, target: Target, context: ScoreContext) -> None:
        stat = self.statistic(target, context)
        if stat is not None:
            self._accumulate(target.name, stat.to(torch.float32))

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
