"""The graph plugin's optional dependencies, imported when first needed."""
from __future__ import annotations

from types import ModuleType

from .._lazy import require


def torch_geometric(module: str = "") -> ModuleType:
    """``torch_geometric`` or one of its submodules (``"transforms"``, ``"utils"``...)."""
    return require("torch_geometric" + (f".{module}" if module else ""), "graph")
