"""Step-keyed schedules: ``value(step) -> sparsity``."""
from .base import Ramp, Schedule
from .blockwise import BlockAllocation
from .constant import Constant, one_shot
from .function import FunctionSchedule, as_schedule
from .growth import GrowthToBudget
from .iterative import Iterative
from .ramps import Cosine, Cubic, Exponential, Linear
from .stepwise_nm import StepwiseNM

__all__ = ["Ramp", "Schedule", "BlockAllocation", "Constant", "one_shot", "GrowthToBudget", "Iterative", "Cosine", "Cubic", "Exponential", "Linear", "StepwiseNM",
           "FunctionSchedule", "as_schedule"]
