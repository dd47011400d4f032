"""Budgets: how much of a set of targets may stay.

A budget is either a sparsity (fraction removed) or an absolute amount kept, measured in
units, parameters or MACs::

    Budget(sparsity=0.9)                      # remove 90% of the units
    Budget(sparsity=0.5, measure="macs")      # keep 50% of the MACs
    Budget(keep=100_000, measure="params")    # keep 100k parameters
    Budget(sparsity=0.5, groups={"edges": 0.2, "weights": 0.6})   # a budget tree

``groups`` are sub-budgets (a sparsity per named group of targets, or per task), applied by
the ``grouped`` allocator; the top-level sparsity is then what is reported.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Optional

from ..targets import Target
from ..validation import check_nonnegative, check_sparsity

MEASURES = ("units", "params", "macs")

__all__ = ["MEASURES", "Budget", "check_sparsity", "kept_count", "unit_cost"]


@dataclass(frozen=True)
class Budget:
    sparsity: Optional[float] = None
    keep: Optional[float] = None
    measure: str = "units"
    groups: Optional[Mapping[str, float]] = None

    def __post_init__(self) -> None:
        if self.measure not in MEASURES:
            raise ValueError(f"budget measure must be one of {', '.join(MEASURES)}; got {self.measure!r}")
        if (self.sparsity is None) == (self.keep is None):
            raise ValueError("a budget needs exactly one of sparsity= or keep=")
        if self.sparsity is not None:
            check_sparsity(self.sparsity)
        if self.keep is not None:
            check_nonnegative(self.keep, "budget keep")
        if self.groups is not None:
            for name, value in self.groups.items():
                check_sparsity(value, f"sparsity of group {name!r}")

    def keep_cost(self, total_cost: float) -> float:
        """Cost (in ``measure``) that may stay out of ``total_cost``."""
        if self.sparsity is not None:
            return (1.0 - self.sparsity) * total_cost
        return min(float(self.keep), total_cost)


def kept_count(n: int, sparsity: float) -> int:
    """Units kept of ``n`` at ``sparsity``: ``⌊(1 − s)·n⌋``, the suite's one rounding rule (a
    budget is a ceiling on what stays; global ranking, UGS's rounds and TEDDY all keep this).
    Float error is absorbed with the allocators' tolerance, relative to the kept amount:
    ``⌊x + 10⁻⁹·max(1, x)⌋`` with ``x = (1 − s)·n``."""
    x = (1.0 - check_sparsity(sparsity)) * n
    return int(math.floor(x + 1e-9 * max(1.0, x)))


def unit_cost(target: Target, measure: str) -> float:
    """Cost of one unit of ``target`` in ``measure``."""
    if measure == "units":
        return 1.0
    if measure == "params":
        return float(target.params_per_unit)
    if measure == "macs":
        if not target.macs_per_unit:
            raise ValueError(
                f"a MACs budget needs MACs per unit, unknown for {target.name!r}: "
                "discover targets with example_input=... (one forward pass records them)"
            )
        return float(target.macs_per_unit)
    raise ValueError(f"budget measure must be one of {', '.join(MEASURES)}; got {measure!r}")
