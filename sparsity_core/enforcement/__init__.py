"""How masks act on training: hard zeros, straight-through, and the regimes built on them."""
from .base import Enforcement, weight_targets
from .decaying import DecayingMask
from .hard import HardMask
from .projected import ProjectedL0
from .regime import Regime, RegimePart, build_enforcement
from .prune_regrow import PruneRegrow
from .soft_shrink import SoftShrink
from .sr_ste import SRSTE
from .straight_through import StraightThrough
from .update_mask import UpdateMask

__all__ = ["Enforcement", "weight_targets", "DecayingMask", "HardMask", "ProjectedL0", "PruneRegrow", "Regime", "RegimePart",
           "build_enforcement", "SoftShrink",
           "SRSTE", "StraightThrough", "UpdateMask"]
