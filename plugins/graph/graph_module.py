"""``GraphClassifier``: a LightningModule for graph classification over PyG mini-batches.

Wraps a model called as ``model(x, edge_index, batch, edge_attr)`` (e.g.
:class:`.models.GraphGPS`), trains it with cross-entropy and logs ``val_acc`` per
validation epoch, keeping ``(global_step, val_acc)`` in ``history``.

Optimizer and learning-rate scheduler follow LightningCLI's ``OptimizerCallable`` /
``LRSchedulerCallable`` convention (shared with :class:`.node_module.NodeClassifier`):
``optimizer(params) -> torch.optim.Optimizer`` and ``lr_scheduler(optimizer) -> scheduler``,
e.g. ``functools.partial(torch.optim.AdamW, lr=1e-3, weight_decay=5e-4)`` and
``lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=100)``; a LightningCLI
dict ``{"class_path": "torch.optim.AdamW", "init_args": {"lr": 1e-3}}`` is accepted as well
(a bare class name is looked up in ``torch.optim`` / ``torch.optim.lr_scheduler``). On the
command line of a LightningCLI built on these classes: ``--model.optimizer AdamW
--model.optimizer.weight_decay 5e-4 --model.lr_scheduler CosineAnnealingLR
--model.lr_scheduler.T_max 100``.
"""
from __future__ import annotations

import functools
import importlib
from typing import Any, Callable, Iterable, List, Literal, Mapping, Optional, Tuple, Union

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

from sparsity_core.validation import check_positive

# LightningCLI's aliases (``pytorch_lightning.cli``), spelled out so that importing this module
# does not import jsonargparse; jsonargparse reads them by structure.
OptimizerCallable = Callable[[Iterable], Optimizer]
LRSchedulerCallable = Callable[[Optimizer], Union[LRScheduler, ReduceLROnPlateau]]

_INTERVALS = ("epoch", "step")


def _import(class_path: str, home: str, what: str) -> Any:
    """The object named by ``class_path`` (``module.Name``, or a bare ``Name`` in ``home``)."""
    module, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module or home), name)
    except (ImportError, AttributeError, ValueError) as err:
        raise ValueError(f"{what}: cannot import class_path {class_path!r} ({err})") from None


def resolve_factory(value: Any, what: str, base: Tuple[type, ...], home: str, example: str) -> Optional[Callable]:
    """Check an optimizer or scheduler factory and return it as a callable (``None`` stays
    ``None``). Accepted: any callable (a class, ``functools.partial``, a lambda); a
    LightningCLI dict ``{"class_path": ..., "init_args": {...}}`` (turned into a
    ``functools.partial`` of the class, which must subclass one of ``base``); a class must
    subclass one of ``base`` too. Anything else raises ``ValueError``."""
    if value is None:
        return None
    if isinstance(value, Mapping):
        extra = set(value) - {"class_path", "init_args"}
        if "class_path" not in value or extra:
            raise ValueError(f"{what} as a dict must be {{'class_path': ..., 'init_args': {{...}}}}, got keys "
                             f"{sorted(map(str, value))}")
        if not isinstance(value["class_path"], str):
            raise ValueError(f"{what}: class_path must be a string, got {value['class_path']!r}")
        init_args = value.get("init_args") or {}
        if not isinstance(init_args, Mapping) or not all(isinstance(k, str) for k in init_args):
            raise ValueError(f"{what}: init_args must be a dict of keyword arguments, got {init_args!r}")
        cls = _import(value["class_path"], home, what)
        if not (isinstance(cls, type) and issubclass(cls, base)):
            raise ValueError(f"{what}: class_path {value['class_path']!r} is not a subclass of "
                             f"{' or '.join(b.__qualname__ for b in base)}")
        return functools.partial(cls, **dict(init_args))
    if isinstance(value, type):
        if not issubclass(value, base):
            raise ValueError(f"{what} must build a {' or '.join(b.__qualname__ for b in base)}, got the class "
                             f"{value.__qualname__}")
        return value
    if not callable(value):
        raise ValueError(f"{what} must be a callable ({example}), a LightningCLI dict {{'class_path': ..., "
                         f"'init_args': {{...}}}} or None, got {value!r}")
    return value


def check_optimizer_options(optimizer: Any, lr_scheduler: Any, lr_scheduler_interval: Any,
                            lr_scheduler_monitor: Any) -> Tuple[Optional[Callable], Optional[Callable], str,
                                                                Optional[str]]:
    """Validate the four optimizer options of :class:`GraphClassifier` /
    :class:`~.node_module.NodeClassifier`; return them resolved (factories as callables)."""
    optimizer = resolve_factory(optimizer, "optimizer", (Optimizer,), "torch.optim",
                                "params -> torch.optim.Optimizer, e.g. functools.partial(torch.optim.AdamW, lr=1e-3)")
    lr_scheduler = resolve_factory(lr_scheduler, "lr_scheduler", (LRScheduler, ReduceLROnPlateau),
                                   "torch.optim.lr_scheduler",
                                   "optimizer -> scheduler, e.g. functools.partial(torch.optim.lr_scheduler."
                                   "CosineAnnealingLR, T_max=100)")
    if lr_scheduler_interval not in _INTERVALS:
        raise ValueError(f"lr_scheduler_interval must be 'epoch' or 'step', got {lr_scheduler_interval!r}")
    if lr_scheduler_monitor is not None and (not isinstance(lr_scheduler_monitor, str) or not lr_scheduler_monitor):
        raise ValueError(f"lr_scheduler_monitor must be a metric name or None, got {lr_scheduler_monitor!r}")
    return optimizer, lr_scheduler, lr_scheduler_interval, lr_scheduler_monitor


def build_optimizers(params, optimizer: Callable, lr_scheduler: Optional[Callable], interval: str,
                     monitor: Optional[str]):
    """What ``configure_optimizers`` returns: ``optimizer(params)`` alone when there is no
    scheduler, else ``{"optimizer": ..., "lr_scheduler": {"scheduler": ..., "interval": ...}}``
    (with ``"monitor"`` for ``ReduceLROnPlateau``: the scheduler's own ``monitor`` attribute,
    as LightningCLI's subclass has, else ``monitor``). Raises ``ValueError`` when a factory
    returns something else than an optimizer / scheduler, or a plateau scheduler has no metric."""
    opt = optimizer(params)
    if not isinstance(opt, Optimizer):
        raise ValueError(f"optimizer(params) must return a torch.optim.Optimizer, got {type(opt).__qualname__}")
    if lr_scheduler is None:
        return opt
    sched = lr_scheduler(opt)
    if not isinstance(sched, (LRScheduler, ReduceLROnPlateau)):
        raise ValueError(f"lr_scheduler(optimizer) must return a torch.optim.lr_scheduler scheduler, got "
                         f"{type(sched).__qualname__}")
    if getattr(sched, "optimizer", opt) is not opt:
        raise ValueError("lr_scheduler(optimizer) must schedule the optimizer it is given")
    config = {"scheduler": sched, "interval": interval}
    if isinstance(sched, ReduceLROnPlateau):
        metric = getattr(sched, "monitor", None) or monitor
        if not metric:
            raise ValueError("a ReduceLROnPlateau scheduler needs the metric it watches: lr_scheduler_monitor="
                             "'val_acc' (with mode='max') or 'train_loss'")
        config["monitor"] = metric
    return {"optimizer": opt, "lr_scheduler": config}


class GraphClassifier(pl.LightningModule):
    """Graph classification with cross-entropy over PyG mini-batches.

    Args:
        model: called as ``model(x, edge_index, batch, edge_attr)``, returns ``[graphs, classes]``.
        lr: learning rate of the default optimizer (Adam); leave it at its default when
            ``optimizer`` is given (that callable carries its own).
        optimizer: ``optimizer(params) -> torch.optim.Optimizer`` (LightningCLI's
            ``OptimizerCallable``), a LightningCLI dict, or ``None`` for
            ``torch.optim.Adam(params, lr=lr)``.
        lr_scheduler: ``lr_scheduler(optimizer) -> scheduler`` (``LRSchedulerCallable``), a
            LightningCLI dict, or ``None`` for a constant learning rate.
        lr_scheduler_interval: step the scheduler every ``"epoch"`` or every optimizer ``"step"``.
        lr_scheduler_monitor: metric a ``ReduceLROnPlateau`` watches (``"val_acc"`` with
            ``mode="max"``, or ``"train_loss"``), unless the scheduler names one itself.

    Bad options raise ``ValueError`` here, before any training.
    """

    def __init__(self, model: nn.Module, lr: float = 1e-3, optimizer: Optional[OptimizerCallable] = None,
                 lr_scheduler: Optional[LRSchedulerCallable] = None,
                 lr_scheduler_interval: Literal["epoch", "step"] = "epoch",
                 lr_scheduler_monitor: Optional[str] = None) -> None:
        super().__init__()
        lr = check_positive(lr, "lr")
        (self.optimizer, self.lr_scheduler, self.lr_scheduler_interval,
         self.lr_scheduler_monitor) = check_optimizer_options(optimizer, lr_scheduler, lr_scheduler_interval,
                                                              lr_scheduler_monitor)
        if self.optimizer is not None and lr != 1e-3:
            raise ValueError(f"lr={lr!r} sets the default Adam only; with optimizer= give the learning rate to the "
                             "optimizer (e.g. functools.partial(torch.optim.AdamW, lr=...))")
        self.model, self.lr = model, lr
        self.history: List[Tuple[int, float]] = []
        self._correct = self._seen = 0

    def forward(self, batch) -> torch.Tensor:
        return self.model(batch.x, batch.edge_index, batch.batch, getattr(batch, "edge_attr", None))

    def training_step(self, batch, batch_idx):
        loss = F.cross_entropy(self(batch), batch.y)
        self.log("train_loss", loss, batch_size=batch.num_graphs, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        self._correct += int((self(batch).argmax(-1) == batch.y).sum())
        self._seen += batch.num_graphs

    def on_validation_epoch_end(self) -> None:
        if self._seen:
            acc = self._correct / self._seen
            self.log("val_acc", acc, prog_bar=True)
            self.history.append((self.global_step, acc))
        self._correct = self._seen = 0

    def configure_optimizers(self):
        """``optimizer(self.parameters())`` (default ``Adam(lr=self.lr)``), with the
        scheduler's config when ``lr_scheduler`` is set."""
        optimizer = self.optimizer if self.optimizer is not None else functools.partial(torch.optim.Adam, lr=self.lr)
        return build_optimizers(self.parameters(), optimizer, self.lr_scheduler, self.lr_scheduler_interval,
                                self.lr_scheduler_monitor)
