"""The video plugin's optional dependency (diffusers), imported when first needed."""
from __future__ import annotations

from types import ModuleType

from .._lazy import require


def diffusers() -> ModuleType:
    return require("diffusers", "video")
