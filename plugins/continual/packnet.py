"""Per-task weight masks for task-incremental streams, PackNet style (Mallya & Lazebnik, 2018,
"PackNet: Adding Multiple Tasks to a Single Network by Iterative Pruning", CVPR).

Every weight has an owner: the task that kept it, or free. While task t trains, only free
weights learn: the gradients of weights owned by earlier tasks are zeroed (a gradient mask)
and their values are restored after every optimizer step, so nothing (weight decay,
momentum) moves them. At the end of task t's fit (``finalize``, which the callback calls at
the end of every fit) the free weights of each target are pruned by magnitude: the
``round(keep · |free|)`` largest |w| become task t's, the rest are zeroed and stay free for
later tasks. The biases of the pruned layers are frozen once the first task closes (they
are shared by all tasks, as in PackNet). Task j's network uses the weights of tasks 0..j
(:meth:`PackNet.use_task`), so its outputs never change after task j closed; the classifier
head is left to the module (per-task logit masking keeps other tasks' rows untouched).

WSN's learned per-task subnetworks (Kang et al., ICML 2022) are :class:`~.wsn.WSN`: the same
storage and freezing, masks learned with a straight-through estimator instead of pruned.

State: the current and last closed task and, per target, one bit-packed mask per closed task
(:mod:`.bits`): ``torch.load(weights_only=True)`` reads it.
"""
from __future__ import annotations

import contextlib
from typing import Any, Dict, Iterator, List, Optional, Tuple

import torch
from torch import nn

from sparsity_core.discovery import Patterns, discover_targets
from sparsity_core.layouts import top_k_mask
from sparsity_core.program import Host, Program
from sparsity_core.registry import PROGRAMS
from sparsity_core.targets import Target
from sparsity_core.validation import check_range

from .bits import pack_bits, unpack_bits
from .stream import stream_task

FREE = 255  #: owner of a weight no task kept


@PROGRAMS.register("packnet")
class PackNet(Program):
    """Args: ``keep`` (fraction of the free weights each task keeps, PackNet: 0.5 for few
    tasks), ``include`` / ``exclude`` / ``skip_head`` (which weights, as the core's
    discovery), ``name``."""

    name = "packnet"
    finalize_at_end = True
    #: :class:`~.stream.TaskSwitch` closes the task (``finalize``) before switching within a fit
    closes_tasks = True

    def __init__(self, keep: float = 0.5, include: Patterns = None, exclude: Patterns = None, skip_head: bool = True,
                 name: Optional[str] = None) -> None:
        self.keep = check_range(keep, "keep", 0.0, 1.0, low_open=True)
        self.include, self.exclude, self.skip_head = include, exclude, bool(skip_head)
        if name is not None:
            self.name = name
        self.host: Optional[Host] = None
        self.targets: List[Target] = []
        self.owner: Dict[str, torch.Tensor] = {}
        self.shared: Dict[str, nn.Parameter] = {}
        self.task, self.closed = 0, -1
        self._saved: Dict[str, torch.Tensor] = {}

    def state_id(self) -> str:
        return f"{self.name}(keep={self.keep}, include={self.include!r}, exclude={self.exclude!r})"

    # -- the program protocol ------------------------------------------------------------
    def attach(self, host: Host) -> None:
        if self.targets:
            if self.host is not None and self.host.model is not host.model:
                raise ValueError(f"program {self.name!r} already holds the masks of another model")
            self.host = host
            return
        targets = discover_targets(host.model, include=self.include, exclude=self.exclude, skip_head=self.skip_head)
        modules = dict(host.model.named_modules())
        self.shared = {f"{t.module_name}.{n}": p for t in targets
                       for n, p in modules[t.module_name].named_parameters(recurse=False) if p is not t.param}
        self.targets = targets
        self.owner = {t.name: torch.full(t.shape, FREE, dtype=torch.uint8, device=t.param.device) for t in targets}
        self.host = host

    def start(self, step: int) -> None:
        task = stream_task(self.host)
        if task is not None:
            if task <= self.closed:
                raise ValueError(f"task {task} was closed already (its weights are frozen); PackNet trains each "
                                 "task once, in order")
            self.task = task
        self._save_frozen()

    def set_task(self, task: str, step: int) -> None:
        """The stream moved on within a fit (the finished task was closed): follow it."""
        self.start(step)

    def _save_frozen(self) -> None:
        self._saved = {t.name: t.param.detach().clone() for t in self.targets}
        if self.closed >= 0:
            self._saved.update({n: p.detach().clone() for n, p in self.shared.items()})

    @torch.no_grad()
    def before_optimizer_step(self, optimizer) -> None:
        for t in self.targets:
            if t.param.grad is not None:
                t.param.grad.mul_((self.owner[t.name] == FREE).to(t.param.grad.dtype))
        if self.closed >= 0:
            for p in self.shared.values():
                if p.grad is not None:
                    p.grad.zero_()

    @torch.no_grad()
    def after_optimizer_step(self, step: int) -> None:
        if not self._saved:
            self._save_frozen()
        for t in self.targets:
            frozen = self.owner[t.name] != FREE
            t.param.data.copy_(torch.where(frozen, self._saved[t.name], t.param.data))
        if self.closed >= 0:
            for n, p in self.shared.items():
                p.data.copy_(self._saved[n])

    @torch.no_grad()
    def finalize(self) -> None:
        """Close the current task: its kept weights are the top ``keep`` of the free ones by
        magnitude; the other free weights are zeroed and stay free."""
        if self.task <= self.closed:
            return
        if self.task >= FREE:
            raise ValueError(f"PackNet stores owners in uint8: at most {FREE} tasks")
        for t in self.targets:
            free = (self.owner[t.name] == FREE).reshape(-1)
            k = int(round(self.keep * int(free.sum())))
            scores = torch.where(free, t.param.detach().abs().reshape(-1).float(), torch.tensor(float("-inf")))
            kept = top_k_mask(scores, k).reshape(t.shape)
            self.owner[t.name][kept] = self.task
            t.param.data[(~kept) & (self.owner[t.name] == FREE)] = 0.0
        self.closed = self.task
        self._save_frozen()

    @contextlib.contextmanager
    def use_task(self, task: int) -> Iterator[None]:
        """Within the block, the model is task ``task``'s network: weights of later tasks and
        free weights are zero (restored on exit)."""
        saved = {t.name: t.param.detach().clone() for t in self.targets}
        try:
            with torch.no_grad():
                for t in self.targets:
                    t.param.data.mul_((self.owner[t.name] <= task).to(t.param.dtype))
            yield
        finally:
            with torch.no_grad():
                for t in self.targets:
                    t.param.data.copy_(saved[t.name])

    def task_mask(self, task: int) -> Dict[str, torch.Tensor]:
        """``{weight name: bool mask}`` of the weights task ``task`` kept."""
        return {name: owner == task for name, owner in self.owner.items()}

    def densities(self) -> Dict[str, Tuple[float, float]]:
        """For the FLOPs counter: every weight takes part in the forward (earlier tasks' and
        free ones), gradients are computed for free weights only."""
        return {t.name: (1.0, float((self.owner[t.name] == FREE).float().mean())) for t in self.targets}

    def masked_tensors(self) -> Dict[int, str]:
        return {id(t.param): t.name for t in self.targets}

    def removed_params(self):
        total = float(sum(t.param.numel() for t in self.targets))
        free = float(sum(int((o == FREE).sum()) for o in self.owner.values()))
        return (free, total) if self.closed >= 0 and total else None

    def report(self) -> Dict[str, float]:
        total = sum(o.numel() for o in self.owner.values())
        return {"free": sum(int((o == FREE).sum()) for o in self.owner.values()) / max(1, total),
                "tasks": float(self.closed + 1)}

    # -- state ---------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        return {"task": self.task, "closed": self.closed,
                "shapes": {t.name: list(t.shape) for t in self.targets},
                "masks": {name: [pack_bits(o == j) for j in range(self.closed + 1)] for name, o in self.owner.items()}}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if set(state) != {"task", "closed", "shapes", "masks"}:
            raise ValueError(f"not a PackNet state: keys {sorted(state)}")
        ours = {t.name: list(t.shape) for t in self.targets}
        if {k: list(v) for k, v in state["shapes"].items()} != ours:
            raise ValueError(f"the PackNet state was saved for weights {state['shapes']}, this model has {ours}")
        closed = int(state["closed"])
        owner = {}
        for t in self.targets:
            o = torch.full(t.shape, FREE, dtype=torch.uint8)
            packed = state["masks"][t.name]
            if len(packed) != closed + 1:
                raise ValueError(f"{t.name!r}: {len(packed)} task masks for {closed + 1} closed tasks")
            for j, bits in enumerate(packed):
                o[unpack_bits(bits, t.shape)] = j
            owner[t.name] = o.to(t.param.device)
        self.owner, self.closed, self.task = owner, closed, int(state["task"])
        self._saved = {}

    def detach(self) -> None:
        self.targets, self.owner, self.shared, self.host = [], {}, {}, None
