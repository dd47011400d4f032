"""Adapters on ``nn.Linear`` layers, without changing the base model's state-dict keys.

An adapted layer stays the same module object (``isinstance(layer, nn.Linear)`` holds, its
``weight`` and ``bias`` are the same parameters): its class becomes a subclass whose forward
asks the adapter, and the adapter is its child module ``adapter``. The model's state dict is
then the base model's keys plus ``<layer>.adapter.<tensor>`` (no ``torch.nn.utils.parametrize``,
no wrapper module renaming the base keys); removing the adapter restores the class.

An :class:`Adapter` states its update as an effective weight ``W_eff = f(W)``: additive
methods (LoRA, SNELL, DSEE) give ``ΔW`` (:meth:`Adapter.delta`, ``W_eff = W + ΔW``), PST masks
the updated weight itself. Merging writes ``W_eff`` (computed in float64) into the layer's
weight and keeps the original tensor, so unmerging restores it bit for bit.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from sparsity_core.allocators.budget import kept_count
from sparsity_core.registry import Registry
from sparsity_core.targets import Target
from sparsity_core.validation import check_sparsity

#: adapter methods by name: ``METHODS.get("snell")(weight, **params)``
METHODS: Registry[Any] = Registry("adapter method")

ADAPTER = "adapter"  # the child-module name of the adapter inside an adapted layer


class Adapter(nn.Module):
    """Base class of one layer's adapter.

    Subclasses take the layer's (frozen) weight first, to size (and, for DSEE, initialise)
    their tensors, then their own keyword parameters and ``init`` (``False``: leave tensors
    uninitialised, a saved state is about to be loaded), and implement :meth:`config` and
    :meth:`delta` or :meth:`effective_weight`.
    """

    method = "adapter"
    #: the adapter masks the base weight itself (PST), so a sparsity program masking the same
    #: weight would conflict
    masks_base = False

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        if weight.dim() != 2:
            raise ValueError(f"an adapter needs a 2-D weight, got shape {tuple(weight.shape)}")
        self.out_features, self.in_features = (int(s) for s in weight.shape)
        self.merged = False
        self.enabled = True
        self.name = ""
        self._saved_weight: Optional[torch.Tensor] = None
        self.__dict__["_layer"] = None  # the adapted layer (plain attribute: not a submodule)

    # -- what subclasses implement -------------------------------------------------------
    def config(self) -> Dict[str, Any]:
        """The adapter's parameters as plain JSON data (rebuilds it: ``cls(weight, **config)``)."""
        raise NotImplementedError

    def delta(self) -> torch.Tensor:
        """``ΔW`` (``[out, in]``, differentiable) of an additive adapter."""
        raise NotImplementedError

    def effective_weight(self, weight: torch.Tensor) -> torch.Tensor:
        """The weight the adapted layer computes with (differentiable)."""
        return weight + self.delta()

    def forward_linear(self, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        """The adapted layer's output."""
        return F.linear(x, self.effective_weight(weight), bias)

    def targets(self) -> List[Target]:
        """The core targets of this adapter (computed tensors), named after its layer."""
        return []

    # -- sparsity (adapters with a keep rule: ``has_sparsity``) ------------------------------
    #: the adapter keeps a fraction of a tensor (SNELL's ΔW, PST's weight) by a rule
    has_sparsity = False

    @property
    def sparsity(self) -> float:
        """Fraction ``s`` removed by the keep rule (0 for dense adapters)."""
        return self.__dict__.get("_sparsity", 0.0)

    @sparsity.setter
    def sparsity(self, value: float) -> None:
        if not self.has_sparsity:
            raise ValueError(f"{self.method} adapters have no sparsity to set")
        self.__dict__["_sparsity"] = check_sparsity(value)

    def removed_fraction(self) -> float:
        """Fraction of the sparse tensor's entries the rule removes: ``1 − kept_count(n, s)/n``."""
        n = self.out_features * self.in_features
        return 1.0 - kept_count(n, self.sparsity) / n

    @torch.no_grad()
    def merged_weight(self, weight: torch.Tensor) -> torch.Tensor:
        """``W_eff`` without gradient, summed in float64 and cast to the weight's dtype."""
        return (weight.double() + self.delta().double()).to(weight.dtype)

    # -- binding, merging ----------------------------------------------------------------
    @property
    def layer(self) -> nn.Linear:
        layer = self.__dict__["_layer"]
        if layer is None:
            raise RuntimeError(f"{type(self).__name__} is not attached to a layer")
        return layer

    def bind(self, layer: nn.Linear, name: str) -> None:
        """Called once the adapter sits in ``layer`` (named ``name`` in the model)."""
        self.__dict__["_layer"] = layer
        self.name = name

    @torch.no_grad()
    def merge(self) -> None:
        """Write ``W_eff`` into the layer's weight (in place: the parameter object stays)."""
        if self.merged:
            return
        w = self.layer.weight
        merged = self.merged_weight(w)
        self._saved_weight = w.detach().clone()
        w.copy_(merged)
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Restore the weight held before :meth:`merge`, bit for bit."""
        if not self.merged:
            return
        saved = self._saved_weight
        self.layer.weight.copy_(saved)
        if not torch.equal(self.layer.weight, saved):  # pragma: no cover - copy_ is exact
            raise RuntimeError(f"unmerge of {self.name!r} did not restore the base weight exactly")
        self._saved_weight = None
        self.merged = False

    def forget_original(self) -> None:
        """Drop the kept original weight: the merge is permanent (merge-and-unload, pruning)."""
        self._saved_weight = None
        self.merged = False

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.config().items())


class AdaptedMixin:
    """The forward of an adapted layer: the adapter's, unless merged or disabled."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002 - nn.Linear's name
        adapter = self._modules.get(ADAPTER)
        if adapter is None or adapter.merged or not adapter.enabled:
            return F.linear(input, self.weight, self.bias)
        return adapter.forward_linear(input, self.weight, self.bias)


class AdaptedLinear(AdaptedMixin, nn.Linear):
    """An ``nn.Linear`` carrying an adapter (see the module doc)."""

    base_class = nn.Linear


_CLASSES: Dict[type, type] = {nn.Linear: AdaptedLinear}


def adapted_class(cls: type) -> type:
    """The adapted subclass of ``cls`` (an ``nn.Linear`` or a subclass keeping its forward)."""
    if cls not in _CLASSES:
        _CLASSES[cls] = type(f"Adapted{cls.__name__}", (AdaptedMixin, cls), {"base_class": cls, "__module__": __name__})
    return _CLASSES[cls]


def is_adapted(module: nn.Module) -> bool:
    return isinstance(module, AdaptedMixin)


def attach_adapter(layer: nn.Linear, adapter: Adapter, name: str) -> None:
    """Put ``adapter`` into ``layer`` (class swapped, child module ``adapter``)."""
    if is_adapted(layer) or ADAPTER in layer._modules or hasattr(layer, ADAPTER):
        raise ValueError(f"layer {name!r} already has an attribute {ADAPTER!r} (an adapter?)")
    layer.__class__ = adapted_class(type(layer))
    layer.add_module(ADAPTER, adapter)
    adapter.bind(layer, name)


def detach_adapter(layer: nn.Module) -> Adapter:
    """Take the adapter out of ``layer`` (unmerged first) and restore its class."""
    adapter = layer._modules[ADAPTER]
    adapter.unmerge()
    del layer._modules[ADAPTER]
    layer.__class__ = type(layer).base_class
    adapter.__dict__["_layer"] = None
    return adapter
