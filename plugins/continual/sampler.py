"""What the training loader yields: the kept examples of the current task, shuffled.

Dynamic data removal (SparCL's DDR) changes this and nothing else: the sampler asks
``kept()`` for a boolean mask over the task's examples each time an epoch starts, so removed
examples are simply never drawn (no data set is copied or rebuilt). Lightning calls
``set_epoch`` before every epoch; the order is a function of ``(seed, task, epoch)`` only, so
a resumed run draws the same batches.
"""
from __future__ import annotations

from typing import Callable, Iterator, Optional

import torch
from torch.utils.data import Sampler

from sparsity_core.validation import check_int


class KeptSampler(Sampler[int]):
    """Positions ``0..n-1`` of one task's examples whose ``kept()`` entry is true (all when
    ``kept()`` returns ``None``), in a seeded random order (``shuffle``) or in order."""

    def __init__(self, n: int, kept: Callable[[], Optional[torch.Tensor]], seed: int = 0, task: int = 0,
                 shuffle: bool = True) -> None:
        self.n = check_int(n, "number of examples", 1)
        self.kept, self.seed, self.task, self.shuffle = kept, int(seed), int(task), bool(shuffle)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def positions(self) -> torch.Tensor:
        mask = self.kept()
        if mask is None:
            return torch.arange(self.n)
        if mask.shape != (self.n,):
            raise ValueError(f"the kept-examples mask has shape {tuple(mask.shape)}, expected ({self.n},)")
        return torch.nonzero(mask.cpu(), as_tuple=False).reshape(-1)

    def __iter__(self) -> Iterator[int]:
        pos = self.positions()
        if self.shuffle:
            g = torch.Generator().manual_seed((self.seed * 1_000_003 + self.task * 10_007 + self.epoch) % (2 ** 63))
            pos = pos[torch.randperm(pos.numel(), generator=g)]
        return iter(pos.tolist())

    def __len__(self) -> int:
        return int(self.positions().numel())
