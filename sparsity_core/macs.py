"""One counter of executed multiply-accumulates for the suite.

:class:`MacCounter` puts forward hooks on the modules it handles and adds up what each one
executes: a convolution ``H_out·W_out·C_out·(C_in/groups)·Πkernel`` per sample, a linear
map ``rows·in·out`` (``rows`` = every position of its input). Plugins extend it for their
module types (GTSP's counter adds attention and message passing, in FLOPs) by overriding
:meth:`MacCounter.handles` and :meth:`MacCounter.count`. :func:`count_macs` runs one forward
pass in eval mode and returns the MACs per sample of every counted module; the core's
``attach_macs`` (MACs per unit of a target) and the vision plugin's tracing and reports read it.
Elementwise work (norms, activations, biases) is not counted.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional

import torch
from torch import nn


def run_forward(model: nn.Module, example: Any) -> Any:
    """``model(*example)`` for a tuple or list, ``model(**example)`` for a dict, else ``model(example)``."""
    if isinstance(example, dict):
        return model(**example)
    if isinstance(example, (tuple, list)):
        return model(*example)
    return model(example)


class MacCounter:
    """Forward hooks counting executed MACs per module name (see the module).

    Args:
        model: the network.
        select: ``select(module) -> bool`` restricts the modules counted.
    """

    def __init__(self, model: nn.Module, select: Optional[Callable[[nn.Module], bool]] = None) -> None:
        self.model, self.select = model, select
        self.macs: Dict[str, float] = {}
        self._handles: List[Any] = []

    def handles(self, module: nn.Module) -> bool:
        return isinstance(module, (nn.modules.conv._ConvNd, nn.Linear))

    def count(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Optional[float]:
        """MACs of one call (``None``: not counted)."""
        out = output[0] if isinstance(output, (tuple, list)) else output
        if not isinstance(out, torch.Tensor) or out.dim() == 0:
            return None
        if isinstance(module, nn.modules.conv._ConvNd):
            return float(out.numel() * module.weight[0].numel())  # per output: in/groups · Πkernel
        if isinstance(module, nn.Linear):
            x = args[0] if args else kwargs.get("input")
            return float(x.numel() // module.in_features * module.in_features * module.out_features)
        return None

    def record(self, name: str, module: nn.Module, macs: float, args: tuple, kwargs: dict, output: Any) -> None:
        self.macs[name] = self.macs.get(name, 0.0) + macs

    def _hook(self, name: str) -> Callable:
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            macs = self.count(module, args, kwargs, output)
            if macs is not None:
                self.record(name, module, macs, args, kwargs, output)
        return hook

    def start(self) -> "MacCounter":
        for name, m in self.model.named_modules():
            if self.handles(m) and (self.select is None or self.select(m)):
                self._handles.append(m.register_forward_hook(self._hook(name), with_kwargs=True))
        return self

    def stop(self) -> "MacCounter":
        for h in self._handles:
            h.remove()
        self._handles = []
        return self

    def __enter__(self) -> "MacCounter":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def batch_size(example: Any) -> int:
    """Leading dimension of the first tensor in ``example`` (1 if there is none)."""
    if isinstance(example, torch.Tensor):
        return int(example.shape[0]) if example.dim() > 0 else 1
    items = example.values() if isinstance(example, dict) else example if isinstance(example, (tuple, list)) else []
    for item in items:
        if isinstance(item, torch.Tensor) and item.dim() > 0:
            return int(item.shape[0])
    return 1


@torch.no_grad()
def count_macs(model: nn.Module, example: Any, select: Optional[Callable[[nn.Module], bool]] = None,
               counter: type = MacCounter) -> Dict[str, float]:
    """MACs per sample of every module ``counter`` (a :class:`MacCounter` class) counts, from
    one forward pass in eval mode (the model's mode is restored)."""
    was_training = model.training
    model.eval()
    try:
        with counter(model, select) as counter:
            run_forward(model, example)
    finally:
        model.train(was_training)
    n = batch_size(example)
    return {name: macs / n for name, macs in counter.macs.items()}
