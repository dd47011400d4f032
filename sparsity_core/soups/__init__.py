"""Sparse Model Soups (Zimmer et al., ICLR 2024): retrains that share one mask, averaged
(uniform or greedy soups), BatchNorm recalibration, and IMP phases that start from the soup."""
from .averaging import Ingredient, average_states, check_shared_masks, greedy_soup, score_state, uniform_soup
from .batchnorm import batchnorm_layers, recalibrate_batchnorm
from .sms import SparseModelSoups

__all__ = ["Ingredient", "SparseModelSoups", "average_states", "batchnorm_layers", "check_shared_masks",
           "greedy_soup", "recalibrate_batchnorm", "score_state", "uniform_soup"]
