"""Task scopes of the controller: each task of a stream keeps its masks, criterion state and
schedule clock (continual learning; one fit or several)."""
from __future__ import annotations

from typing import Any, Dict, Optional

from .masks import MaskSet

#: The task every controller starts in.
DEFAULT_TASK = "default"


class TaskScopes:
    """Mixed into :class:`~sparsity_core.controller.SparsityController`; it holds ``task``,
    ``task_offset`` (the step the current task's schedule clock started at) and ``scopes``
    (the other tasks' saved state)."""

    task: str
    task_offset: int
    scopes: Dict[str, Dict[str, Any]]

    def local_step(self, step: int) -> int:
        """``step`` on the current task's clock (the schedule's step): steps since the task began."""
        return step - self.task_offset

    def set_task(self, task: str, step: Optional[int] = None) -> None:
        """Switch to ``task`` at optimizer step ``step`` (default: the last one processed).

        The current task's masks, criterion statistics, sparsity and schedule position are
        kept aside; a task seen before gets its own back and its schedule clock continues
        where it stopped; a new task starts with no masks and its schedule at step 0. Masks
        of the task switched to are applied through the enforcement: with hard masks that
        zeroes the weights outside them, so tasks sharing weights want a non-destructive
        enforcement (straight-through keeps the dense weights).
        """
        if not isinstance(task, str) or not task:
            raise ValueError(f"a task is named by a non-empty string, got {task!r}")
        if task == self.task:
            return
        now = max(self.step if step is None else step, 0)
        saved = self.scopes.pop(task, None)
        self.scopes[self.task] = {
            "masks": self.masks.state_dict(), "criterion": self.criterion.state_dict(),
            "current_sparsity": self.current_sparsity, "last_update_step": self.last_update_step,
            "local_step": now - self.task_offset}
        previous = self.masks.copy() if self.masks else None
        if saved is None:
            self.masks, self.current_sparsity, self.last_update_step = MaskSet(), 0.0, None
            self.criterion.reset()
            self.task_offset = now
        else:
            tmap = self.target_map
            self.masks = MaskSet({k: v.to(tmap[k].param.device if tmap[k].param is not None else None)
                                  for k, v in saved["masks"].items()})
            self.criterion.load_state_dict(saved["criterion"])
            self.current_sparsity, self.last_update_step = saved["current_sparsity"], saved["last_update_step"]
            self.task_offset = now - int(saved["local_step"])
        self.task = task
        if self.masks:
            self.enforcement.apply_masks(self, previous)
        self.history.append({"step": now, "event": "task", "task": task, "sparsity": self.sparsity()})

