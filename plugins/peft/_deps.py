"""The peft plugin's optional dependencies, imported when first needed.

``safetensors`` is optional even with the extra: adapter files fall back to ``torch.save``
(read back with ``torch.load(..., weights_only=True)``) when it is missing.
"""
from __future__ import annotations

import importlib
from types import ModuleType
from typing import Optional

from .._lazy import require


def peft() -> ModuleType:
    """HF ``peft`` (the LoRA baseline of :mod:`.memory`)."""
    return require("peft", "peft")


def transformers() -> ModuleType:
    return require("transformers", "peft")


def safetensors_torch() -> Optional[ModuleType]:
    """``safetensors.torch``, or ``None`` when safetensors is not installed."""
    try:
        return importlib.import_module("safetensors.torch")
    except ImportError:
        return None
