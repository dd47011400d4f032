"""Task splits of a labelled data set: which classes each experience of a stream holds.

Scenarios (van de Ven & Tolias, 2019, "Three scenarios for continual learning"):

- ``"class"`` (class-incremental): one output space; the task identity is not given at
  test time, so the tasks' class sets must be disjoint.
- ``"task"`` (task-incremental): the task identity is given at test time (logits outside the
  task's classes are masked); class sets may repeat across tasks.

Every check here runs before any training: an empty task, a class with no example, a
class outside the labels, or overlapping classes in a class-incremental split is a
``ValueError``.
"""
from __future__ import annotations

from typing import List, Sequence

import torch

from sparsity_core.validation import check_int

SCENARIOS = ("class", "task")


def split_classes(num_classes: int, num_tasks: int) -> List[List[int]]:
    """Consecutive equal class groups: ``split_classes(10, 5) == [[0, 1], [2, 3], ..., [8, 9]]``."""
    check_int(num_classes, "num_classes", 1)
    check_int(num_tasks, "num_tasks", 1, num_classes)
    if num_classes % num_tasks:
        raise ValueError(f"{num_classes} classes do not split into {num_tasks} equal tasks; pass tasks=[[...], ...]")
    per = num_classes // num_tasks
    return [list(range(k * per, (k + 1) * per)) for k in range(num_tasks)]


def check_tasks(tasks: Sequence[Sequence[int]], labels: torch.Tensor, scenario: str) -> List[List[int]]:
    """The tasks as lists of ints, checked against ``labels`` (the training labels)."""
    if scenario not in SCENARIOS:
        raise ValueError(f"scenario must be one of {', '.join(SCENARIOS)}; got {scenario!r}")
    if isinstance(tasks, (str, bytes)) or not isinstance(tasks, Sequence) or len(tasks) == 0:
        raise ValueError(f"tasks must be a non-empty list of class lists, got {tasks!r}")
    present = set(int(c) for c in torch.unique(labels).tolist())
    out: List[List[int]] = []
    for k, classes in enumerate(tasks):
        if isinstance(classes, (str, bytes)) or not isinstance(classes, Sequence) or len(classes) == 0:
            raise ValueError(f"task {k} is empty: every task needs at least one class, got {classes!r}")
        classes = [check_int(c, f"class of task {k}", 0) for c in classes]
        if len(set(classes)) != len(classes):
            raise ValueError(f"task {k} lists a class twice: {classes}")
        missing = sorted(set(classes) - present)
        if missing:
            raise ValueError(f"task {k} has no training example of class(es) {missing}: the task would be empty")
        out.append(classes)
    if scenario == "class":
        seen: dict = {}
        for k, classes in enumerate(out):
            for c in classes:
                if c in seen:
                    raise ValueError(f"class {c} is in task {seen[c]} and task {k}: a class-incremental split needs "
                                     "disjoint tasks (use scenario='task' for repeated classes)")
                seen[c] = k
    return out
