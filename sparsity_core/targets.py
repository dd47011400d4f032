"""Targets: named sets of prunable units, with a cost per unit.

A :class:`Target` is what every other component talks about. It has a fully-qualified
name (for a weight, its name in ``model.named_parameters()``), a unit layout over a shape,
and the cost of one unit in parameters and MACs so that budgets can be expressed in units,
parameters or MACs. Criteria read every kind of target through one accessor,
:meth:`Target.unit_reduce` (``Σ`` over each unit's entries of a function of the values and
their gradients), so the same criterion scores all of them:

- a weight: ``Target(name, param=p, layout=...)``, one tensor, units by its layout;
- a computed tensor: ``Target(name, shape=..., compute=lambda: B @ A)`` (an adapter's
  update ΔW), read on demand; the mask acts where the plugin computes it;
- slices of several tensors: :class:`SliceTarget` (a coupled channel group: rows of one
  convolution, columns of the next, a norm's scale...), each slice mapping positions to units;
- no tensor: ``Target(name, shape=(n,))`` for edges, Gaussians, input features, examples;
  flat ones can be resized as the scene grows (:meth:`Target.resize`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Dict, Optional, Sequence, Tuple

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
            for parameter and computed targets and 0 otherwise.
        compute: for a tensor that is not stored but computed (``param=None``): a function
            returning it, shaped like ``shape``.
    """

    name: str
    layout: UnitLayout = field(default_factory=Elements)
    shape: Tuple[int, ...] = ()
    param: Optional[torch.nn.Parameter] = field(default=None, repr=False)
    module_name: str = ""
    macs_per_unit: float = 0.0
    params_per_unit: Optional[float] = None
    compute: Optional[Callable[[], torch.Tensor]] = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.param is not None and not self.shape:
            self.shape = tuple(self.param.shape)
        self.shape = tuple(int(s) for s in self.shape)
        if not self.shape:
            raise ValueError(f"target {self.name!r} needs a shape or a parameter")
        if self.param is not None and tuple(self.param.shape) != self.shape:
            raise ValueError(f"target {self.name!r}: shape {self.shape} does not match its parameter {tuple(self.param.shape)}")
        if self.param is not None and self.compute is not None:
            raise ValueError(f"target {self.name!r}: a target is a parameter or a computed tensor, not both")
        if self.compute is not None and not callable(self.compute):
            raise ValueError(f"target {self.name!r}: compute must be a callable returning the tensor")
        self.layout.validate(self.shape, self.name)
        if self.params_per_unit is None:
            n = self.num_units
            stored = self.param is not None or self.compute is not None
            self.params_per_unit = (torch.Size(self.shape).numel() / n if n else 0.0) if stored else 0.0

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

    def read(self) -> torch.Tensor:
        """The target's values: its parameter, or its computed tensor (detached)."""
        if self.param is not None:
            return self.param.detach()
        if self.compute is not None:
            value = self.compute().detach()
            if tuple(value.shape) != self.shape:
                raise ValueError(f"target {self.name!r}: compute() returned shape {tuple(value.shape)}, "
                                 f"expected {self.shape}")
            return value
        raise ValueError(f"target {self.name!r} has no tensor to read; its plugin scores it with its own criterion")

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
        out = values(context.weight(self), context.grad(self))
        return None if out is None else self.layout.reduce_sum(out)

    def expand_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """The stored mask viewed so it broadcasts against the target's tensor."""
        return self.layout.expand(mask, self.shape)

    def describe(self) -> str:
        return f"{self.name} [{self.layout.name}, shape={self.shape}, units={self.num_units}]"


@dataclass(eq=False)
class TensorSlice:
    """Positions ``index`` along ``dim`` of the tensor named ``tensor`` (a parameter or a
    buffer); ``unit[i]`` is the unit that owns position ``index[i]``. ``tag`` marks a role a
    plugin cares about (vision: ``"norm_scale"``, the scale of a BatchNorm)."""

    tensor: str
    dim: int
    index: torch.Tensor
    unit: torch.Tensor
    is_param: bool = True
    tag: str = ""


@dataclass(eq=False)
class SliceTarget(Target):
    """Units that own slices of several tensors (``tensors``: name -> tensor, shared by the
    targets of one model). A unit's statistic is the sum over every entry it owns in every
    parameter slice, so core criteria score it like a weight's unit."""

    slices: Tuple[TensorSlice, ...] = ()
    tensors: Dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    def tensor(self, slc: TensorSlice) -> torch.Tensor:
        return self.tensors[slc.tensor]

    def per_unit(self, values, slices: Optional[Sequence[TensorSlice]] = None) -> torch.Tensor:
        """``Σ`` over a unit's entries of ``values(tensor, slice)`` (an element-wise tensor
        shaped like the slice's tensor), for ``slices`` (default: all parameter slices)."""
        return self._sum_slices(values, slices)[0]

    def _sum_slices(self, values, slices: Optional[Sequence[TensorSlice]] = None) -> Tuple[torch.Tensor, bool]:
        out, seen = torch.zeros(self.num_units, dtype=torch.float64), False
        for s in (slices if slices is not None else [s for s in self.slices if s.is_param]):
            v = values(self.tensor(s), s)
            if v is None:
                continue
            seen = True
            per_pos = v.detach().double().movedim(s.dim, 0).reshape(v.shape[s.dim], -1).sum(1).cpu()
            out.index_add_(0, s.unit, per_pos[s.index])
        return out, seen

    def unit_reduce(self, values: ElementValues, context: "ScoreContext") -> Optional[torch.Tensor]:
        """``Σ`` over every parameter entry a unit owns, in every slice, of ``values(w, grad)``;
        ``None`` when ``values`` skipped every tensor (a gradient statistic before any gradient)."""
        out, seen = self._sum_slices(lambda t, s: values(t.detach(), None if t.grad is None else t.grad.detach()))
        return out if seen else None

    def unit_positions(self, slc: TensorSlice, mask: torch.Tensor) -> torch.Tensor:
        """Positions of ``slc`` whose unit is pruned by ``mask``."""
        return slc.index[~mask.to(slc.unit.device)[slc.unit]]
