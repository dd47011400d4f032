"""Evaluation on every task seen so far, after each task of a stream.

:class:`StreamEvaluation` is a Lightning callback: at the end of each fit (one fit per task)
it measures test accuracy on the test sets of tasks 0..k of the data module
(:class:`~.datamodule.TaskStream`) and adds row k to two accuracy matrices: class-incremental
(argmax over all classes) and task-incremental (argmax over the task's classes). Programs
with per-task weights (PackNet) pass ``task_context``: ``task_context(j)`` is a context
manager under which the model is task j's network. Put this callback after the
``SparsityCallback``, so a task's pruning at the end of its fit is in place when it is
measured.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, ContextManager, Dict, List, Optional, Sequence

import pytorch_lightning as pl
import torch
from torch import nn

from .metrics import AccuracyMatrix
from .module import mask_logits


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, classes: Optional[Sequence[int]] = None,
             batch_size: int = 1000) -> float:
    """Accuracy of ``model`` on ``(x, y)``; with ``classes``, argmax over those classes only."""
    was_training = model.training
    model.eval()
    correct = 0
    try:
        device = next(model.parameters()).device
        for i in range(0, x.shape[0], batch_size):
            logits = model(x[i: i + batch_size].to(device))
            if classes is not None:
                logits = mask_logits(logits, classes)
            correct += int((logits.argmax(1).cpu() == y[i: i + batch_size]).sum())
    finally:
        model.train(was_training)
    return correct / max(1, x.shape[0])


def evaluate_seen(model: nn.Module, stream: Any,
                  task_context: Optional[Callable[[int], ContextManager]] = None) -> Dict[str, List[float]]:
    """``{"class_il": [...], "task_il": [...]}``: accuracy on each task seen so far."""
    out: Dict[str, List[float]] = {"class_il": [], "task_il": []}
    for j in range(stream.task + 1):
        x, y = stream.test_set(j)
        with (task_context(j) if task_context is not None else contextlib.nullcontext()):
            out["class_il"].append(accuracy(model, x, y, batch_size=stream.eval_batch_size))
            out["task_il"].append(accuracy(model, x, y, stream.tasks[j], stream.eval_batch_size))
    return out


class StreamEvaluation(pl.Callback):
    """Accuracy matrices ``class_il`` and ``task_il`` of a task stream (see the module)."""

    def __init__(self, task_context: Optional[Callable[[int], ContextManager]] = None) -> None:
        super().__init__()
        self.task_context = task_context
        self.class_il, self.task_il = AccuracyMatrix(), AccuracyMatrix()

    def on_train_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        self.measure(pl_module, trainer.datamodule)

    def measure(self, model: nn.Module, stream: Any) -> None:
        """Add the row of the stream's current task (once: a second call for it does nothing)."""
        if stream is None or not hasattr(stream, "test_set"):
            raise ValueError("StreamEvaluation needs the fit's datamodule to be a TaskStream")
        if self.class_il.tasks > stream.task:  # this task was measured already
            return
        accs = evaluate_seen(model, stream, self.task_context)
        self.class_il.add(accs["class_il"])
        self.task_il.add(accs["task_il"])

    def matrix(self, scenario: str) -> AccuracyMatrix:
        if scenario not in ("class", "task"):
            raise ValueError(f"scenario must be 'class' or 'task', got {scenario!r}")
        return self.class_il if scenario == "class" else self.task_il

    def state_dict(self) -> Dict[str, Any]:
        return {"class_il": self.class_il.state_dict(), "task_il": self.task_il.state_dict()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if set(state) != {"class_il", "task_il"}:
            raise ValueError(f"not a StreamEvaluation state: keys {sorted(state)}")
        self.class_il.load_state_dict(state["class_il"])
        self.task_il.load_state_dict(state["task_il"])
