"""The vision plugin's optional dependencies, imported when first needed."""
from __future__ import annotations

from types import ModuleType

from .._lazy import require


def torch_pruning() -> ModuleType:
    return require("torch_pruning", "vision")
