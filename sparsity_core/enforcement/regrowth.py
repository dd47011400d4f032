"""Regrowth scores for prune-and-regrow: which pruned units deserve to come back.

- ``random`` (SET; Mocanu et al., 2018): uniform random scores from the controller's
  seeded generator (part of its state, so resumption is exact).
- ``gradient`` (RigL; Evci et al., 2020, "Rigging the Lottery"): |∂L/∂w| of the dense
  gradient, captured on update steps only, before the gradient is masked.
- ``hebbian`` (activation correlation, as in G2GNet-style Hebbian regrowth): for a Linear
  layer W[out, in],  H = |Yᵀ X| / B  with X the layer's inputs and Y its outputs over the
  batch (leading dimensions flattened); for a convolution, the same on spatially averaged
  channels, broadcast over the kernel. "Neurons that fire together wire together."
"""
from __future__ import annotations

from typing import Dict, Optional

import torch
from torch import nn

REGROWTH = ("random", "gradient", "hebbian")


def hebbian_statistic(module: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """|Yᵀ X| / B shaped like ``module.weight`` (summable over batches)."""
    if isinstance(module, nn.Linear):
        xs = x.reshape(-1, x.shape[-1]).float()
        ys = y.reshape(-1, y.shape[-1]).float()
        return (ys.t() @ xs).abs() / xs.shape[0]
    if isinstance(module, nn.modules.conv._ConvNd):
        if module.groups != 1:
            raise ValueError("hebbian regrowth supports convolutions with groups=1 only")
        xs = x.float().flatten(2).mean(2)  # [B, in]
        ys = y.float().flatten(2).mean(2)  # [B, out]
        corr = (ys.t() @ xs).abs() / xs.shape[0]
        return corr.reshape(*corr.shape, *([1] * (module.weight.dim() - 2))).expand_as(module.weight).clone()
    raise ValueError(f"hebbian regrowth supports Linear and Conv layers, not {type(module).__name__}")


class HebbianRecorder:
    """Forward hooks that accumulate |Yᵀ X| / B for armed modules."""

    def __init__(self) -> None:
        self.armed = False
        self.sums: Dict[str, torch.Tensor] = {}
        self._handles: list = []

    def attach(self, modules: Dict[str, nn.Module]) -> None:
        self.detach()
        for name, module in modules.items():
            self._handles.append(module.register_forward_hook(self._hook(name)))

    def _hook(self, name: str):
        def hook(module, inputs, output):
            if not self.armed or not inputs or not isinstance(inputs[0], torch.Tensor):
                return
            with torch.no_grad():
                stat = hebbian_statistic(module, inputs[0].detach(), output.detach())
            self.sums[name] = self.sums[name] + stat if name in self.sums else stat
        return hook

    def take(self, name: str) -> Optional[torch.Tensor]:
        return self.sums.get(name)

    def reset(self) -> None:
        self.sums.clear()

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
