"""Budgets: how much of a set of targets may stay.

A budget is either a sparsity (fraction removed) or an absolute amount kept, measured in
units, parameters or MACs::

    Budget(sparsity=0.9)                      # remove 90% of the units
    Budget(sparsity=0.5, measure="macs")      # keep 50% of the MACs
    Budget(keep=100_000, measure="params")    # keep 100k parameters
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..targets import Target

MEASURES = ("units", "params", "macs")


@dataclass(frozen=True)
class Budget:
    sparsity: Optional[float] = None
    keep: Optional[float] = None
    measure: str = "units"

    def __post_init__(self) -> None:
        if self.measure not in MEASURES:
            raise ValueError(f"budget measure must be one of {', '.join(MEASURES)}; got {self.measure!r}")
        if (self.sparsity is None) == (self.keep is None):
            raise ValueError("a budget needs exactly one of sparsity= or keep=")
        if self.sparsity is not None:
            check_sparsity(self.sparsity)
        if self.keep is not None and not self.keep >= 0:
            raise ValueError(f"budget keep must be >= 0, got {self.keep!r}")

    def keep_cost(self, total_cost: float) -> float:
        """Cost (in ``measure``) that may stay out of ``total_cost``."""
        if self.sparsity is not None:
            return (1.0 - self.sparsity) * total_cost
        return min(float(self.keep), total_cost)


def check_sparsity(value: float, what: str = "sparsity") -> float:
    """Validate a sparsity level: a number in [0, 1)."""
    try:
        ok = 0.0 <= float(value) < 1.0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"{what} must be a number in [0, 1), got {value!r}")
    return float(value)


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
