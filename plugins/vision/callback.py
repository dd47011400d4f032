"""``ChannelPruning``: train with soft channel/head masks, end with a smaller model.

    trainer = pl.Trainer(callbacks=[ChannelPruning(Cubic(end_step=2000, final_sparsity=0.5), measure="macs")])

The LightningModule needs ``example_input_array`` (to trace the channel couplings and count
MACs). At ``setup`` the coupled channel groups and attention heads are discovered with
Torch-Pruning's ``DependencyGraph`` (a model that cannot be traced fails here, naming the
module, before anything changes). During training the core controller recomputes the group
masks on the schedule, and the enforcement keeps the masked network equal to the pruned one.
At the end of fit (or earlier, :meth:`ChannelPruning.remove_now`) the pruned channels are
physically removed and the optimizer is rebound with its moments, so a run can go on
fine-tuning the smaller model.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Union

import pytorch_lightning as pl

from sparsity_core.allocators.base import Allocator
from sparsity_core.controller import SparsityController
from sparsity_core.criteria.base import Criterion
from sparsity_core.enforcement.base import Enforcement
from sparsity_core.lightning.callback import SparsityCallback
from sparsity_core.schedules.base import Schedule

from . import criteria as _criteria  # noqa: F401 - registers the group criteria
from .budget import ChannelBudget, channel_budget
from .enforcement import GroupMask
from .groups import ChannelGroups, discover_channel_groups
from .removal import PruningRecord, pruning_record, remove_channels

#: Core criterion names mapped to their channel-group counterparts.
_ALIASES = {"magnitude": "group_l2", "l2": "group_l2", "l1": "group_l1", "taylor": "group_taylor"}


class ChannelPruning(SparsityCallback):
    """Structured (channel and head) pruning of a vision model inside ``Trainer.fit``.

    Args:
        schedule: a core :class:`Schedule` or a float (one-shot at step 0); the sparsity is
            the fraction of ``measure`` removed.
        criterion: ``"group_l2"`` (default), ``"group_l1"``, ``"bn_scale"``, ``"group_taylor"``,
            ``"head_sensitivity"``, ``"random"`` or a :class:`Criterion`.
        allocator: ``"global"`` (rank units of all groups together) or ``"uniform"`` (the
            same ratio in every group), or an :class:`Allocator` (its floors apply).
        enforcement: ``"group"`` (zeroed during training), ``"mask_sparsity"``,
            ``"group_envelope"`` or an :class:`Enforcement`.
        measure: ``"units"`` (channel/head ratio), ``"params"`` or ``"macs"``; parameter and
            MAC budgets are met exactly (see :mod:`~sparsity_plugins.vision.budget`).
        round_to: kept channel counts are multiples of this (heads: ``heads·head_dim`` is).
        ignore: regular expressions of module names never pruned (the classifier never is).
        prune_heads, prune_embed_dim: see :func:`discover_channel_groups`.
        remove: physically remove the pruned channels at the end of fit.
        allow_repruning: prune a model that an earlier run already pruned; budgets then
            count from the current (smaller) model and the kept-index records compose.
        update_every: recompute masks every this many optimizer steps within the schedule.
    """

    def __init__(
        self,
        schedule: Union[Schedule, float] = 0.5,
        criterion: Union[str, Criterion] = "group_l2",
        allocator: Union[str, Allocator] = "global",
        enforcement: Union[str, Enforcement] = "group",
        measure: str = "macs",
        round_to: int = 8,
        ignore: Sequence[str] = (),
        prune_heads: bool = True,
        prune_embed_dim: bool = False,
        remove: bool = True,
        allow_repruning: bool = False,
        update_every: int = 100,
        log_per_target: bool = False,
    ) -> None:
        if isinstance(criterion, str):
            criterion = _ALIASES.get(criterion.lower(), criterion)
        super().__init__(schedule=schedule, criterion=criterion, allocator=allocator, enforcement=enforcement,
                         update_every=update_every, measure=measure, finalize=remove, log_per_target=log_per_target)
        if not isinstance(self.enforcement, GroupMask):
            raise TypeError(f"ChannelPruning needs a channel-group enforcement (group, mask_sparsity, group_envelope); "
                            f"got {self.enforcement!r}")
        if not (isinstance(round_to, int) and not isinstance(round_to, bool) and round_to >= 1):
            raise ValueError(f"round_to must be an int >= 1, got {round_to!r}")
        self.round_to = round_to
        self.ignore = tuple([ignore] if isinstance(ignore, str) else ignore)
        self.prune_heads, self.prune_embed_dim = prune_heads, prune_embed_dim
        self.allow_repruning = allow_repruning
        self.groups: Optional[ChannelGroups] = None
        self.record: Optional[PruningRecord] = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(schedule=repr(self.schedule), criterion=repr(self.criterion),
                                        measure=self.measure, ignore=self.ignore)

    def build_controller(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> SparsityController:
        example = pl_module.example_input_array
        if example is None:
            raise ValueError("ChannelPruning needs pl_module.example_input_array (a batch the model accepts) "
                             "to trace channel couplings and count MACs")
        if pruning_record(pl_module) is not None and not self.allow_repruning:
            raise ValueError("this model was already pruned (it carries a pruning record); pass "
                             "allow_repruning=True to prune it again: budgets then count from the current model")
        self.groups = discover_channel_groups(pl_module, example, ignore=self.ignore, prune_heads=self.prune_heads,
                                              prune_embed_dim=self.prune_embed_dim)
        allocator = self.allocator if isinstance(self.allocator, ChannelBudget) else \
            channel_budget(self.allocator, self.groups, round_to=self.round_to)
        return SparsityController(
            self.groups.targets, schedule=self.schedule, criterion=self.criterion, allocator=allocator,
            enforcement=self.enforcement, update_every=self.update_every, measure=self.measure, model=pl_module,
        )

    # -- removal --------------------------------------------------------------------------
    def on_train_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        if self.finalize and self.controller is not None and not self.controller.finalized:
            self.remove_now(trainer)

    def remove_now(self, trainer: Optional["pl.Trainer"] = None) -> PruningRecord:
        """Remove the pruned channels now; training may go on with the smaller model (the
        trainer's optimizers are rebound). Masks stop acting afterwards."""
        ctrl = self._require()
        if ctrl.finalized:
            raise RuntimeError("the channels were already removed")
        if not ctrl.masks:
            raise RuntimeError("no masks yet: nothing to remove (the schedule has not started)")
        optimizers = trainer.optimizers if trainer is not None else ctrl.optimizers
        ctrl.finalize()  # zero every pruned slice (and its optimizer state)
        self.enforcement.remove_hooks()
        try:
            self.record = remove_channels(self.groups, ctrl.masks, optimizers)
        except ValueError:  # the model is unchanged: the masks go on acting
            ctrl.finalized = False
            self.enforcement.bind(ctrl)
            raise
        self._refresh_report()
        return self.record

    def sparsity_report(self) -> Dict[str, float]:
        """Per-group sparsity, and ``global`` = the exact fraction of the budget's measure
        removed (parameters or MACs from the cost model, not a first-order sum)."""
        report = super().sparsity_report()
        ctrl = self._require()
        cost = getattr(ctrl.allocator, "cost_model", None)
        if cost is not None and ctrl.masks:
            measure = self.measure if self.measure != "units" else "params"
            report["global"] = 1.0 - cost.cost_of_masks(ctrl.masks)[measure] / cost.dense[measure]
        return report

    def floored_groups(self) -> list:
        """Groups whose kept count was raised to the allocator's floor at the last update."""
        alloc = self._require().allocator
        return list(getattr(alloc, "last_floored", []))

    # -- state ----------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        state = super().state_dict()
        if self.record is not None:
            state["record"] = self.record.to_json()
        return state

    def _load(self, state: Dict[str, Any]) -> None:
        if "record" in state:
            raise ValueError("this checkpoint was written after the channels were physically removed; rebuild the "
                             "pruned model (sparsity_plugins.vision.export.load_pruned) instead of resuming pruning")
        super()._load(state)

    def __repr__(self) -> str:
        return (f"ChannelPruning(schedule={self.schedule!r}, criterion={self.criterion!r}, "
                f"allocator={self.allocator!r}, enforcement={self.enforcement!r}, measure={self.measure!r}, "
                f"round_to={self.round_to}, ignore={self.ignore!r})")
