"""Targets: named sets of prunable units, with a cost per unit.

A :class:`Target` is what every other component talks about. It has a fully-qualified
name (for a weight, its name in ``model.named_parameters()``), a unit layout over a shape,
and the cost of one unit in parameters and MACs so that budgets can be expressed in units,
parameters or MACs. A target need not be backed by a parameter: a plugin can describe the
edges of a graph or the Gaussians of a scene with ``param=None`` and a 1-D ``shape``, and
resize it as the scene grows (:meth:`Target.resize`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Optional, Tuple

import torch

from .layouts import Elements, UnitLayout
from .validation import check_int

if TYPE_CHECKING:  # pragma: no cover
    from .criteria.base import ScoreContext

#: ``values(weight, grad)`` -> an element-wise tensor shaped like ``weight`` (``grad`` may be
#: ``None``; return ``None`` to skip that tensor).
ElementValues = Callable[[torch.Tensor, Optional[torch.Tensor]], Optional[torch.Tensor]]


@dataclass(eq=False)
class Target:
    """A named set of prunable units.

    Args:
        name: fully-qualified name (``"layer1.0.conv1.weight"``); the key of its mask.
        layout: how the units partition ``shape``.
        shape: shape of the tensor the units partition (``(n,)`` for flat unit vectors).
        param: the parameter behind the units, or ``None`` for units that are not weights.
        module_name: name of the owning module (for messages and per-layer reports).
        macs_per_unit: multiply-accumulates one unit costs per input sample (0 if unknown).
        params_per_unit: parameters one unit holds; by default ``numel(shape) / num_units``
            for parameter targets and 0 otherwise.
    """

    name: str
    layout: UnitLayout = field(default_factory=Elements)
    shape: Tuple[int, ...] = ()
    param: Optional[torch.nn.Parameter] = field(default=None, repr=False)
    module_name: str = ""
    macs_per_unit: float = 0.0
    params_per_unit: Optional[float] = None

    def __post_init__(self) -> None:
        if self.param is not None and not self.shape:
            self.shape = tuple(self.param.shape)
        self.shape = tuple(int(s) for s in self.shape)
        if not self.shape:
            raise ValueError(f"target {self.name!r} needs a shape or a parameter")
        if self.param is not None and tuple(self.param.shape) != self.shape:
            raise ValueError(f"target {self.name!r}: shape {self.shape} does not match its parameter {tuple(self.param.shape)}")
        self.layout.validate(self.shape, self.name)
        if self.params_per_unit is None:
            n = self.num_units
            self.params_per_unit = (torch.Size(self.shape).numel() / n if n else 0.0) if self.param is not None else 0.0

    @property
    def num_units(self) -> int:
        return self.layout.num_units(self.shape)

    @property
    def mask_shape(self) -> Tuple[int, ...]:
        return self.layout.mask_shape(self.shape)

    @property
    def dims(self) -> Tuple[int, ...]:
        """Shape used by ERK-style allocators (fan-out, fan-in, kernel dims)."""
        return self.shape

    def resize(self, num_units: int) -> None:
        """Change the number of units of a flat (1-D, parameter-free) target."""
        if self.param is not None or len(self.shape) != 1:
            raise ValueError(f"only flat targets without a parameter can be resized; {self.name!r} has shape {self.shape}")
        self.shape = (check_int(num_units, "num_units", 0),)

    def unit_reduce(self, values: ElementValues, context: "ScoreContext") -> Optional[torch.Tensor]:
        """``Σ_{e∈u} values(w, g)_e`` for every unit ``u``: the one accessor criteria read a
        target through. A weight target sums over its layout's units (``context.weight``
        gives the weights to score: a straight-through regime's dense copy); targets that
        span slices of several tensors (channel groups, heads) override this and sum over
        every slice a unit owns. Returns ``None`` when ``values`` skipped every tensor
        (e.g. no gradient yet)."""
        if self.param is None:
            raise ValueError(f"target {self.name!r} has no tensor to read; its plugin scores it with its own "
                             "criterion")
        out = values(context.weight(self), context.grad(self))
        return None if out is None else self.layout.reduce_sum(out)

    def expand_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """The stored mask viewed so it broadcasts against the target's tensor."""
        return self.layout.expand(mask, self.shape)

    def describe(self) -> str:
        return f"{self.name} [{self.layout.name}, shape={self.shape}, units={self.num_units}]"
