"""Unit layouts: how the units of a target partition its tensor.

A layout answers four questions for a tensor of a given shape: how many units there are,
what shape the stored boolean mask has, how an element-wise statistic is summed per unit,
and how a mask keeping ``k`` units is chosen from per-unit scores.

- ``element``: every entry is a unit (unstructured sparsity). Also the layout of flat unit
  vectors that are not weights (edges, Gaussians, hash entries): a 1-D shape ``(n,)``.
- ``nm``: N:M semi-structured sparsity (Mishra et al., 2021, "Accelerating Sparse Deep
  Neural Networks"): in every group of ``m`` consecutive weights along the input dimension
  (dim 1), exactly ``n`` are kept, the ``n`` with the largest scores.
- ``channel``: output channels / filters (slices along dim 0).
- ``row``: slices along any dimension ``dim`` (generic structured units).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import torch

from .registry import LAYOUTS
from .validation import check_int

Shape = Tuple[int, ...]


def top_k_mask(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """Boolean mask over a 1-D score vector keeping the ``keep`` largest scores.

    Ties are broken by position (earlier units win), exactly as a stable descending sort
    would, so the result is deterministic. Runs in O(n) (``kthvalue``), not O(n log n).
    """
    flat = scores.reshape(-1)
    n = flat.numel()
    if not 0 <= keep <= n:
        raise ValueError(f"keep must be in [0, {n}], got {keep}")
    if keep == 0:
        return torch.zeros(n, dtype=torch.bool, device=flat.device)
    if keep == n:
        return torch.ones(n, dtype=torch.bool, device=flat.device)
    threshold = torch.kthvalue(flat, n - keep + 1).values
    mask = flat > threshold
    ties = flat == threshold
    need = keep - int(mask.sum())
    tie_index = torch.nonzero(ties).squeeze(1)
    if need >= tie_index.numel():
        return mask | ties
    mask[tie_index[:need]] = True
    return mask


class UnitLayout:
    """Base class. Subclasses are small frozen dataclasses (picklable, comparable)."""

    name = "base"

    def validate(self, shape: Shape, target: str) -> None:
        """Raise ``ValueError`` naming ``target`` when the layout cannot cover ``shape``."""

    def num_units(self, shape: Shape) -> int:
        raise NotImplementedError

    def mask_shape(self, shape: Shape) -> Shape:
        raise NotImplementedError

    def reduce_sum(self, values: torch.Tensor) -> torch.Tensor:
        """Sum an element-wise statistic over each unit: ``[*shape] -> [num_units]``."""
        raise NotImplementedError

    def expand(self, mask: torch.Tensor, shape: Shape) -> torch.Tensor:
        """View a stored mask so that it broadcasts against a tensor of ``shape``."""
        raise NotImplementedError

    def fixed_keep(self, shape: Shape) -> Optional[int]:
        """Number of kept units the layout itself dictates (N:M), or ``None``."""
        return None

    def select(self, scores: torch.Tensor, keep: int, shape: Shape) -> torch.Tensor:
        """Boolean mask of ``mask_shape(shape)`` keeping the ``keep`` best units."""
        return top_k_mask(scores, keep).reshape(self.mask_shape(shape))


@LAYOUTS.register("element")
@dataclass(frozen=True)
class Elements(UnitLayout):
    name = "element"

    def num_units(self, shape: Shape) -> int:
        return int(torch.Size(shape).numel())

    def mask_shape(self, shape: Shape) -> Shape:
        return tuple(shape)

    def reduce_sum(self, values: torch.Tensor) -> torch.Tensor:
        return values.reshape(-1)

    def expand(self, mask: torch.Tensor, shape: Shape) -> torch.Tensor:
        return mask


@LAYOUTS.register("nm")
@dataclass(frozen=True)
class NM(Elements):
    """Keep ``n`` of every ``m`` consecutive weights along the input dimension (dim 1).

    Units are elements, as for :class:`Elements`; the pattern fixes how many stay.
    """

    n: int = 2
    m: int = 4
    name = "nm"

    def __post_init__(self) -> None:
        check_int(self.n, "N of N:M")
        check_int(self.m, "M of N:M")
        if not 0 < self.n < self.m:
            raise ValueError(f"N:M needs 0 < N < M, got {self.n}:{self.m}")

    def validate(self, shape: Shape, target: str) -> None:
        if len(shape) < 2:
            raise ValueError(f"{self.n}:{self.m} sparsity on {target!r} needs a 2-D or larger weight, got shape {tuple(shape)}")
        if shape[1] % self.m:
            raise ValueError(
                f"{self.n}:{self.m} sparsity on {target!r}: input dimension {shape[1]} is not divisible by M={self.m}"
            )

    def fixed_keep(self, shape: Shape) -> int:
        return self.num_units(shape) // self.m * self.n

    def select(self, scores: torch.Tensor, keep: int, shape: Shape) -> torch.Tensor:
        # Move the input dim last, split it into groups of m, keep the top n of each group.
        grid = scores.reshape(shape).movedim(1, -1)
        groups = grid.reshape(*grid.shape[:-1], grid.shape[-1] // self.m, self.m)
        order = torch.argsort(groups, dim=-1, descending=True, stable=True)
        keep_groups = torch.zeros_like(groups, dtype=torch.bool)
        keep_groups.scatter_(-1, order[..., : self.n], True)
        return keep_groups.reshape(grid.shape).movedim(-1, 1).contiguous()


@LAYOUTS.register("row")
@dataclass(frozen=True)
class Rows(UnitLayout):
    """Slices along ``dim``: every index of that dimension is one unit."""

    dim: int = 0
    name = "row"

    def validate(self, shape: Shape, target: str) -> None:
        if not -len(shape) <= self.dim < len(shape):
            raise ValueError(f"{self.name} units along dim {self.dim} do not exist on {target!r} of shape {tuple(shape)}")

    def _dim(self, shape: Shape) -> int:
        return self.dim % len(shape)

    def num_units(self, shape: Shape) -> int:
        return int(shape[self._dim(shape)])

    def mask_shape(self, shape: Shape) -> Shape:
        return (self.num_units(shape),)

    def reduce_sum(self, values: torch.Tensor) -> torch.Tensor:
        d = self._dim(values.shape)
        return values.movedim(d, 0).reshape(values.shape[d], -1).sum(dim=1)

    def expand(self, mask: torch.Tensor, shape: Shape) -> torch.Tensor:
        view = [1] * len(shape)
        view[self._dim(shape)] = -1
        return mask.reshape(view)


@LAYOUTS.register("channel")
@dataclass(frozen=True)
class Channels(Rows):
    """Output channels / filters: slices along dim 0 of a Linear or Conv weight."""

    dim: int = 0
    name = "channel"

    def __post_init__(self) -> None:
        if self.dim != 0:
            raise ValueError("channel units are output channels (dim 0); use Rows(dim=...) for others")


def build_layout(spec: "str | UnitLayout", **kwargs) -> UnitLayout:
    """A layout from its registered name (``"element"``, ``"nm"``, ``"channel"``, ``"row"``)."""
    layout = LAYOUTS.build(spec, **kwargs)
    if not isinstance(layout, UnitLayout):
        raise TypeError(f"expected a UnitLayout or one of {LAYOUTS.names()}, got {type(layout).__name__}")
    return layout


def parse_layout(spec: "str | UnitLayout") -> UnitLayout:
    """Accept ``"2:4"`` as shorthand for ``NM(2, 4)``."""
    if isinstance(spec, str) and ":" in spec:
        parts = spec.split(":")
        try:
            n, m = (int(p) for p in parts)
        except ValueError:
            raise ValueError(f"N:M pattern must look like '2:4', got {spec!r}") from None
        return NM(n, m)
    return build_layout(spec)
