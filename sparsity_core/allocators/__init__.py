"""Allocators turn scores of many targets and one budget into kept units per target."""
from .base import Allocator
from .budget import Budget, check_sparsity
from .erk import ERK
from .global_rank import GlobalRank
from .grouped import Grouped
from .lamp import LAMP, lamp_scores
from .uniform import Uniform

__all__ = ["Allocator", "Budget", "check_sparsity", "ERK", "GlobalRank", "Grouped", "LAMP", "lamp_scores", "Uniform"]
