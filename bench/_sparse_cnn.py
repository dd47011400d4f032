"""Shared by bench/soups.py and bench/tickets.py: the MNIST CNN, a plain training loop that
drives a core SparsityController (the documented loop without Lightning), and accuracy."""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from sparsity_core import SparsityController
from sparsity_core.lr_schedules import UBA


def cnn(in_channels: int = 1, size: int = 28) -> nn.Module:
    """conv(in→16, 5) → BN → ReLU → pool → conv(16→32, 5) → BN → ReLU → pool → fc(32·k²→128) →
    ReLU → fc(128→10) (the classifier, left dense by target discovery); k = ((size − 4)/2 − 4)/2:
    fc 512→128 on MNIST's 1×28×28, 800→128 on CIFAR-10's 3×32×32."""
    k = ((size - 4) // 2 - 4) // 2
    return nn.Sequential(
        nn.Conv2d(in_channels, 16, 5), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 5), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * k * k, 128), nn.ReLU(), nn.Linear(128, 10))


def epoch_batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, generator: torch.Generator):
    order = torch.randperm(len(y), generator=generator)
    return [(x[order[i:i + batch_size]], y[order[i:i + batch_size]]) for i in range(0, len(y), batch_size)]


def train(model: nn.Module, ctrl: Optional[SparsityController], data: Tuple[torch.Tensor, torch.Tensor],
          steps: int, lr: float = 0.05, weight_decay: float = 5e-4, seed: int = 0, batch_size: int = 128,
          phi: float = 1.0, start: int = 1, on_step=None, budget: Optional[int] = None) -> int:
    """``steps`` SGD steps (momentum 0.9, UBA learning rate over ``budget`` steps, default
    ``steps``), the controller stepped like any plain loop. ``on_step(step)`` runs before the controller's step (IMP
    evaluates a round's ticket there). Returns the last step number."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    sched = UBA(opt, total_steps=budget or steps, phi=phi)
    if ctrl is not None:
        ctrl.bind_optimizers([opt])
    model.train()
    step, batches = start, []
    for _ in range(steps):
        if not batches:
            batches = epoch_batches(*data, batch_size, g)
        x, y = batches.pop()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        if ctrl is not None:
            ctrl.before_optimizer_step(opt)
        opt.step()
        sched.step()
        if on_step is not None:
            on_step(step)
        if ctrl is not None:
            ctrl.after_optimizer_step(step)
        step += 1
    return step - 1


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 2000) -> float:
    was = model.training
    model.eval()
    correct = sum(int((model(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum()) for i in range(0, len(y), batch))
    model.train(was)
    return 100.0 * correct / len(y)
