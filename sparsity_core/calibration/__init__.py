"""Calibration (post-training, one-shot) pruning for transformers, built on the core.

Importing this package registers the ``"per_row"`` layout (Wanda's comparison group).

- :mod:`.wanda`: Wanda-style ``|W|·‖X‖₂`` per output row, unstructured or N:M
  (``wanda_prune``), over the layer-by-layer driver :func:`calibrate_prune` (:mod:`.driver`).
- :mod:`.dsnot`: DSnoT training-free prune-and-grow (``refine=DSnoT()``).
- :mod:`.slicegpt`: SliceGPT (fold LayerNorm, rotate the residual stream by its PCA, slice).
- :mod:`.cats`: CATS thresholded activation sparsity (a drop-in activation wrapper).
- :mod:`.cfsp`: CFSP coarse-to-fine structured pruning of FFN channels (block budgets from
  angular distances, channels by relative importance × activation, removed physically).
- :mod:`.ftp`: FTP learned token routing (tokens skip blocks; routers trained on the frozen model).
- :mod:`.essential`: essential sparsity (one-shot magnitude sweep, sharp dropping point).
- :mod:`.data`: calibration-data checks shared by all of them.
"""
from .cats import CATS, CATSResult, calibrate_cats, measure_activation_sparsity, remove_cats
from .cfsp import CFSPBlocks, CFSPResult, cfsp_prune
from .data import CalibrationStop, calibration_batches, check_calibration, checked_forward
from .driver import CalibrationResult, FixedKeep, calibrate_prune
from .dsnot import DSnoT, expected_error
from .essential import EssentialSparsityResult, essential_sparsity
from .ftp import TokenRouting, search_allocation, train_token_router
from .rowwise import PerRowElements
from .slicegpt import ResidualBlock, ResidualPlan, SliceResult, bert_plan, slice_gpt, vit_plan
from .slicegpt_modules import StreamNorm
from .wanda import wanda_layout, wanda_prune, wanda_targets

__all__ = ["CATS", "CATSResult", "CFSPBlocks", "CFSPResult", "cfsp_prune", "CalibrationResult", "CalibrationStop", "DSnoT", "EssentialSparsityResult",
           "FixedKeep", "PerRowElements", "ResidualBlock", "ResidualPlan", "SliceResult", "StreamNorm", "bert_plan",
           "calibrate_cats", "calibrate_prune", "calibration_batches", "check_calibration", "checked_forward", "essential_sparsity",
           "expected_error", "measure_activation_sparsity", "TokenRouting", "search_allocation", "train_token_router", "remove_cats", "slice_gpt", "vit_plan", "wanda_layout",
           "wanda_prune", "wanda_targets"]
