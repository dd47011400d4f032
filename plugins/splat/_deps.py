"""The splat plugin's optional dependencies, imported when first needed."""
from __future__ import annotations

from types import ModuleType

from .._lazy import require


def gsplat(module: str = "") -> ModuleType:
    """``gsplat`` or one of its submodules (``"strategy"``, ``"strategy.ops"``...)."""
    return require("gsplat" + (f".{module}" if module else ""), "splat")
