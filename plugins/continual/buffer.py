"""Reservoir replay buffer (Vitter, 1985; used for rehearsal by Chaudhry et al., 2019, ER,
and Buzzega et al., 2020, DER/DER++).

The n-th example offered (n = 0, 1, ...) is stored at slot n while the buffer is not full;
afterwards it draws j uniform in {0..n} and replaces slot j when j < size, so every example
seen so far is in the buffer with probability size / (n + 1). Each slot holds the input,
its label, the logits the network gave it when it was stored (DER++'s replay target) and its
task.

The buffer is an ``nn.Module`` of fixed-size tensors plus two counters (examples offered,
batches drawn): it saves and resumes with the LightningModule's ``state_dict`` (plain tensors,
``torch.load(weights_only=True)``). Its randomness is a function of ``(seed, counters)``, so a
resumed run stores and draws exactly what the uninterrupted one would.
"""
from __future__ import annotations

from typing import Sequence, Tuple

import torch
from torch import nn

from sparsity_core.validation import check_int


def _generator(seed: int, counter: int, stream: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 2_654_435_761 + counter * 40_503 + stream) % (2 ** 63))


class ReservoirBuffer(nn.Module):
    """Args: ``size`` (examples kept, >= 1), ``input_shape`` (one example's shape),
    ``num_classes`` (logits per example), ``seed``."""

    def __init__(self, size: int, input_shape: Sequence[int], num_classes: int, seed: int = 0) -> None:
        super().__init__()
        self.size = check_int(size, "buffer size", 1)
        check_int(num_classes, "num_classes", 1)
        self.seed = int(seed)
        self.register_buffer("x", torch.zeros(self.size, *[int(s) for s in input_shape]))
        self.register_buffer("y", torch.zeros(self.size, dtype=torch.long))
        self.register_buffer("logits", torch.zeros(self.size, num_classes))
        self.register_buffer("task", torch.zeros(self.size, dtype=torch.long))
        self.register_buffer("offered", torch.zeros((), dtype=torch.long))
        self.register_buffer("draws", torch.zeros((), dtype=torch.long))

    def __len__(self) -> int:
        return min(int(self.offered), self.size)

    @torch.no_grad()
    def add(self, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor, task: int) -> None:
        """Offer a batch (examples in order) to the reservoir."""
        n0, b = int(self.offered), x.shape[0]
        ranks = torch.arange(n0, n0 + b)
        draw = (torch.rand(b, generator=_generator(self.seed, n0, 1)) * (ranks + 1).double()).long()
        slots = torch.where(ranks < self.size, ranks, draw)
        for i, slot in enumerate(slots.tolist()):  # in order: a later example may overwrite an earlier one
            if slot < self.size:
                self.x[slot] = x[i].detach().to(self.x)
                self.y[slot] = y[i]
                self.logits[slot] = logits[i].detach().to(self.logits)
                self.task[slot] = task
        self.offered += b

    @torch.no_grad()
    def sample(self, n: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``min(n, len(self))`` distinct stored examples: ``(x, y, logits)``."""
        filled = len(self)
        if filled == 0:
            raise ValueError("the replay buffer is empty")
        idx = torch.randperm(filled, generator=_generator(self.seed, int(self.draws), 2))[: min(n, filled)]
        self.draws += 1
        idx = idx.to(self.x.device)
        return self.x[idx], self.y[idx], self.logits[idx]
