"""How masks act on training: hard zeros, straight-through, and the regimes built on them."""
from .base import Enforcement, weight_targets
from .hard import HardMask
from .straight_through import StraightThrough

__all__ = ["Enforcement", "weight_targets", "HardMask", "StraightThrough"]
