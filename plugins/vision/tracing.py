"""Tracing a vision model: Torch-Pruning's dependency graph (with the failing module named
when tracing breaks) and the MACs of every convolution and linear layer."""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

import torch
from torch import nn

from sparsity_core.macs import MacCounter, count_macs

from ._deps import torch_pruning


class GroupTraceError(ValueError):
    """The dependency graph of a model could not be built; names the module that failed."""


def trace_dependencies(model: nn.Module, example_inputs, ignored: Sequence[nn.Module]):
    tp = torch_pruning()
    last = {"name": type(model).__name__}
    hooks = [m.register_forward_pre_hook(lambda mod, inp, n=n: last.__setitem__("name", n or type(model).__name__))
             for n, m in model.named_modules()]
    was_training = model.training
    try:
        with torch.enable_grad():  # Torch-Pruning traces through autograd
            dg = tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs,
                                                       ignored_layers=list(ignored), verbose=False)
    except Exception as err:  # noqa: BLE001 - re-raised with the failing module named
        raise GroupTraceError(
            f"cannot build the channel dependency graph of {type(model).__name__}: tracing failed in module "
            f"{last['name']!r} ({type(err).__name__}: {err}); nothing was changed. Exclude that module "
            "(ignore=[...]) or prune this family with element sparsity (SparsityCallback)"
        ) from err
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return dg


class VisionMacCounter(MacCounter):
    """The core's MAC counter plus the two matrix products of timm-style attention (a module
    with a ``qkv`` Linear, ``num_heads`` and ``head_dim``): ``QKᵀ`` and ``attention·V``,
    ``2·B·heads·N²·head_dim`` for ``N`` tokens (they run inside ``scaled_dot_product_attention``,
    which no module hook sees)."""

    def handles(self, module: nn.Module) -> bool:
        return super().handles(module) or _is_attention(module)

    def count(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Optional[float]:
        if not _is_attention(module):
            return super().count(module, args, kwargs, output)
        x = args[0] if args else kwargs.get("x")
        if not isinstance(x, torch.Tensor) or x.dim() != 3:
            return None
        batch, tokens = x.shape[0], x.shape[1]
        return float(2 * batch * module.num_heads * tokens * tokens * module.head_dim)


def _is_attention(module: nn.Module) -> bool:
    return isinstance(getattr(module, "qkv", None), nn.Linear) and isinstance(getattr(module, "num_heads", None), int) \
        and isinstance(getattr(module, "head_dim", None), int)


def measure_macs(model: nn.Module, example_inputs) -> Dict[str, float]:
    """MACs per sample of every Conv/Linear (and attention's matrix products), from one
    forward pass with the suite's counter."""
    return count_macs(model, example_inputs, counter=VisionMacCounter)
