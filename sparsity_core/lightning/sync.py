"""Synchronisation through a Lightning strategy (DDP, DDP-spawn, FSDP, ...)."""
from __future__ import annotations

from typing import Any

import torch

from ..sync import LocalSync


class StrategySync(LocalSync):
    def __init__(self, trainer: Any) -> None:
        self._strategy = trainer.strategy
        self.world_size = int(getattr(trainer, "world_size", 1))

    def all_reduce_mean(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.world_size == 1:
            return tensor
        return self._strategy.reduce(tensor.clone(), reduce_op="mean")

    def broadcast(self, obj: Any) -> Any:
        if self.world_size == 1:
            return obj
        return self._strategy.broadcast(obj, src=0)
