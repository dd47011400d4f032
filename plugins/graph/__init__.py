"""Graph plugin (PyTorch Geometric): edge sparsification and graph sparsity methods.

``torch_geometric`` is imported only when a function needs it
(``pip install 'sparsity-suite[graph]'``). Available so far: TEDDY degree-based edge
sparsification (:mod:`.teddy`).
"""
from __future__ import annotations

from importlib import import_module

_EXPORTS = {"teddy_edge_scores": "teddy", "teddy_mask": "teddy", "TEDDY": "teddy", "check_edge_index": "teddy",
            "distillation_loss": "teddy", "relative_condition_number": "spectral", "laplacian": "spectral"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
