"""The continual plugin's optional dependency (torchvision, for MNIST / CIFAR-10 loading),
imported when first needed."""
from __future__ import annotations

from types import ModuleType

from .._lazy import require


def torchvision_datasets() -> ModuleType:
    """``torchvision.datasets`` (``MNIST``, ``ImageFolder``)."""
    return require("torchvision.datasets", "continual")
