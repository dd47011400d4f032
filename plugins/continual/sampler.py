"""What the training loader yields: the kept examples of the current task, shuffled.

Dynamic data removal (SparCL's DDR) changes this and nothing else: the sampler asks
``kept()`` for a boolean mask over the task's examples each time an epoch starts, so removed
examples are simply never drawn (no data set is copied or rebuilt). Lightning calls
``set_epoch`` before every epoch; the order is a function of ``(seed, task, epoch)`` only, so
a resumed run draws the same batches.

:class:`FullBatches` groups the sampler's order into batches and drops the last, partial
batch of an epoch (unless it is the only one): with plain SGD a tail of a few examples takes
a step as large as a full batch's from a far noisier gradient, and on Split-MNIST one such
step at the end of a task was seen to wreck a dense DER++ run (51.8% instead of 82.4%
average accuracy on a 50,000-image split; its tail batch held 6 examples). The dropped
examples differ from epoch to epoch because the order is reshuffled.
"""
from __future__ import annotations

from typing import Callable, Iterator, Optional

import torch
from torch.utils.data import BatchSampler, Sampler

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


class FullBatches(BatchSampler):
    """Batches of ``batch_size`` positions from ``sampler``; an epoch's last, partial batch is
    dropped unless it is the epoch's only batch (a task smaller than one batch still trains)."""

    def __init__(self, sampler: Sampler[int], batch_size: int) -> None:
        super().__init__(sampler, check_int(batch_size, "batch_size", 1), drop_last=False)

    def __iter__(self) -> Iterator[list]:
        batch, full = [], 0
        for i in self.sampler:
            batch.append(i)
            if len(batch) == self.batch_size:
                yield batch
                batch, full = [], full + 1
        if batch and not full:
            yield batch

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size or int(n > 0)
