"""Running a task stream: one ``Trainer.fit`` per task, or all tasks within one fit.

Programs of this plugin follow the stream's data module (``host.datamodule.task``) when a fit
starts and when ``SparsityCallback.set_task`` is called, so between fits moving the stream on
is ``stream.set_task(k)`` and nothing else. :func:`run_stream` does that for every remaining
task with a fresh ``Trainer`` per task (callbacks are reused: the ``SparsityCallback``'s clock
and the evaluation's matrices go on across fits). Within one fit, :class:`TaskSwitch` moves
the stream on every ``epochs_per_task`` epochs (``Trainer(reload_dataloaders_every_n_epochs=1,
max_epochs=epochs_per_task * num_tasks)``): it measures the finished task, closes it in the
programs and switches the data module.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import pytorch_lightning as pl


def stream_task(host: Any) -> Optional[int]:
    """The current task of ``host.datamodule`` (a :class:`~.datamodule.TaskStream`), or ``None``."""
    dm = None if host is None else getattr(host, "datamodule", None)
    task = getattr(dm, "task", None)
    return None if task is None else int(task)


class TaskSwitch(pl.Callback):
    """Switch tasks within one fit (see the module). Args: ``epochs_per_task``; ``sparsity``: the
    ``SparsityCallback`` whose programs follow the stream (``None``: none); ``evaluation``: a
    :class:`~.evaluation.StreamEvaluation` measuring each task before the switch. List it after
    both."""

    def __init__(self, epochs_per_task: int, sparsity: Any = None, evaluation: Any = None) -> None:
        super().__init__()
        if isinstance(epochs_per_task, bool) or not isinstance(epochs_per_task, int) or epochs_per_task < 1:
            raise ValueError(f"epochs_per_task must be an int >= 1, got {epochs_per_task!r}")
        self.epochs_per_task, self.sparsity, self.evaluation = epochs_per_task, sparsity, evaluation

    def on_fit_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        if trainer.reload_dataloaders_every_n_epochs != 1:
            raise ValueError("TaskSwitch changes the training data between epochs: build the Trainer with "
                             "reload_dataloaders_every_n_epochs=1")

    def on_train_epoch_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        stream = trainer.datamodule
        if (trainer.current_epoch + 1) % self.epochs_per_task or stream.task + 1 >= stream.num_tasks:
            return
        if self.evaluation is not None:
            self.evaluation.measure(pl_module, stream)
        for program in [] if self.sparsity is None else self.sparsity.programs:
            if getattr(program, "closes_tasks", False):
                program.finalize()
        stream.set_task(stream.task + 1)
        if self.sparsity is not None:
            self.sparsity.set_task(f"task{stream.task}")


def run_stream(module: pl.LightningModule, stream: Any, make_trainer: Callable[[], pl.Trainer],
               ckpt_path: Optional[str] = None) -> None:
    """Train ``module`` on the stream's tasks from its current one on; ``make_trainer()`` builds
    each task's ``Trainer`` (with the same callbacks every time). With ``ckpt_path`` the first
    fit resumes from that checkpoint (which restores the task index) and the stream goes on
    from the next task."""
    if ckpt_path is not None:
        make_trainer().fit(module, datamodule=stream, ckpt_path=ckpt_path)
        first = stream.task + 1
    else:
        first = stream.task
    for task in range(first, stream.num_tasks):
        stream.set_task(task)
        make_trainer().fit(module, datamodule=stream)
