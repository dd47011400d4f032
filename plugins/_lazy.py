"""Lazy imports of a plugin's optional dependencies, failing with an install hint."""
from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any, Callable, Dict


def require(module: str, extra: str) -> ModuleType:
    """Import ``module`` or raise ``ImportError`` naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:  # pragma: no cover - exercised only without the extra
        raise ImportError(f"the {extra} plugin needs {module!r}: pip install 'sparsity-suite[{extra}]'") from err


def lazy_getattr(package: str, exports: Dict[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` importing ``package.<exports[name]>`` on first access of
    ``name`` (PEP 562), so a plugin's heavy dependencies load only when used."""

    def __getattr__(name: str) -> Any:
        if name in exports:
            return getattr(importlib.import_module(f"{package}.{exports[name]}"), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
