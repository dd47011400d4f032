"""A schedule given as a function of the optimizer step, and the one conversion every entry
point applies to what a user passes as a schedule."""
from __future__ import annotations

from typing import Callable, Union

from ..validation import check_sparsity
from .base import Schedule
from .constant import Constant


class FunctionSchedule(Schedule):
    """``value(step) = fn(step)``, as Lightning's ``ModelPruning`` takes ``amount`` as a callable
    (of the epoch there; of the optimizer step here).

    Masks are recomputed every ``every`` steps from ``start_step`` on, with no end (a function
    has no known last step). ``fn`` is called in the host's process only: it need not pickle,
    the callback's state holds no reference to it.
    """

    def __init__(self, fn: Callable[[int], float], start_step: int = 0) -> None:
        if not callable(fn):
            raise TypeError(f"a function schedule needs a callable step -> sparsity, got {type(fn).__name__}")
        super().__init__(start_step=start_step, end_step=start_step)
        self.fn = fn

    def value(self, step: int) -> float:
        return check_sparsity(self.fn(step), f"schedule({step})")

    @property
    def final(self) -> float:
        return 0.0  # unknown: the budget is checked at every update instead

    def is_update_step(self, step: int, every: int = 1) -> bool:
        return step >= self.start_step and (step - self.start_step) % every == 0

    def __repr__(self) -> str:
        return f"FunctionSchedule({getattr(self.fn, '__qualname__', type(self.fn).__name__)})"


def as_schedule(spec: Union[Schedule, float, Callable[[int], float]], at_step: int = 0,
                what: str = "sparsity") -> Schedule:
    """A :class:`Schedule` from a schedule, a float (constant from ``at_step``: one-shot) or a
    callable ``step -> sparsity``."""
    if isinstance(spec, Schedule):
        return spec
    if isinstance(spec, bool):
        raise TypeError(f"{what} must be a Schedule, a float sparsity or a callable step -> sparsity, got a bool")
    if isinstance(spec, (int, float)):
        return Constant(start_step=at_step, end_step=at_step, sparsity=check_sparsity(spec, what))
    if callable(spec):
        return FunctionSchedule(spec)
    raise TypeError(f"{what} must be a Schedule, a float sparsity or a callable step -> sparsity, "
                    f"got {type(spec).__name__}")

