"""Continual learning with sparsity: task streams for Lightning, rehearsal, SparCL, PackNet,
and training-FLOPs accounting.

- Streams: :class:`TaskStream` (a ``LightningDataModule`` of class- or task-incremental
  experiences; :func:`split_mnist`), :class:`StreamEvaluation` (accuracy matrix after each
  task; :class:`AccuracyMatrix`: average accuracy, forgetting, backward transfer),
  :func:`run_stream`.
- Rehearsal: :class:`ReservoirBuffer`, :class:`ContinualModule` (ER, DER++).
- SparCL (Wang et al., NeurIPS 2022): :class:`TaskAwareDynamicMasks` (TDM, a core mask
  program with :class:`WeightGradientImportance` and a prune-and-regrow part),
  :class:`DynamicGradientMask` (DGM, a regime part), :class:`DynamicDataRemoval` (DDR, a
  mask program over the task's examples, applied by the loader's sampler).
- Per-task masks for task-incremental streams: :class:`PackNet` (prune and freeze after each
  task) and :class:`WSN` (learned subnetworks, straight-through scores); bit-packed masks.
- Costs: :class:`TrainingFlops`.

``torchvision`` is imported only to read data sets (``pip install 'sparsity-suite[continual]'``).
"""
from __future__ import annotations

from importlib import import_module

from .._lazy import lazy_getattr

_EXPORTS = {
    "TaskStream": "datamodule", "TaskExamples": "datamodule", "KeptSampler": "sampler",
    "split_classes": "splits", "check_tasks": "splits", "SCENARIOS": "splits",
    "split_mnist": "data", "mnist_tensors": "data", "cifar10_jpeg_tensors": "data",
    "ReservoirBuffer": "buffer", "ContinualModule": "module", "mask_logits": "module", "mlp": "module",
    "AccuracyMatrix": "metrics", "StreamEvaluation": "evaluation", "evaluate_seen": "evaluation",
    "accuracy": "evaluation", "run_stream": "stream", "TaskSwitch": "stream",
    "WeightGradientImportance": "importance", "TaskAwareDynamicMasks": "tdm", "ImportanceRegrow": "tdm",
    "DynamicGradientMask": "dgm", "top_gradient_mask": "dgm",
    "DynamicDataRemoval": "ddr", "ForgettingEvents": "ddr",
    "PackNet": "packnet", "FREE": "packnet", "WSN": "wsn", "pack_bits": "bits", "unpack_bits": "bits",
    "TrainingFlops": "flops", "step_macs": "flops",
    "ExperimentConfig": "experiment", "run_experiment": "experiment",
}

__all__ = sorted(_EXPORTS) + ["register"]


def register() -> None:
    """Entry point of the ``sparsity_suite.plugins`` group: registers the ``sparcl_tdm``,
    ``sparcl_ddr``, ``packnet`` and ``wsn`` programs, the ``sparcl_importance`` criterion and the
    ``dgm`` regime part."""
    from sparsity_core.registry import CRITERIA, ENFORCEMENTS

    for module in ("tdm", "ddr", "packnet", "wsn"):
        import_module(f"{__name__}.{module}")
    from .dgm import DynamicGradientMask
    from .importance import WeightGradientImportance

    if "sparcl_importance" not in CRITERIA:
        CRITERIA.register("sparcl_importance", WeightGradientImportance)
    if "dgm" not in ENFORCEMENTS:
        ENFORCEMENTS.register("dgm", DynamicGradientMask)


__getattr__ = lazy_getattr(__name__, _EXPORTS)
