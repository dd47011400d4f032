"""One place for the checks every entry point applies to user input.

Each check returns the validated value (converted to the plain type) or raises
``ValueError`` naming the argument and what it got. ``bool`` is never accepted where a number
is asked for (``True`` is an ``int`` in Python, and a silent 1 is a bug in a configuration).
"""
from __future__ import annotations

import math
import numbers
from typing import Optional


def _number(value: object, what: str, kind: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise ValueError(f"{what} must be {kind}, got {value!r}")
    return float(value)


def check_int(value: object, what: str, minimum: Optional[int] = None, maximum: Optional[int] = None) -> int:
    """An ``int`` (not a bool) in ``[minimum, maximum]``."""
    bounds = (f" >= {minimum}" if minimum is not None else "") + (f" <= {maximum}" if maximum is not None else "")
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{what} must be an int{bounds}, got {value!r}")
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ValueError(f"{what} must be an int{bounds}, got {value!r}")
    return int(value)


def check_range(value: object, what: str, low: float = 0.0, high: float = 1.0, low_open: bool = False,
                high_open: bool = False) -> float:
    """A finite number in the interval ``[low, high]`` (ends open where asked)."""
    interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    v = _number(value, what, f"a number in {interval}")
    if v < low or v > high or (low_open and v == low) or (high_open and v == high):
        raise ValueError(f"{what} must be a number in {interval}, got {value!r}")
    return v


def check_sparsity(value: object, what: str = "sparsity") -> float:
    """A sparsity (fraction removed) in ``[0, 1)``."""
    return check_range(value, what, 0.0, 1.0, high_open=True)


def check_nonnegative(value: object, what: str) -> float:
    """A finite number ``>= 0``."""
    v = _number(value, what, "a number >= 0")
    if v < 0:
        raise ValueError(f"{what} must be a number >= 0, got {value!r}")
    return v


def check_positive(value: object, what: str) -> float:
    """A finite number ``> 0``."""
    v = _number(value, what, "a number > 0")
    if v <= 0:
        raise ValueError(f"{what} must be a number > 0, got {value!r}")
    return v


def keep_to_sparsity(keep: object, what: str = "keep fraction") -> float:
    """Convert a keep fraction in ``(0, 1]`` (where a paper speaks so) to a sparsity."""
    return 1.0 - check_range(keep, what, 0.0, 1.0, low_open=True)
