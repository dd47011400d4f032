"""SparsityController: targets + criterion + allocator + schedule + enforcement.

Usable from any training loop (no Lightning import)::

    ctrl = SparsityController(discover_targets(model), schedule=Cubic(end_step=1000, final_sparsity=0.9),
                              model=model, optimizers=[opt])
    for step, (x, y) in enumerate(loader, start=1):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(); loss.backward()
        ctrl.before_optimizer_step(opt)     # criterion statistics; mask gradients
        opt.step()
        ctrl.after_optimizer_step(step)     # re-apply masks; recompute them when due

At an update step the controller scores every target, checks the scores are finite,
averages them over ranks, lets the allocator split the schedule's budget into kept counts,
selects the best units per target, takes rank 0's masks, and hands them to the
enforcement. Everything it knows is in :meth:`state_dict` (plain tensors and numbers).
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Union

import torch
from torch import nn

from .allocators.base import Allocator
from .allocators.budget import MEASURES, Budget
from .criteria.base import Criterion, ScoreContext
from .enforcement.base import Enforcement
from .enforcement.regime import RegimePart, build_enforcement
from .masks import MaskSet
from .controller_state import ControllerState
from .observe import ActivationObserver
from .ranks import log_rank_zero
from .registry import ALLOCATORS, CRITERIA
from .scopes import DEFAULT_TASK, TaskScopes
from .schedules.base import Schedule
from .schedules.function import as_schedule
from .selection import build_component, score_targets, select_masks
from .sync import LocalSync
from .targets import Target
from .validation import check_int

log = logging.getLogger(__name__)


class SparsityController(TaskScopes, ControllerState):
    """Owns the masks, the schedule position and the history of one sparsity run.

    Args:
        targets: what may be pruned (see :func:`sparsity_core.discovery.discover_targets`).
        schedule: a :class:`Schedule`, a float for one-shot pruning at step 0, or a callable
            ``step -> sparsity``.
        criterion, allocator, enforcement: a registered name or an instance.
        update_every: recompute masks every this many optimizer steps within the schedule.
        measure: what the schedule's sparsity counts: ``"units"``, ``"params"`` or ``"macs"``.
        model: the module the targets belong to; needed for lottery-ticket rewinding.
        optimizers: optimizers whose per-weight state is masked with the weights.
        sync: distributed synchronisation (default: single process).
        seed: seed of the controller's generator (randomness of enforcement regimes).
    """

    def __init__(
        self,
        targets: Sequence[Target],
        schedule: Union[Schedule, float, Callable[[int], float]],
        criterion: Union[str, Criterion] = "magnitude",
        allocator: Union[str, Allocator] = "global",
        enforcement: Union[str, Enforcement, RegimePart] = "hard",
        update_every: int = 100,
        measure: str = "units",
        model: Optional[nn.Module] = None,
        optimizers: Sequence[torch.optim.Optimizer] = (),
        sync: Optional[LocalSync] = None,
        seed: int = 0,
    ) -> None:
        if not targets:
            raise ValueError("SparsityController needs at least one target")
        names = [t.name for t in targets]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate target names: {sorted({n for n in names if names.count(n) > 1})}")
        check_int(update_every, "update_every", minimum=1)
        if measure not in MEASURES:
            raise ValueError(f"measure must be one of {', '.join(MEASURES)}; got {measure!r}")
        schedule = as_schedule(schedule)
        self.targets: List[Target] = list(targets)
        self.schedule = schedule
        self.criterion: Criterion = build_component(CRITERIA, criterion, Criterion, "criterion")
        self.allocator: Allocator = build_component(ALLOCATORS, allocator, Allocator, "allocator")
        self.enforcement: Enforcement = build_enforcement(enforcement)
        self.update_every = update_every
        self.measure = measure
        self.model = model
        self.optimizers: List[torch.optim.Optimizer] = list(optimizers)
        self.sync = sync or LocalSync()
        self.masks = MaskSet()
        self.step = -1  # last optimizer step processed
        self.last_update_step: Optional[int] = None
        self.current_sparsity = 0.0
        self.history: List[Dict[str, float]] = []
        self.snapshot: Optional[Dict[str, torch.Tensor]] = None
        # Randomness of regimes (e.g. SET regrowth); a stream distinct from RandomScores(seed=0),
        # which would otherwise re-draw the very scores that chose the initial mask.
        self.generator = torch.Generator().manual_seed(0x9E3779B9 ^ seed)
        self.finalized = False
        # Task scopes: the current task, where its schedule clock started, the other tasks' state.
        self.task = DEFAULT_TASK
        self.task_offset = 0
        self.scopes: Dict[str, Dict[str, Any]] = {}
        #: input statistics criteria may read (``ScoreContext.activations``), set by whoever observes
        self.activations: Optional[Mapping[str, Any]] = None
        self._check_schedule_feasible()
        self.enforcement.attach(self)

    # -- configuration checks -------------------------------------------------------------
    def _check_schedule_feasible(self) -> None:
        """Fail at construction, not mid-run, when the final budget is infeasible."""
        if self.observes_training and self.is_update_step(0) and self.schedule.value(0) > 0:
            raise ValueError(
                f"criterion {self.criterion!r} scores from gradients or training forwards, but the schedule prunes "
                "at step 0 before any training step; start the schedule at step >= 1 (start_step=...)"
            )
        for step in (self.schedule.start_step, self.schedule.end_step):
            layout = self.schedule.layout_at(step)
            if layout is not None:
                for t in self.targets:
                    if t.param is not None:
                        layout.validate(t.shape, t.name)
        if self.schedule.final <= 0:
            return
        fake_scores = {t.name: torch.zeros(t.num_units) for t in self.targets}
        self.allocator.allocate(self.targets, fake_scores, self.budget_at(self.schedule.end_step))

    @property
    def observes_training(self) -> bool:
        """The criterion collects statistics at optimizer steps (gradients or training forwards)."""
        return self.criterion.observes in ("step", "forward")

    @property
    def target_map(self) -> Dict[str, Target]:
        return {t.name: t for t in self.targets}

    def bind_optimizers(self, optimizers: Sequence[torch.optim.Optimizer]) -> None:
        self.optimizers = list(optimizers)

    def to_devices(self) -> None:
        """Move masks and enforcement state to their parameters' devices (after a model move)."""
        for t in self.targets:
            if t.param is not None and t.name in self.masks:
                self.masks[t.name] = self.masks[t.name].to(t.param.device)
        self.enforcement.bind(self)

    # -- the training-loop interface ------------------------------------------------------
    def context(self, step: Optional[int] = None) -> ScoreContext:
        return ScoreContext(step=self.step if step is None else step, weight=self.enforcement.dense_weight,
                            activations=self.activations, task=self.task)

    def before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Gradients are final: accumulate criterion statistics, then let masks act on them."""
        if self.finalized:
            return
        if self.observes_training:
            owned = {id(p) for g in optimizer.param_groups for p in g["params"]}
            ctx = self.context()
            for t in self.targets:  # targets without a parameter (channel groups...) see every step
                if t.param is None or id(t.param) in owned:
                    self.criterion.observe(t, ctx)
        if self.masks:
            self.enforcement.before_optimizer_step(self, optimizer)

    def after_optimizer_step(self, step: int) -> bool:
        """Call once per optimizer step with the number of steps done. Returns whether
        the masks were recomputed."""
        if self.finalized:
            return False
        self.step = step
        if self.masks:
            self.enforcement.after_optimizer_step(self)
        return self.update(step)

    def is_update_step(self, step: int) -> bool:
        return self.schedule.is_update_step(self.local_step(step), self.update_every)

    def update(self, step: int, force: bool = False) -> bool:
        """Recompute masks if ``step`` is an update step (or ``force``)."""
        check_int(step, "step", minimum=0)
        if self.finalized:
            return False
        self.step = step
        self._maybe_snapshot(step)
        if not (force or self.is_update_step(step)) or step == self.last_update_step:
            return False
        self.recompute(step)
        return True

    # -- mask computation -----------------------------------------------------------------
    def compute_scores(self, step: int) -> Dict[str, torch.Tensor]:
        return self.all_reduce(score_targets(self.criterion, self.targets, self.context(step)))

    def all_reduce(self, scores: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Average per-target statistics over ranks (one collective for all targets)."""
        if self.sync_world_size == 1:
            return scores
        flat = self.sync.all_reduce_mean(torch.cat([s for s in scores.values()]))
        out, offset = {}, 0
        for name, s in scores.items():
            out[name] = flat[offset: offset + s.numel()]
            offset += s.numel()
        return out

    def budget_at(self, step: int) -> Budget:
        """The schedule's budget at ``step`` (with its sub-budgets, for a budget tree)."""
        local = self.local_step(step)
        return Budget(sparsity=self.schedule.value(local), measure=self.measure,
                      groups=self.schedule.group_values(local))

    def masks_for(self, budget: Union[Budget, float], scores: Mapping[str, torch.Tensor]) -> MaskSet:
        """Masks for ``budget`` (a float: that sparsity, with the sub-budgets of the last update)."""
        if not isinstance(budget, Budget):
            step = self.last_update_step if self.last_update_step is not None else max(self.step, 0)
            budget = Budget(sparsity=budget, measure=self.measure,
                            groups=self.schedule.group_values(self.local_step(step)))
        return select_masks(self.allocator, self.targets, scores, budget)

    def recompute(self, step: int) -> None:
        sparsity = self.schedule.value(self.local_step(step))
        self._apply_layout(self.local_step(step))
        if sparsity == 0.0 and not self.masks:  # nothing to prune yet: no scores needed
            new = MaskSet.dense(self.targets)
        else:
            new = self.masks_for(self.budget_at(step), self.compute_scores(step))
        rewinding = self.snapshot is not None and sparsity > self.current_sparsity
        self.replace_masks(new, step, target_sparsity=sparsity, rewind=rewinding)
        self.criterion.reset()
        if isinstance(self.activations, ActivationObserver):  # statistics since the last update
            self.activations.reset()
        self.last_update_step = step
        self.current_sparsity = sparsity

    def _apply_layout(self, step: int) -> None:
        """Schedules that move through unit layouts (stepwise N:M) set them here."""
        layout = self.schedule.layout_at(step)
        if layout is None:
            return
        for t in self.targets:
            if t.param is not None:
                t.layout = layout

    def replace_masks(self, new: MaskSet, step: int, target_sparsity: Optional[float] = None,
                      rewind: bool = False, event: str = "update", only_if_changed: bool = False) -> None:
        """Install ``new`` masks (identical on every rank) and let the enforcement act.

        Used by scheduled updates and by regimes that change masks themselves
        (prune-and-regrow, projection): the one path by which masks change. Records a history
        entry with the fraction of units whose state changed (the sparse architecture
        divergence between consecutive masks); with ``only_if_changed`` (regimes that
        re-project every step) only when some unit changed.
        """
        if self.sync_world_size > 1:
            new = MaskSet(self.sync.broadcast(new.state_dict()))
        for t in self.targets:  # broadcast returns CPU tensors
            if t.param is not None:
                new[t.name] = new[t.name].to(t.param.device)
        previous = self.masks.copy() if self.masks else None
        self.masks = new
        if rewind:
            self._rewind()
        self.enforcement.apply_masks(self, previous)
        entry: Dict[str, Any] = {"step": step, "event": event, "sparsity": self.sparsity()}
        if target_sparsity is not None:
            entry["target_sparsity"] = target_sparsity
        if previous is not None:
            entry["changed"] = new.changed_fraction(previous)
        if only_if_changed and entry.get("changed", 1.0) == 0.0:
            return
        self.history.append(entry)
        log_rank_zero(log, logging.DEBUG, "step %d: masks %s, sparsity %.4f", step, event, entry["sparsity"])

    @property
    def sync_world_size(self) -> int:
        return int(getattr(self.sync, "world_size", 1))

    # -- lottery-ticket rewinding ---------------------------------------------------------
    def _maybe_snapshot(self, step: int) -> None:
        rewind_step = self.schedule.snapshot_step
        if rewind_step is None or self.snapshot is not None or self.local_step(step) != rewind_step:
            return
        if self.model is None:
            raise ValueError("lottery-ticket rewinding needs the controller's model= argument")
        self.snapshot = {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    @torch.no_grad()
    def _rewind(self) -> None:
        """Restore the weights saved at the rewind step; optimizer state is reset."""
        if self.model is None or self.snapshot is None:
            raise ValueError("rewinding needs the controller's model= and a snapshot")
        self.model.load_state_dict(self.snapshot)
        self.enforcement.weights_reset(self)
        for opt in self.optimizers:
            opt.state.clear()

    # -- reporting ------------------------------------------------------------------------
    def sparsity(self, measure: str = "params") -> float:
        """Fraction of ``measure`` pruned over all targets (0 before the first update)."""
        if not self.masks:
            return 0.0
        return self.masks.weighted_sparsity(self.targets, "units" if measure == "units" else measure)

    def report(self) -> Dict[str, float]:
        """Global and per-target sparsity, for logging."""
        out = {"global": self.sparsity("params" if any(t.param is not None for t in self.targets) else "units")}
        for t in self.targets:
            out[t.name] = self.masks.sparsity(t.name) if t.name in self.masks else 0.0
        return out

    def finalize(self) -> None:
        """Make the sparsity permanent: plain weights with zeros; masks stop acting."""
        if self.masks and not self.finalized:
            self.enforcement.finalize(self)
        self.finalized = True

    def __repr__(self) -> str:
        return (
            f"SparsityController(targets={len(self.targets)}, schedule={self.schedule!r}, criterion={self.criterion!r}, "
            f"allocator={self.allocator!r}, enforcement={self.enforcement!r}, update_every={self.update_every}, "
            f"measure={self.measure!r})"
        )
