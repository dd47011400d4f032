"""Lazy imports of the graph plugin's optional dependencies, with an install hint."""
from __future__ import annotations

import importlib
from types import ModuleType

_HINT = "pip install 'sparsity-suite[graph]'"


def require(module: str) -> ModuleType:
    """Import ``module`` or raise ``ImportError`` saying how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:  # pragma: no cover - exercised only without the extra
        raise ImportError(f"the graph plugin needs {module!r}: {_HINT}") from err


def torch_geometric() -> ModuleType:
    return require("torch_geometric")
