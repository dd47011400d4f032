"""SparCL's task-aware dynamic masking, TDM (Wang et al., NeurIPS 2022), as a core mask
program.

One sparse mask over the whole stream (no task scopes: the mask carries over from task to
task). At step 1 the controller prunes to ``sparsity`` by the criterion
:class:`~.importance.WeightGradientImportance`, |w| + λ|g|. Then, every ``every`` optimizer
steps counted from the start of each task, :class:`ImportanceRegrow`:

1. prunes to ``prune_sparsity`` (> ``sparsity``) by |w| + λ|g| over all weights, through the
   controller's criterion, allocator and layout (``ctrl.masks_for``);
2. regrows, per target, as many units as it had before, chosen uniformly at random among
   its pruned units (the controller's seeded generator), so each target returns to its
   count and the run stays at ``sparsity``. Regrown weights start at zero with zero
   optimizer moments (hard masks). ``regrow="gradient"`` (not in the paper; RigL's rule,
   Evci et al., 2020) regrows instead the pruned units with the largest dense |gradient| of
   the update step's loss (captured before any gradient mask); the FLOPs counter does not
   charge that one dense weight gradient per update (one step in ``every``).

In density terms 1 − ``prune_sparsity`` is the paper's lower bound and 1 − ``sparsity`` its
upper bound. With ``gradient_keep`` the regime adds :class:`~.dgm.DynamicGradientMask`
(DGM). The task-aware logit masking of the method is the module's ``task_aware=True``
(:class:`~.module.ContinualModule`). :meth:`densities` feeds the training-FLOPs counter.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple, Union

import torch

from sparsity_core.allocators.base import Allocator
from sparsity_core.discovery import Patterns
from sparsity_core.enforcement.hard import HardMask
from sparsity_core.enforcement.prune_regrow import PruneRegrow
from sparsity_core.enforcement.regime import Regime
from sparsity_core.layouts import top_k_mask
from sparsity_core.mask_program import WeightSparsity
from sparsity_core.masks import MaskSet, apply_mask_, mask_optimizer_state_
from sparsity_core.registry import PROGRAMS
from sparsity_core.schedules.constant import Constant
from sparsity_core.validation import check_int, check_sparsity

from .dgm import DynamicGradientMask
from .importance import WeightGradientImportance
from .stream import stream_task


class ImportanceRegrow(PruneRegrow):
    """Prune to ``prune_sparsity`` by the controller's criterion, regrow at random to each
    target's previous count (see the module); cadence ``every`` steps from ``task_start``."""

    name = "importance_regrow"

    def __init__(self, prune_sparsity: float, sparsity: float, every: int, regrow: str = "random") -> None:
        if regrow not in ("random", "gradient"):
            raise ValueError(f"regrow must be 'random' (SparCL) or 'gradient' (RigL's rule), got {regrow!r}")
        super().__init__(regrow=regrow, every=every, drop_fraction=0.5, decay="constant")
        self.prune_sparsity, self.sparsity = prune_sparsity, sparsity
        self.task, self.task_start = 0, 0

    def is_regrow_step(self, step: int) -> bool:
        local = step - self.task_start
        return local > 0 and local % self.every == 0

    @torch.no_grad()
    def prune_and_regrow(self, ctrl, step: int) -> MaskSet:
        pruned = ctrl.masks_for(self.prune_sparsity, ctrl.compute_scores(step))
        by_gradient = self.regrowth_scores(ctrl) if self.regrow == "gradient" else {}
        out = MaskSet()
        for t in ctrl.targets:
            before = ctrl.masks[t.name].reshape(-1).cpu()
            low = pruned[t.name].reshape(-1).cpu()
            grow = int(before.sum()) - int(low.sum())
            if grow > 0:
                score = (by_gradient[t.name].float() if self.regrow == "gradient"
                         else torch.rand(low.numel(), generator=ctrl.generator))
                candidates = torch.where(low, torch.full((low.numel(),), float("-inf")), score)
                grown = top_k_mask(candidates, grow)
                self._zero(ctrl, t, grown.reshape(t.mask_shape))
                low = low | grown
            out[t.name] = low.reshape(t.mask_shape)
        return out

    @staticmethod
    def _zero(ctrl, target, grown: torch.Tensor) -> None:
        """Regrown units start from zero with zero optimizer moments (also one pruned and
        regrown in the same update), as SparCL grows after zeroing what it pruned."""
        keep = ~grown.to(target.param.device)
        apply_mask_(target.param.data, target, keep)
        for opt in ctrl.optimizers:
            mask_optimizer_state_(opt, target.param, target, keep)

    def state_dict(self) -> Dict[str, object]:
        return {"task": self.task, "task_start": self.task_start}

    def load_state_dict(self, state: Dict[str, object]) -> None:
        if set(state) != {"task", "task_start"}:
            raise ValueError(f"not an ImportanceRegrow state: keys {sorted(state)}")
        self.task, self.task_start = int(state["task"]), int(state["task_start"])

    def __repr__(self) -> str:
        return (f"ImportanceRegrow(prune_sparsity={self.prune_sparsity}, sparsity={self.sparsity}, every={self.every}, "
                f"regrow={self.regrow!r})")


@PROGRAMS.register("sparcl_tdm")
class TaskAwareDynamicMasks(WeightSparsity):
    """Args:
        sparsity: the sparsity held over the stream (upper density bound 1 − sparsity).
        prune_sparsity: the sparsity each update prunes to before regrowing (> ``sparsity``;
            default ``sparsity + 0.1·(1 − sparsity)``: a tenth of the kept weights move).
        every: optimizer steps between updates within a task (SparCL: 5 epochs' worth).
        lam: λ of the importance |w| + λ|g|.
        gradient_keep: DGM's kept fraction of active gradient entries (``None``: no DGM).
        gradient_every: DGM's refresh interval in optimizer steps.
        regrow: ``"random"`` (SparCL) or ``"gradient"`` (regrow by dense |gradient|, RigL's rule).
        allocator: how the sparsity splits over layers (``"uniform"``: every layer alike).
        include, exclude, skip_head: which weights (as :class:`WeightSparsity`).
    """

    name = "tdm"

    def __init__(self, sparsity: float = 0.9, prune_sparsity: Optional[float] = None, every: int = 100,
                 lam: float = 0.5, gradient_keep: Optional[float] = 0.2, gradient_every: int = 30,
                 allocator: Union[str, Allocator] = "uniform", include: Patterns = None, exclude: Patterns = None,
                 skip_head: bool = True, name: Optional[str] = None, regrow: str = "random") -> None:
        sparsity = check_sparsity(sparsity, "sparsity")
        if prune_sparsity is None:
            prune_sparsity = sparsity + 0.1 * (1.0 - sparsity)
        prune_sparsity = check_sparsity(prune_sparsity, "prune_sparsity")
        if prune_sparsity <= sparsity:
            raise ValueError(f"sparsity bounds inverted: prune_sparsity ({prune_sparsity}) must be greater than "
                             f"sparsity ({sparsity}); TDM prunes to prune_sparsity, then regrows to sparsity")
        self.regrow = ImportanceRegrow(prune_sparsity, sparsity, check_int(every, "every", 1), regrow)
        self.dgm = None if gradient_keep is None else DynamicGradientMask(gradient_keep, gradient_every)
        parts = [self.regrow] + ([self.dgm] if self.dgm is not None else [])
        super().__init__(schedule=Constant(start_step=1, end_step=1, sparsity=sparsity),
                         criterion=WeightGradientImportance(lam), allocator=allocator,
                         enforcement=Regime(HardMask(), *parts), include=include, exclude=exclude,
                         skip_head=skip_head, update_every=1, name=name)
        self.sparsity, self.prune_sparsity = sparsity, prune_sparsity

    def state_id(self) -> str:
        return f"{self.name}(sparsity={self.sparsity}, prune_sparsity={self.prune_sparsity})"

    def start(self, step: int) -> None:
        super().start(step)
        task = stream_task(self.host)
        if task is not None and task != self.regrow.task:  # the stream moved on between fits
            self.regrow.task, self.regrow.task_start = task, int(step)

    def set_task(self, task: str, step: int) -> None:
        """One mask for the whole stream: the controller stays in its scope; only the update
        cadence restarts with the task."""
        self.regrow.task = stream_task(self.host) if stream_task(self.host) is not None else self.regrow.task + 1
        self.regrow.task_start = int(step)

    def densities(self) -> Dict[str, Tuple[float, float]]:
        """``{weight name: (weight density, gradient density)}`` of every target."""
        ctrl = self.require()
        out = {}
        for t in ctrl.targets:
            w = 1.0 - ctrl.masks.sparsity(t.name) if t.name in ctrl.masks else 1.0
            g = self.dgm.density(t.name, t.param.numel()) if self.dgm is not None else None
            out[t.name] = (w, w if g is None else g)
        return out

    def __repr__(self) -> str:
        return (f"TaskAwareDynamicMasks(sparsity={self.sparsity}, prune_sparsity={self.prune_sparsity}, "
                f"every={self.regrow.every}, dgm={self.dgm!r}, name={self.name!r})")
