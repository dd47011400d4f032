"""Vision plugin: channel and head pruning of timm CNNs and ViTs.

Coupled channel groups come from Torch-Pruning's ``DependencyGraph`` and are core targets;
masks train softly (the :class:`ChannelPruning` program) and end in physical removal with the
optimizer carried along, an inference export (BatchNorm folding, fastest memory format) and
a report of parameters, MACs and measured latency. Needs ``pip install 'sparsity-suite[vision]'``
(timm, torch-pruning); they are imported when a function needs them.
"""
from __future__ import annotations

from importlib import import_module

from .._lazy import lazy_getattr

_EXPORTS = {
    "ChannelPruning": "channel_pruning",
    "discover_channel_groups": "groups", "ChannelGroup": "groups", "ChannelGroups": "groups",
    "GroupTraceError": "tracing", "GraphTimeLimitError": "tracing",
    "GroupMask": "enforcement", "MaskSparsity": "enforcement", "GroupEnvelope": "enforcement",
    "BNScale": "criteria", "HeadSensitivity": "criteria",
    "ChannelCost": "budget", "ChannelBudget": "budget", "channel_budget": "budget",
    "remove_channels": "removal", "PruningRecord": "record", "pruning_record": "record",
    "find_pruning_record": "record", "RemovalError": "removal",
    "fold_batchnorm": "export", "freeze_for_inference": "export", "optimize_for_inference": "export", "save_pruned": "export",
    "load_pruned": "reload", "apply_pruning_record": "reload",
    "prune_channels": "oneshot", "SparseWide": "sparse_ift", "IsoFlopAllocator": "sparse_ift",
    "pruning_report": "report", "format_report": "report", "measure_latency": "latency",
    "PAGCP": "pagcp", "pagcp_prune": "pagcp_oneshot", "JointSaliency": "saliency", "task_loss_probe": "task_probe",
    "EquilibriumPruning": "game",
}

__all__ = sorted(_EXPORTS) + ["register"]


def register() -> None:
    """Entry point of the ``sparsity_suite.plugins`` group: registers the vision criteria
    (``group_l1``, ``group_l2``, ``bn_scale``, ``head_sensitivity``),
    enforcements (``group``, ``mask_sparsity``, ``group_envelope``), the ``iso_flop``
    allocator of Sparse-IFT, the ``channels`` program, PAGCP's ``joint_saliency`` criterion
    and ``pagcp`` allocator, and the ``game`` program (pruning as a game)."""
    import_module(f"{__name__}.channel_pruning")
    import_module(f"{__name__}.criteria")
    import_module(f"{__name__}.enforcement")
    import_module(f"{__name__}.sparse_ift")
    import_module(f"{__name__}.saliency")
    import_module(f"{__name__}.pagcp")
    import_module(f"{__name__}.game")


__getattr__ = lazy_getattr(__name__, _EXPORTS)
