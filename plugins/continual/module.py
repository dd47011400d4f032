"""A LightningModule for task streams: plain fine-tuning, ER or DER++ rehearsal.

Losses on a batch (x, y) of the current task with a replay buffer M:

- ``"none"``:  L = CE(f(x), y)
- ``"er"`` (experience replay; Chaudhry et al., 2019):  L = CE(f(x), y) + CE(f(x'), y'),
  (x', y') ~ M
- ``"derpp"`` (DER++; Buzzega et al., 2020, "Dark Experience for General Continual Learning:
  a Strong, Simple Baseline", NeurIPS):  L = CE(f(x), y) + α‖f(x') − z'‖² + β·CE(f(x''), y''),
  (x', z') and (x'', y'') two independent draws from M, z' the logits stored with x'.

``task_aware=True`` masks the logits of classes outside the current task to −∞ in the
current-task term (SparCL's task-aware logit masking; Wang et al., NeurIPS 2022); replay terms
use all logits. After the loss, the batch is offered to the reservoir with its logits.

Per step the module exposes what other parts measure: ``presented`` (positions of the
current examples within the task and whether the network classified them correctly:
forgetting events for data removal) and ``examples_seen`` (current + replayed examples:
what the training-FLOPs counter charges). The current task and its classes come from the
data module (:class:`~.datamodule.TaskStream`) at the start of every epoch.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

from sparsity_core.validation import check_int, check_nonnegative, check_positive

from .buffer import ReservoirBuffer

METHODS = ("none", "er", "derpp")


def mask_logits(logits: torch.Tensor, classes: Sequence[int]) -> torch.Tensor:
    """``logits`` with every class outside ``classes`` set to −∞."""
    keep = torch.zeros(logits.shape[-1], dtype=torch.bool, device=logits.device)
    keep[list(classes)] = True
    return logits.masked_fill(~keep, float("-inf"))


class ContinualModule(pl.LightningModule):
    """Args:
        net: the network (inputs -> ``num_classes`` logits).
        num_classes: outputs of ``net``.
        input_shape: shape of one input (the buffer's slots).
        method: ``"none"``, ``"er"`` or ``"derpp"``.
        buffer_size: reservoir size (>= 1 for a replay method).
        alpha, beta: DER++ weights of the logit and label replay terms.
        lr: SGD learning rate (no momentum, as SparCL's released setup).
        replay_batch_size: examples per replay draw (default: the current batch's size).
        task_aware: mask non-current classes in the current-task loss.
        seed: the buffer's seed.
    """

    def __init__(self, net: nn.Module, num_classes: int, input_shape: Sequence[int], method: str = "derpp",
                 buffer_size: int = 200, alpha: float = 0.1, beta: float = 0.5, lr: float = 0.03,
                 replay_batch_size: Optional[int] = None, task_aware: bool = False, seed: int = 0) -> None:
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}; got {method!r}")
        if method != "none" and (isinstance(buffer_size, bool) or not isinstance(buffer_size, int) or buffer_size < 1):
            raise ValueError(f"{method} replays examples: buffer_size must be an int >= 1, got {buffer_size!r}")
        self.net = net
        self.num_classes = check_int(num_classes, "num_classes", 1)
        self.method = method
        self.alpha, self.beta = check_nonnegative(alpha, "alpha"), check_nonnegative(beta, "beta")
        self.lr = check_positive(lr, "lr")
        self.replay_batch_size = None if replay_batch_size is None else check_int(replay_batch_size,
                                                                                   "replay_batch_size", 1)
        self.task_aware = bool(task_aware)
        self.buffer = None if method == "none" else ReservoirBuffer(buffer_size, input_shape, num_classes, seed)
        self.task, self.current_classes = 0, list(range(num_classes))
        self.presented: Optional[Tuple[torch.Tensor, torch.Tensor]] = None
        self.examples_seen = 0
        self.example_input_array = torch.zeros(1, *[int(s) for s in input_shape])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def on_train_epoch_start(self) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        if dm is not None and hasattr(dm, "current_classes"):
            self.task, self.current_classes = int(dm.task), list(dm.current_classes)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y, pos = batch
        logits = self(x)
        current = mask_logits(logits, self.current_classes) if self.task_aware else logits
        loss = F.cross_entropy(current, y)
        seen = x.shape[0]
        if self.buffer is not None and len(self.buffer) > 0:
            n = self.replay_batch_size or x.shape[0]
            if self.method == "er":
                xb, yb, _ = self.buffer.sample(n)
                loss = loss + F.cross_entropy(self(xb), yb)
                seen += xb.shape[0]
            else:
                xb, _, zb = self.buffer.sample(n)
                loss = loss + self.alpha * F.mse_loss(self(xb), zb)
                xc, yc, _ = self.buffer.sample(n)
                loss = loss + self.beta * F.cross_entropy(self(xc), yc)
                seen += xb.shape[0] + xc.shape[0]
        self.presented = (pos, (current.detach().argmax(1) == y).cpu())
        self.examples_seen = seen
        if self.buffer is not None:
            self.buffer.add(x, y, logits.detach(), self.task)
        self.log("train/loss", loss.detach(), on_step=False, on_epoch=True, prog_bar=False)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def mlp(input_size: int = 784, hidden: Sequence[int] = (100, 100), num_classes: int = 10,
        norm: bool = False) -> nn.Sequential:
    """The MLP of the Split-MNIST literature (DER: two hidden layers of 100 ReLU units); with
    ``norm`` a LayerNorm after each hidden Linear (keeps activations at scale when most
    weights are pruned: a 90%-sparse layer's outputs would otherwise shrink by about √10)."""
    layers: List[nn.Module] = [nn.Flatten()]
    width = input_size
    for h in hidden:
        layers += [nn.Linear(width, h)] + ([nn.LayerNorm(h)] if norm else []) + [nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)
