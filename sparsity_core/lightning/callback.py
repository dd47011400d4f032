"""``SparsityCallback``: add sparsity to an existing Lightning ``Trainer`` with one callback.

    trainer = pl.Trainer(callbacks=[SparsityCallback(schedule=Cubic(end_step=2000, final_sparsity=0.9))])

Hooks (per optimizer step; Lightning's order):
- ``setup``: discover targets in the LightningModule (regex include/exclude on module
  names; by default 1-D parameters, norms, embeddings and the classifier head are skipped)
  and build the :class:`SparsityController`. Configuration errors surface here, before
  any weight changes.
- ``on_train_start``: step-0 updates (one-shot or random pruning at initialization).
- ``on_before_optimizer_step``: gradients are final (unscaled under AMP, all-reduced under
  DDP): criteria accumulate, masks act on gradients.
- ``on_train_batch_end``: when ``trainer.global_step`` advanced (not on gradient-accumulation
  batches) the masks are re-applied and, on update steps, recomputed; sparsity is logged.
- ``on_train_end``: optional finalize (plain weights with zeros, loadable by the unmodified
  model class).

``state_dict`` holds the masks, schedule position, criterion state, RNG state, dense
weights of straight-through training and the lottery-ticket snapshot, so a resumed run
continues with bit-identical masks. Under DDP scores are averaged over ranks and rank 0's
masks are broadcast.
"""
from __future__ import annotations

import logging
from typing import Any, Dict, Optional, Union

import pytorch_lightning as pl

from ..allocators.base import Allocator
from ..allocators.budget import MEASURES, check_sparsity
from ..controller import SparsityController, _build
from ..criteria.base import Criterion
from ..discovery import Patterns, discover_targets
from ..enforcement.base import Enforcement
from ..layouts import UnitLayout, parse_layout
from ..registry import ALLOCATORS, CRITERIA, ENFORCEMENTS
from ..schedules.base import Schedule
from ..schedules.constant import Constant
from .sync import StrategySync

log = logging.getLogger(__name__)


class SparsityCallback(pl.Callback):
    """Prune, sparse-train and finalize a LightningModule.

    Args:
        schedule: a :class:`Schedule` (``Cubic``, ``Linear``, ``Iterative``, ...) or a float
            for one-shot pruning at step 0.
        criterion: ``"magnitude"``, ``"l2"``, ``"random"``, ``"taylor"``, ``"movement"`` or a
            :class:`Criterion`.
        allocator: ``"global"``, ``"uniform"``, ``"erk"``, ``"lamp"`` or an :class:`Allocator`
            (e.g. ``GlobalRank(min_keep_fraction=0.02)``).
        enforcement: ``"hard"``, ``"ste"`` or an :class:`Enforcement`.
        layout: unit layout of every target: ``"element"``, ``"2:4"`` (N:M), ``"channel"``...
        include, exclude: regular expressions searched in module names.
        update_every: recompute masks every this many optimizer steps within the schedule.
        measure: what the sparsity counts: ``"units"``, ``"params"`` or ``"macs"`` (MACs are
            measured with ``pl_module.example_input_array``).
        finalize: make the sparsity permanent at the end of training.
        log_per_target: also log ``sparsity/<target>`` for every target.
    """

    def __init__(
        self,
        schedule: Union[Schedule, float] = 0.5,
        criterion: Union[str, Criterion] = "magnitude",
        allocator: Union[str, Allocator] = "global",
        enforcement: Union[str, Enforcement] = "hard",
        layout: Union[str, UnitLayout] = "element",
        include: Patterns = None,
        exclude: Patterns = None,
        update_every: int = 100,
        measure: str = "units",
        finalize: bool = False,
        log_per_target: bool = True,
    ) -> None:
        super().__init__()
        if isinstance(schedule, (int, float)) and not isinstance(schedule, bool):
            schedule = Constant(sparsity=check_sparsity(schedule))
        if not isinstance(schedule, Schedule):
            raise TypeError(f"schedule must be a Schedule or a float sparsity, got {type(schedule).__name__}")
        if measure not in MEASURES:
            raise ValueError(f"measure must be one of {', '.join(MEASURES)}; got {measure!r}")
        if not isinstance(update_every, int) or isinstance(update_every, bool) or update_every < 1:
            raise ValueError(f"update_every must be an int >= 1, got {update_every!r}")
        self.schedule = schedule
        self.criterion = _build(CRITERIA, criterion, Criterion, "criterion")
        self.allocator = _build(ALLOCATORS, allocator, Allocator, "allocator")
        self.enforcement = _build(ENFORCEMENTS, enforcement, Enforcement, "enforcement")
        self.layout = parse_layout(layout)
        self.include, self.exclude = include, exclude
        self.update_every = update_every
        self.measure = measure
        self.finalize = finalize
        self.log_per_target = log_per_target
        self.controller: Optional[SparsityController] = None
        self._pending_state: Optional[Dict[str, Any]] = None
        self._seen_step = -1
        self._report: Dict[str, float] = {}

    @property
    def state_key(self) -> str:
        return self._generate_state_key(
            schedule=repr(self.schedule), criterion=repr(self.criterion), layout=repr(self.layout),
            include=self.include, exclude=self.exclude,
        )

    # -- set-up ---------------------------------------------------------------------------
    def setup(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", stage: str) -> None:
        if stage != "fit":
            return
        if self.controller is not None:
            if self.controller.model is not pl_module:
                raise ValueError("this SparsityCallback already holds the masks of another LightningModule; "
                                 "use one callback per model")
            return
        self.controller = self.build_controller(trainer, pl_module)
        if self._pending_state is not None:
            self._load(self._pending_state)
            self._pending_state = None

    def build_controller(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> SparsityController:
        """Discover the targets of ``pl_module`` and build the controller (plugins override
        this to discover other kinds of units)."""
        example = pl_module.example_input_array if self.measure == "macs" else None
        if self.measure == "macs" and example is None:
            raise ValueError("measure='macs' needs pl_module.example_input_array to count MACs")
        targets = discover_targets(pl_module, include=self.include, exclude=self.exclude,
                                   layout=self.layout, example_input=example)
        return SparsityController(
            targets, schedule=self.schedule, criterion=self.criterion, allocator=self.allocator,
            enforcement=self.enforcement, update_every=self.update_every, measure=self.measure, model=pl_module,
        )

    def on_fit_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        ctrl = self._require()
        ctrl.bind_optimizers(trainer.optimizers)
        ctrl.sync = StrategySync(trainer)
        ctrl.to_devices()

    def on_train_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        ctrl = self._require()
        self._seen_step = trainer.global_step  # a new Trainer counts its steps from 0 again
        # A resumed run restored weights and masks together from the checkpoint: nothing to
        # re-apply (re-applying would shrink soft-shrinkage weights a second time).
        if ctrl.update(trainer.global_step) or ctrl.masks:
            self._refresh_report()

    # -- per optimizer step ---------------------------------------------------------------
    def on_before_optimizer_step(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", optimizer: Any) -> None:
        self._require().before_optimizer_step(optimizer)

    def on_train_batch_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step
        if step <= self._seen_step:  # a gradient-accumulation batch: no optimizer step happened
            return
        self._seen_step = step
        ctrl = self._require()
        events = len(ctrl.history)
        ctrl.after_optimizer_step(step)
        if len(ctrl.history) != events or not self._report:  # masks changed (schedule or regime)
            self._refresh_report()
            if ctrl.history and "changed" in ctrl.history[-1]:
                # sparse architecture divergence: fraction of units whose state flipped
                pl_module.log("sparsity/mask_change", ctrl.history[-1]["changed"], on_step=True, on_epoch=False,
                              rank_zero_only=True)
        self._log(pl_module)

    def on_train_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        if self.finalize and self.controller is not None:
            self.controller.finalize()
            self._refresh_report()

    # -- logging --------------------------------------------------------------------------
    def _refresh_report(self) -> None:
        self._report = self.sparsity_report()

    def _log(self, pl_module: "pl.LightningModule") -> None:
        if not self._report:
            return
        pl_module.log("sparsity/global", self._report["global"], on_step=True, on_epoch=False, rank_zero_only=True)
        if self.log_per_target:
            for name, value in self._report.items():
                if name != "global":
                    pl_module.log(f"sparsity/{name}", value, on_step=True, on_epoch=False, rank_zero_only=True)

    def sparsity_report(self) -> Dict[str, float]:
        """Global (parameter-weighted) and per-target sparsity of the current masks."""
        return dict(self._require().report())

    # -- state ----------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        if self.controller is None:
            return dict(self._pending_state or {})
        return {"controller": self.controller.state_dict(), "seen_step": self._seen_step}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        if not state_dict:
            return
        if "controller" not in state_dict:
            raise ValueError(f"not a SparsityCallback state: keys {sorted(state_dict)}")
        if self.controller is None:
            self._pending_state = dict(state_dict)
        else:
            self._load(state_dict)

    def _load(self, state: Dict[str, Any]) -> None:
        self._require().load_state_dict(state["controller"])
        self._seen_step = int(state.get("seen_step", -1))

    def _require(self) -> SparsityController:
        if self.controller is None:
            raise RuntimeError("SparsityCallback is not set up: it runs inside Trainer.fit")
        return self.controller

    def __repr__(self) -> str:
        return (
            f"SparsityCallback(schedule={self.schedule!r}, criterion={self.criterion!r}, allocator={self.allocator!r}, "
            f"enforcement={self.enforcement!r}, layout={self.layout!r}, include={self.include!r}, "
            f"exclude={self.exclude!r}, update_every={self.update_every}, measure={self.measure!r})"
        )
