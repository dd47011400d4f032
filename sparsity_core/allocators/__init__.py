"""Allocators turn scores of many targets and one budget into kept units per target."""
from .base import Allocator
from .budget import Budget, check_sparsity
from .ecoflap import ECoFLaP
from .erk import ERK
from .global_rank import GlobalRank
from .grouped import Grouped
from .lamp import LAMP, lamp_scores
from .mirror import MirrorDescent
from .owl import OWL
from .probes import loss_probe, masked_evaluator
from .random_search import RandomSearch
from .rocket import Knapsack, multiple_choice_knapsack
from .softmax import Softmax
from .tyr import Search
from .uniform import Uniform

__all__ = ["Allocator", "Budget", "check_sparsity", "ECoFLaP", "ERK", "GlobalRank", "Grouped", "Knapsack", "LAMP",
           "MirrorDescent", "OWL", "RandomSearch", "Search", "Softmax", "Uniform", "lamp_scores", "loss_probe",
           "masked_evaluator", "multiple_choice_knapsack"]
