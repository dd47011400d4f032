"""Scoring functions ``(target, context) -> Tensor[num_units]``; higher scores are kept."""
from .base import AccumulatingCriterion, Criterion, ScoreContext
from .magnitude import Magnitude
from .movement import Movement
from .random import RandomScores
from .taylor import Taylor

__all__ = ["AccumulatingCriterion", "Criterion", "ScoreContext", "Magnitude", "Movement", "RandomScores", "Taylor"]
