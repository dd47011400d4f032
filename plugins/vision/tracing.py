"""Tracing a vision model: Torch-Pruning's dependency graph (with the failing module named
when tracing breaks) and the MACs of every convolution and linear layer."""
from __future__ import annotations

from typing import Dict, Sequence

import torch
from torch import nn

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


def measure_macs(model: nn.Module, example_inputs) -> Dict[str, float]:
    """MACs per sample of every Conv/Linear, from one forward pass."""
    macs: Dict[str, float] = {}
    hooks = []

    def hook(name):
        def fn(mod, inp, out):
            batch = out.shape[0] if out.dim() > 1 else 1
            if isinstance(mod, nn.modules.conv._ConvNd):
                k = mod.weight[0].numel()  # in/groups * prod(kernel)
                macs[name] = float(out.numel() / batch * k)
            else:
                macs[name] = float(out.numel() / batch * mod.in_features)
        return fn

    for name, m in model.named_modules():
        if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)):
            hooks.append(m.register_forward_hook(hook(name)))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(*example_inputs) if isinstance(example_inputs, (tuple, list)) else model(example_inputs)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return macs
