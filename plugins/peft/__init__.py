"""Sparse parameter-efficient fine-tuning: adapters on ``nn.Linear`` layers with a peft-like API.

Methods (:data:`~.base.METHODS`): LoRA (:mod:`.lora`), SNELL (:mod:`.snell`, kernelized LoRA
with competition-based sparsification), PST (:mod:`.pst`, parameter-efficient sparse
training), DSEE (:mod:`.dsee`, low-rank plus decomposition-supported sparse update, then
magnitude pruning of the merged weights), and subnetwork fine-tuning (:mod:`.subnetwork`: only
the entries a gradient-sensitivity or a previous fine-tune selects train). The sparse parts are core targets over computed
tensors, scored and selected by the core (:mod:`.selection`). :func:`inject_adapters` /
:class:`AdapterSet` (merge, unmerge, counts, adapter-only save and load, :mod:`.persist`),
the :class:`SparseAdapters` program for ``SparsityCallback``, and memory accounting against
peft's LoRA (:mod:`.memory`). ``peft``, ``transformers`` and ``safetensors`` are imported only
when needed (``pip install 'sparsity-suite[peft]'``).
"""
from __future__ import annotations

from importlib import import_module

from .._lazy import lazy_getattr

_EXPORTS = {
    "Adapter": "base", "METHODS": "base", "AdaptedLinear": "base",
    "LoRA": "lora", "SNELL": "snell", "PST": "pst", "DSEE": "dsee", "prune_merged": "dsee", "retune_program": "dsee",
    "MergedPruning": "dsee", "head_targets": "heads",
    "godec": "decompose", "Decomposition": "decompose", "KERNELS": "kernels",
    "AdapterConfig": "model", "AdapterSet": "model", "inject_adapters": "model", "build_adapters": "model",
    "save_adapters": "persist", "load_adapters": "persist", "match_linear": "matching",
    "SparseAdapters": "program",
    "SubnetworkTuning": "subnetwork", "select_subnetwork": "subnetwork", "subnetwork_scores": "subnetwork",
    "MemoryRow": "memory", "PeftLoRA": "memory", "measure": "memory", "memory_table": "memory",
    "compare_memory": "memory", "peft_available": "memory",
}

__all__ = sorted(_EXPORTS) + ["register"]


def register() -> None:
    """Entry point of the ``sparsity_suite.plugins`` group: registers the adapter methods and
    the ``sparse_adapters`` program."""
    import_module(f"{__name__}.program")
    import_module(f"{__name__}.subnetwork")


__getattr__ = lazy_getattr(__name__, _EXPORTS)
