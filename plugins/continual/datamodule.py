"""A Lightning ``DataModule`` that turns a labelled data set into a stream of experiences.

    stream = TaskStream(train=(x, y), test=(x_test, y_test), tasks=split_classes(10, 5))
    for k in range(stream.num_tasks):
        stream.set_task(k)
        pl.Trainer(max_epochs=1, callbacks=[...]).fit(module, datamodule=stream)

Training batches are ``(x, y, position)``: ``position`` is the example's index within the
current task's training examples (what per-example statistics such as forgetting events
are keyed by). The loader draws through :class:`~.sampler.KeptSampler`, so a data-removal
program changes what it yields by setting :attr:`TaskStream.example_filter`. The test sets
of all tasks seen so far (``seen_test_sets``) are what the evaluation after each task reads.
``state_dict`` holds the task index: a run resumed from a Lightning checkpoint continues the
stream at the task it stopped in.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from sparsity_core.validation import check_int

from .sampler import FullBatches, KeptSampler
from .splits import check_tasks

Tensors = Tuple[torch.Tensor, torch.Tensor]


class TaskExamples(Dataset):
    """The examples ``index`` of ``(x, y)``; item ``i`` is ``(x[index[i]], y[index[i]], i)``,
    fetched a batch at a time (``__getitems__``)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor) -> None:
        self.x, self.y, self.index = x, y, index

    def __len__(self) -> int:
        return int(self.index.numel())

    def __getitem__(self, i: int):
        return self.x[self.index[i]], self.y[self.index[i]], i

    def __getitems__(self, positions: List[int]):
        pos = torch.as_tensor(positions, dtype=torch.long)
        rows = self.index[pos]
        return self.x[rows], self.y[rows], pos


def _batch(items):
    return items


class TaskStream(pl.LightningDataModule):
    """Experiences of a labelled data set, one task at a time.

    Args:
        train, test: ``(inputs, labels)`` tensors.
        tasks: the classes of each task (:func:`~.splits.split_classes` for equal splits).
        scenario: ``"class"`` (class-incremental, disjoint classes) or ``"task"``.
        batch_size: training batch size; ``eval_batch_size`` for the test sets.
        seed: seed of the training order.
        drop_last: drop each epoch's last, partial training batch (unless it is the only one;
            see :class:`~.sampler.FullBatches`); ``False`` (the default) trains on every example.
    """

    def __init__(self, train: Tensors, test: Tensors, tasks: Sequence[Sequence[int]], scenario: str = "class",
                 batch_size: int = 32, eval_batch_size: int = 1000, seed: int = 0, drop_last: bool = False) -> None:
        super().__init__()
        for what, (x, y) in (("train", train), ("test", test)):
            if x.shape[0] != y.shape[0]:
                raise ValueError(f"{what}: {x.shape[0]} inputs but {y.shape[0]} labels")
        self.tasks = check_tasks(tasks, train[1], scenario)
        self.scenario = scenario
        self.batch_size = check_int(batch_size, "batch_size", 1)
        self.eval_batch_size = check_int(eval_batch_size, "eval_batch_size", 1)
        self.seed = int(seed)
        self.drop_last = bool(drop_last)
        self.train_x, self.train_y = train
        self.test_x, self.test_y = test
        self.train_index = [self._rows(self.train_y, c) for c in self.tasks]
        self.test_index = [self._rows(self.test_y, c) for c in self.tasks]
        untested = [k for k, rows in enumerate(self.test_index) if rows.numel() == 0]
        if untested:
            raise ValueError(f"test: task(s) {untested} have no test example of their classes; every task is "
                             "evaluated on the test examples of its classes")
        self.task = 0
        #: ``example_filter(task) -> bool mask over the task's examples`` (``None``: all kept)
        self.example_filter: Optional[Callable[[int], Optional[torch.Tensor]]] = None

    @staticmethod
    def _rows(labels: torch.Tensor, classes: List[int]) -> torch.Tensor:
        return torch.nonzero(torch.isin(labels, torch.tensor(classes)), as_tuple=False).reshape(-1)

    # -- the stream -----------------------------------------------------------------------
    @property
    def num_tasks(self) -> int:
        return len(self.tasks)

    @property
    def num_classes(self) -> int:
        return max(max(c) for c in self.tasks) + 1

    @property
    def current_classes(self) -> List[int]:
        return list(self.tasks[self.task])

    def set_task(self, task: int) -> None:
        self.task = check_int(task, "task", 0, self.num_tasks - 1)

    def train_size(self, task: Optional[int] = None) -> int:
        return int(self.train_index[self.task if task is None else task].numel())

    def batches_per_epoch(self, task: Optional[int] = None) -> int:
        """Training batches in one epoch over all of a task's examples."""
        n = self.train_size(task)
        return max(1, n // self.batch_size) if self.drop_last else math.ceil(n / self.batch_size)

    def kept(self) -> Optional[torch.Tensor]:
        return None if self.example_filter is None else self.example_filter(self.task)

    # -- loaders --------------------------------------------------------------------------
    def train_dataloader(self) -> DataLoader:
        n = self.train_size()
        sampler = KeptSampler(n, self.kept, seed=self.seed, task=self.task)
        data = TaskExamples(self.train_x, self.train_y, self.train_index[self.task])
        if self.drop_last:
            return DataLoader(data, batch_sampler=FullBatches(sampler, self.batch_size), collate_fn=_batch)
        return DataLoader(data, batch_size=self.batch_size, sampler=sampler, collate_fn=_batch)

    def test_set(self, task: int) -> Tensors:
        rows = self.test_index[check_int(task, "task", 0, self.num_tasks - 1)]
        return self.test_x[rows], self.test_y[rows]

    def seen_test_sets(self) -> List[Tensors]:
        return [self.test_set(k) for k in range(self.task + 1)]

    # -- state ----------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        return {"task": self.task, "tasks": [list(c) for c in self.tasks]}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if set(state) != {"task", "tasks"}:
            raise ValueError(f"not a TaskStream state: keys {sorted(state)}")
        if [list(c) for c in state["tasks"]] != self.tasks:
            raise ValueError(f"the checkpoint's stream has tasks {state['tasks']}, this one {self.tasks}")
        self.set_task(int(state["task"]))
