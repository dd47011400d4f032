"""Sparse attention for diffusers video diffusion transformers.

Static patterns of Sparse-vDiT / Sparse VideoGen / STA as block masks at any token count
(:mod:`.patterns`, over the frames × height × width layout of :mod:`.layout`, text tokens
dense, optionally over 3D tiles of tokens, :mod:`.tiling`); a CPU block-sparse attention
kernel with autograd and a dense reference (:mod:`.kernel`), FlexAttention with a
``BlockMask`` on CUDA (:mod:`.flex`); per-layer processors wrapping each model's own
processor, with JSON plans (:mod:`.processors`, :mod:`.plan`; Wan, CogVideoX, HunyuanVideo,
LTX-Video, Mochi, see :mod:`.models`); the offline per-head pattern search as a program on the
denoising clock (:mod:`.search`, choices by :mod:`.allocation`, costs measured on this
machine by :mod:`.cost`); dynamic methods choosing block masks per call (:mod:`.dynamic`):
BLASST (:mod:`.blasst`), ProxyAttn (:mod:`.proxyattn`), S2O (:mod:`.s2o`), and the learned
gates of SeerAttention and Trainable Dynamic Mask Attention (:mod:`.gates`) trained by
distillation through Lightning (:mod:`.distill`); a denoising loop, errors and built-in
locality for evaluation (:mod:`.evaluation`); tiny random-init models (:mod:`.tiny`).
``diffusers`` is imported only when a model is built (``pip install 'sparsity-suite[video]'``).
"""
from __future__ import annotations

from importlib import import_module

from .._lazy import lazy_getattr

_EXPORTS = {
    "TokenLayout": "layout", "Pattern": "patterns", "PATTERN_KINDS": "patterns", "block_mask": "patterns",
    "density": "patterns",
    "block_sparse_attention": "kernel", "masked_attention": "kernel", "multi_pattern_attention": "kernel",
    "head_groups": "kernel",
    "AttentionPlan": "plan", "install": "processors", "SparseAttention": "processors",
    "SparseAttnProcessor": "processors", "check_plan": "processors", "SPECS": "models",
    "tiny_model": "tiny", "tiny_inputs": "tiny",
    "AttentionCost": "cost", "measure_costs": "cost",
    "PatternSearch": "search", "head_targets": "search", "default_candidates": "search",
    "blasst_attention": "blasst", "calibrate_threshold": "blasst", "Blasst": "blasst",
    "DynamicAttention": "dynamic", "per_head_attention": "dynamic",
    "ProxyAttn": "proxyattn", "proxyattn_mask": "proxyattn",
    "S2O": "s2o", "s2o_attention": "s2o", "calibrate_epsilon": "s2o",
    "SeerAttention": "gates", "TrainableDynamicMask": "gates", "dense_block_targets": "gates",
    "GateDistillation": "distill", "calibration_inputs": "distill", "calibration_loader": "distill",
    "flex_attention_masked": "flex", "flex_block_mask": "flex", "use_flex": "kernel",
    "tile_permutation": "tiling", "to_tiled": "tiling", "from_tiled": "tiling",
    "knapsack": "allocation", "within_budget": "allocation", "ranked_dense": "allocation",
    "denoise": "evaluation", "relative_l2": "evaluation", "psnr": "evaluation", "add_rope_locality": "evaluation",
}

__all__ = sorted(_EXPORTS) + ["register"]


def register() -> None:
    """Entry point of the ``sparsity_suite.plugins`` group: registers the ``pattern_search`` program."""
    import_module(f"{__name__}.search")


__getattr__ = lazy_getattr(__name__, _EXPORTS)
