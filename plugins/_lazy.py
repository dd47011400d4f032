"""Lazy imports of a plugin's optional dependencies, failing with an install hint."""
from __future__ import annotations

import importlib
from types import ModuleType


def require(module: str, extra: str) -> ModuleType:
    """Import ``module`` or raise ``ImportError`` naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:  # pragma: no cover - exercised only without the extra
        raise ImportError(f"the {extra} plugin needs {module!r}: pip install 'sparsity-suite[{extra}]'") from err
