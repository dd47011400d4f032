"""Winning subnetworks per task, WSN (Kang et al., ICML 2022, "Forget-free Continual Learning
with Winning SubNetworks"), for task-incremental streams.

Every weight tensor W has a learned score tensor S (a parameter added to the module, trained
by the module's optimizer). Task t's subnetwork is the top ``keep`` fraction of S per tensor,
m_t = 1[S ∈ top-k(S)], and the forward pass uses W ⊙ m_t. With the straight-through
estimator (the top-k taken as identity), for the gradient g̃ = ∂L/∂(W ⊙ m_t):

    ∂L/∂S = g̃ ⊙ W,        ∂L/∂W = g̃ ⊙ m_t ⊙ (1 − M_{t−1}),

M_{t−1} = m_0 ∨ … ∨ m_{t−1} the consolidated mask: weights an earlier task uses are reused
but never changed (their values are also restored after every step). At the end of the
task's fit (``finalize``) m_t is stored bit-packed and M_t = M_{t−1} ∨ m_t. Task j's network is
W ⊙ m_j (:meth:`WSN.use_task`). Biases of the masked layers are frozen once the first task
closes (shared, as in PackNet).

The parameter holds W ⊙ m_t outside the optimizer step (as the core's straight-through
enforcement does); the dense W lives in the program's state.
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

SCORES = "wsn_scores"  #: attribute of the LightningModule holding the score parameters


def _key(name: str) -> str:
    return name.replace(".", "__")


@PROGRAMS.register("wsn")
class WSN(Program):
    """Args: ``keep`` (fraction of each tensor a task's subnetwork uses, WSN's capacity c),
    ``include`` / ``exclude`` / ``skip_head`` (which weights), ``seed`` (score init), ``name``."""

    name = "wsn"
    finalize_at_end = True
    closes_tasks = True

    def __init__(self, keep: float = 0.5, include: Patterns = None, exclude: Patterns = None, skip_head: bool = True,
                 seed: int = 0, name: Optional[str] = None) -> None:
        self.keep = check_range(keep, "keep", 0.0, 1.0, low_open=True)
        self.include, self.exclude, self.skip_head, self.seed = include, exclude, bool(skip_head), int(seed)
        if name is not None:
            self.name = name
        self.host: Optional[Host] = None
        self.targets: List[Target] = []
        self.dense: Dict[str, torch.Tensor] = {}
        self.used: Dict[str, torch.Tensor] = {}
        self.masks: Dict[str, List[torch.Tensor]] = {}
        self.shared: Dict[str, nn.Parameter] = {}
        self.task, self.closed = 0, -1
        self._frozen_shared: Dict[str, torch.Tensor] = {}

    def state_id(self) -> str:
        return f"{self.name}(keep={self.keep}, include={self.include!r}, exclude={self.exclude!r})"

    @property
    def scores(self) -> nn.ParameterDict:
        return getattr(self.host.model, SCORES)

    def current(self, t: Target) -> torch.Tensor:
        """m_t: the top ``keep`` of the scores of ``t``."""
        s = self.scores[_key(t.name)].detach().reshape(-1)
        return top_k_mask(s, max(1, int(round(self.keep * s.numel())))).reshape(t.shape)

    # -- the program protocol ------------------------------------------------------------
    def attach(self, host: Host) -> None:
        if self.targets:
            self.host = host
            return
        if hasattr(host.model, SCORES):
            raise ValueError(f"the module already has an attribute {SCORES!r}: one WSN program per model")
        targets = discover_targets(host.model, include=self.include, exclude=self.exclude, skip_head=self.skip_head)
        g = torch.Generator().manual_seed(self.seed)
        scores = nn.ParameterDict({_key(t.name): nn.Parameter((torch.rand(t.shape, generator=g) * 2 - 1).to(t.param))
                                   for t in targets})
        modules = dict(host.model.named_modules())
        self.shared = {f"{t.module_name}.{n}": p for t in targets
                       for n, p in modules[t.module_name].named_parameters(recurse=False) if p is not t.param}
        host.model.add_module(SCORES, scores)
        self.host, self.targets = host, targets
        self.dense = {t.name: t.param.detach().clone() for t in targets}
        self.used = {t.name: torch.zeros(t.shape, dtype=torch.bool, device=t.param.device) for t in targets}
        self.masks = {t.name: [] for t in targets}
        self._write()

    @torch.no_grad()
    def _write(self) -> None:
        for t in self.targets:
            torch.mul(self.dense[t.name], self.current(t).to(t.param.dtype), out=t.param.data)

    def trained_parameters(self) -> Dict[str, nn.Parameter]:
        return {f"{SCORES}.{k}": p for k, p in self.scores.items()} if self.targets else {}

    def masked_tensors(self) -> Dict[int, str]:
        return {id(t.param): t.name for t in self.targets}

    def start(self, step: int) -> None:
        task = stream_task(self.host)
        if task is not None:
            if task <= self.closed:
                raise ValueError(f"task {task} was closed already; WSN trains each task once, in order")
            self.task = task
        self._frozen_shared = {n: p.detach().clone() for n, p in self.shared.items()} if self.closed >= 0 else {}

    def set_task(self, task: str, step: int) -> None:
        self.start(step)

    @torch.no_grad()
    def before_optimizer_step(self, optimizer) -> None:
        for t in self.targets:
            g = t.param.grad
            if g is None:
                continue
            score = self.scores[_key(t.name)]
            score.grad = g * self.dense[t.name]  # straight through the top-k
            g.mul_((self.current(t) & ~self.used[t.name]).to(g.dtype))
            t.param.data.copy_(self.dense[t.name])  # the optimizer updates the dense weights
        for p in self.shared.values():
            if self.closed >= 0 and p.grad is not None:
                p.grad.zero_()

    @torch.no_grad()
    def after_optimizer_step(self, step: int) -> None:
        for t in self.targets:
            self.dense[t.name] = torch.where(self.used[t.name], self.dense[t.name], t.param.data)
        for n, p in self.shared.items():
            if n in self._frozen_shared:
                p.data.copy_(self._frozen_shared[n])
        self._write()

    def finalize(self) -> None:
        """Close the current task: store its subnetwork and add it to the consolidated mask."""
        if self.task <= self.closed:
            return
        for t in self.targets:
            m = self.current(t)
            self.masks[t.name].append(pack_bits(m))
            self.used[t.name] |= m.to(self.used[t.name].device)
        self.closed = self.task
        self._frozen_shared = {n: p.detach().clone() for n, p in self.shared.items()}

    def task_mask(self, task: int) -> Dict[str, torch.Tensor]:
        return {t.name: unpack_bits(self.masks[t.name][task], t.shape) for t in self.targets}

    @contextlib.contextmanager
    def use_task(self, task: int) -> Iterator[None]:
        """Within the block the model is task ``task``'s subnetwork, W ⊙ m_task."""
        masks = self.task_mask(task) if task <= self.closed else {t.name: self.current(t) for t in self.targets}
        try:
            with torch.no_grad():
                for t in self.targets:
                    torch.mul(self.dense[t.name], masks[t.name].to(t.param), out=t.param.data)
            yield
        finally:
            self._write()

    def densities(self) -> Dict[str, Tuple[float, float]]:
        out = {}
        for t in self.targets:
            m = self.current(t)
            out[t.name] = (float(m.float().mean()), float((m & ~self.used[t.name]).float().mean()))
        return out

    def report(self) -> Dict[str, float]:
        total = sum(u.numel() for u in self.used.values())
        return {"used": sum(int(u.sum()) for u in self.used.values()) / max(1, total), "tasks": float(self.closed + 1)}

    # -- state ---------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        return {"task": self.task, "closed": self.closed, "dense": {k: v.cpu().clone() for k, v in self.dense.items()},
                "masks": {k: [b.clone() for b in v] for k, v in self.masks.items()}}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if set(state) != {"task", "closed", "dense", "masks"}:
            raise ValueError(f"not a WSN state: keys {sorted(state)}")
        closed = int(state["closed"])
        for t in self.targets:
            if tuple(state["dense"][t.name].shape) != t.shape or len(state["masks"][t.name]) != closed + 1:
                raise ValueError(f"the WSN state does not fit {t.name!r} {t.shape} with {closed + 1} closed tasks")
        used = {}
        for t in self.targets:
            u = torch.zeros(t.shape, dtype=torch.bool)
            for bits in state["masks"][t.name]:
                u |= unpack_bits(bits, t.shape)
            used[t.name] = u.to(t.param.device)
        self.dense = {t.name: state["dense"][t.name].to(t.param) for t in self.targets}
        self.masks = {k: [b.clone() for b in v] for k, v in state["masks"].items()}
        self.used, self.closed, self.task = used, closed, int(state["task"])
        self._write()

    def detach(self) -> None:
        if self.host is not None and hasattr(self.host.model, SCORES):
            for t in self.targets:
                t.param.data.copy_(self.dense[t.name])
            delattr(self.host.model, SCORES)
        self.targets, self.dense, self.used, self.masks, self.host = [], {}, {}, {}, None
