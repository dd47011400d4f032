"""Distributed synchronisation used by the controller.

Under data parallelism every rank must hold the same masks. The controller averages scores
over ranks before allocating (``all_reduce_mean``) and then takes rank 0's masks
(``broadcast``), so ties and per-rank randomness cannot split the ranks. :class:`LocalSync`
is the single-process no-op; the Lightning callback supplies one backed by the trainer's
strategy.
"""
from __future__ import annotations

from typing import Any

import torch


class LocalSync:
    world_size = 1

    def all_reduce_mean(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    def broadcast(self, obj: Any) -> Any:
        return obj


class TorchDistributedSync(LocalSync):
    """``torch.distributed`` collectives on the default process group."""

    def __init__(self) -> None:
        import torch.distributed as dist

        self._dist = dist
        self.world_size = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1

    def all_reduce_mean(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.world_size == 1:
            return tensor
        out = tensor.clone()
        self._dist.all_reduce(out, op=self._dist.ReduceOp.SUM)
        return out / self.world_size

    def broadcast(self, obj: Any) -> Any:
        if self.world_size == 1:
            return obj
        box = [obj]
        self._dist.broadcast_object_list(box, src=0)
        return box[0]
