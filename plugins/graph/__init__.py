"""Graph plugin (PyTorch Geometric): edge sparsification and graph sparsity methods.

``torch_geometric`` is imported only when a function needs it
(``pip install 'sparsity-suite[graph]'``). TEDDY degree-based edge sparsification
(:mod:`.teddy`), graph lottery tickets (:mod:`.ugs`, the :class:`UGS` callback), spectral
quality (:mod:`.spectral`), the dyGRASS dynamic spectral sparsifier (:mod:`.dygrass`),
reference models and offline data loaders.
"""
from __future__ import annotations

from importlib import import_module

_EXPORTS = {"teddy_edge_scores": "teddy", "teddy_mask": "teddy", "TEDDY": "teddy", "check_edge_index": "teddy",
            "distillation_loss": "teddy", "relative_condition_number": "spectral", "laplacian": "spectral",
            "EdgeMask": "ugs", "WeightMask": "ugs", "RoundRates": "ugs", "rate_for": "ugs", "UGS": "ugs_callback",
            "GCN": "models", "GIN": "models", "NodeClassifier": "node_module", "sparse_input_dropout": "models",
            "planetoid": "datasets", "tudataset": "datasets", "karate_club": "datasets", "sbm_graph": "datasets",
            "grid_graph": "datasets", "node_datamodule": "datasets",
            "DynamicSparsifier": "dygrass", "grass_sparsifier": "dygrass"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
