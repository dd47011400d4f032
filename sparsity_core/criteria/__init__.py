"""Scoring functions ``(target, context) -> Tensor[num_units]``; higher scores are kept."""
from .base import OBSERVES, AccumulatingCriterion, Criterion, ScoreContext
from .change import Change
from .given import GivenScores
from .magnitude import Magnitude
from .movement import Movement
from .random import RandomScores
from .sensitivity import Sensitivity
from .taylor import Taylor
from .wanda import Wanda

__all__ = ["OBSERVES", "AccumulatingCriterion", "Criterion", "ScoreContext", "Magnitude", "Movement", "RandomScores",
           "Sensitivity", "Taylor", "Wanda", "Change", "GivenScores"]
