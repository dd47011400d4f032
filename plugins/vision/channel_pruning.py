"""``ChannelPruning``: train with soft channel/head masks, end with a smaller model.

    trainer = pl.Trainer(callbacks=[SparsityCallback(programs=[
        ChannelPruning(Cubic(end_step=2000, final_sparsity=0.5), measure="macs")])])

A core :class:`~sparsity_core.mask_program.MaskProgram` whose units are coupled channel
groups and attention heads. The LightningModule needs ``example_input_array`` (to trace the
couplings and count MACs). At ``attach`` the groups are discovered with Torch-Pruning's
``DependencyGraph`` (a model that cannot be traced fails here, naming the module, before
anything changes). During training the core controller recomputes the group masks on the
schedule, and the enforcement keeps the masked network equal to the pruned one. At
``finalize`` (end of fit with ``finalize=True``, or earlier through
:meth:`ChannelPruning.remove_now`) the pruned channels are physically removed and the
optimizers are rebound with their moments, so a run can go on fine-tuning the smaller model.
With ``remove_after_ramp=True`` the removal happens at the schedule's ``end_step`` (the end of
the pruning ramp), so the fine-tuning that follows trains the smaller model.

If the removal fails, the model, its hooks and the optimizers are put back in place (the
zeroing done for the removal included) and the masks go on acting.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Union

from sparsity_core.allocators.base import Allocator
from sparsity_core.criteria.base import Criterion
from sparsity_core.discovery import Patterns, as_patterns
from sparsity_core.enforcement.base import Enforcement
from sparsity_core.mask_program import MaskProgram, ScheduleSpec
from sparsity_core.program import Host
from sparsity_core.registry import PROGRAMS
from sparsity_core.schedules.function import FunctionSchedule
from sparsity_core.targets import Target
from sparsity_core.validation import check_int

from . import criteria as _criteria  # noqa: F401 - registers the group criteria
from .budget import ChannelBudget, channel_budget
from .enforcement import GroupMask
from .groups import ChannelGroups, discover_channel_groups
from .record import PruningRecord, find_pruning_record
from .removal import remove_channels
from .snapshot import ModelSnapshot
from .tracing import DEFAULT_GRAPH_TIME_LIMIT


#: mask update interval for a schedule without a known end (a function of the step)
UPDATE_EVERY_WITHOUT_END = 100


def default_update_every(schedule: Any) -> int:
    """A tenth of the schedule's ramp (``end_step - start_step``), at least 1: about ten mask
    updates per ramp (a 157-step ramp updates every 16 steps). A function schedule has no
    known end: every :data:`UPDATE_EVERY_WITHOUT_END` steps."""
    if isinstance(schedule, FunctionSchedule):
        return UPDATE_EVERY_WITHOUT_END
    start, end = getattr(schedule, "start_step", 0), getattr(schedule, "end_step", 0)
    return max(1, int(round((end - start) / 10)))


@PROGRAMS.register("channels")
class ChannelPruning(MaskProgram):
    """Structured (channel and head) pruning of a vision model.

    Args:
        schedule: a core :class:`Schedule`, a float (one-shot at step 0) or a callable
            ``step -> sparsity``; the sparsity is the fraction of ``measure`` removed.
        criterion: ``"group_l2"`` (default: mean-normalised group L2), ``"group_l1"``, any core
            criterion (``"magnitude"``, ``"l2"``, ``"taylor"``, ``"movement"``, ``"random"``),
            ``"bn_scale"``, ``"head_sensitivity"`` or a :class:`Criterion`.
        allocator: ``"global"`` (default: rank units of all groups together) or
            ``"uniform"`` (the same ratio in every group), or an :class:`Allocator` (its floors
            apply). :func:`~sparsity_plugins.vision.prune_channels` defaults to ``"uniform"``
            (one-shot, no fine-tuning; see :mod:`~sparsity_plugins.vision.oneshot`).
        enforcement: ``"group"`` (zeroed during training), ``"mask_sparsity"``,
            ``"group_envelope"`` or an :class:`Enforcement`.
        measure: ``"units"`` (channel/head ratio), ``"params"`` or ``"macs"``; parameter and
            MAC budgets are met exactly (see :mod:`~sparsity_plugins.vision.budget`).
        round_to: kept channel counts are multiples of this (heads: ``heads·head_dim`` is).
        exclude: regular expressions of module names never pruned (the classifier never is).
        prune_heads, prune_embed_dim: see :func:`discover_channel_groups`.
        finalize: physically remove the pruned channels at the end of fit.
        allow_repruning: prune a model that an earlier run already pruned (a pruning record
            anywhere in its module tree); budgets then count from the current (smaller)
            model and the kept-index records compose.
        update_every: recompute masks every this many optimizer steps within the schedule;
            default (``None``): a tenth of the schedule's ramp (``end_step - start_step``),
            at least 1, so a ramp gets about ten mask updates whatever its length (a
            function schedule, which has no known end: every 100 steps).
        remove_after_ramp: physically remove the pruned channels as soon as the schedule
            reaches its ``end_step`` (before the fine-tuning that follows), instead of at the
            end of fit.
        graph_time_limit, check_control_flow, probe: see :func:`discover_channel_groups`.
    """

    name = "channels"

    def __init__(self, schedule: ScheduleSpec = 0.5, criterion: Union[str, Criterion] = "group_l2",
                 allocator: Union[str, Allocator] = "global", enforcement: Union[str, Enforcement] = "group",
                 measure: str = "macs", round_to: int = 8, exclude: Patterns = None, prune_heads: bool = True,
                 prune_embed_dim: bool = False, finalize: bool = True, allow_repruning: bool = False,
                 update_every: Optional[int] = None, name: Optional[str] = None, remove_after_ramp: bool = False,
                 graph_time_limit: Optional[float] = DEFAULT_GRAPH_TIME_LIMIT, check_control_flow: bool = True,
                 probe: bool = True) -> None:
        super().__init__(schedule=schedule, criterion=criterion, allocator=allocator, enforcement=enforcement,
                         update_every=1 if update_every is None else update_every, measure=measure,
                         finalize=finalize, name=name)
        if update_every is None:  # (a subclass that replaces the schedule later sets update_every too)
            self.update_every = default_update_every(self.schedule)
        self.remove_after_ramp = bool(remove_after_ramp)
        if self.remove_after_ramp and isinstance(self.schedule, FunctionSchedule):
            raise ValueError("remove_after_ramp needs a schedule with a known end_step; a function schedule has none "
                             "(call remove_now() when the pruning phase is over instead)")
        if graph_time_limit is not None and not (isinstance(graph_time_limit, (int, float))
                                                 and not isinstance(graph_time_limit, bool) and graph_time_limit > 0):
            raise ValueError(f"graph_time_limit must be a positive number of seconds or None, got {graph_time_limit!r}")
        self.graph_time_limit, self.check_control_flow, self.probe = graph_time_limit, check_control_flow, probe
        if not isinstance(self.enforcement, GroupMask):
            raise TypeError(f"ChannelPruning needs a channel-group enforcement (group, mask_sparsity, group_envelope); "
                            f"got {self.enforcement!r}")
        self.round_to = check_int(round_to, "round_to", minimum=1)
        as_patterns(exclude, "exclude")  # a clear error naming exclude= for an invalid regex
        self.exclude = tuple([exclude] if isinstance(exclude, str) else (exclude or ()))
        self.prune_heads, self.prune_embed_dim = prune_heads, prune_embed_dim
        self.allow_repruning = allow_repruning
        self.groups: Optional[ChannelGroups] = None
        self.record: Optional[PruningRecord] = None

    def state_id(self) -> str:
        return f"{self.name}(exclude={list(self.exclude)!r})"

    def discover(self, host: Host) -> List[Target]:
        if host.example_input is None:
            raise ValueError("ChannelPruning needs pl_module.example_input_array (a batch the model accepts) "
                             "to trace channel couplings and count MACs")
        found = find_pruning_record(host.model)
        if found is not None and not self.allow_repruning:
            where = f"module {found[0]!r}" if found[0] else "the model"
            raise ValueError(f"this model was already pruned ({where} carries a pruning record); pass "
                             "allow_repruning=True to prune it again: budgets then count from the current model")
        self.groups = discover_channel_groups(host.model, host.example_input, ignore=self.exclude,
                                              prune_heads=self.prune_heads, prune_embed_dim=self.prune_embed_dim,
                                              graph_time_limit=self.graph_time_limit,
                                              check_control_flow=self.check_control_flow, probe=self.probe)
        return list(self.groups.targets)

    def make_allocator(self, targets: List[Target]) -> Allocator:
        if isinstance(self.allocator, ChannelBudget):
            return self.allocator
        return channel_budget(self.allocator, self.groups, round_to=self.round_to)

    # -- removal --------------------------------------------------------------------------
    def after_optimizer_step(self, step: int) -> None:
        super().after_optimizer_step(step)
        ctrl = self.require()
        if self.remove_after_ramp and not ctrl.finalized and ctrl.masks and step >= self.schedule.end_step:
            trainer = getattr(self.host, "trainer", None) if self.host is not None else None
            self.remove_now(trainer)

    def finalize(self) -> None:
        if self.require().finalized:  # already removed (remove_after_ramp, remove_now)
            return
        self.remove_now()

    def remove_now(self, trainer: Any = None) -> PruningRecord:
        """Remove the pruned channels now; training may go on with the smaller model (the
        optimizers are rebound in place). Masks stop acting afterwards."""
        ctrl = self.require()
        if ctrl.finalized:
            raise RuntimeError("the channels were already removed")
        if not ctrl.masks:
            raise RuntimeError("no masks yet: nothing to remove (the schedule has not started)")
        optimizers = list(trainer.optimizers if trainer is not None else ctrl.optimizers)
        # values cloned: finalize zeroes pruned slices and optimizer moments in place
        snapshot = ModelSnapshot(self.groups.model, optimizers, graph=self.groups.graph, clone_values=True)
        hooks = list(self.enforcement._hooks)
        try:
            ctrl.finalize()  # zero every pruned slice (and its optimizer state)
            self.enforcement.remove_hooks()
            self.record = remove_channels(self.groups, ctrl.masks, optimizers)
        except BaseException:  # the model is back as it was: the masks go on acting
            snapshot.restore()
            ctrl.finalized = False
            self.enforcement._hooks = hooks  # the same handles: the restored hooks are theirs
            raise
        return self.record

    def compute_report(self) -> Dict[str, float]:
        """Per-group sparsity, and ``global`` = the exact fraction of the budget's measure
        removed (parameters or MACs from the cost model, not a first-order sum)."""
        report = super().compute_report()
        ctrl = self.require()
        cost = getattr(ctrl.allocator, "cost_model", None)
        if cost is not None and ctrl.masks:
            measure = self.measure if self.measure != "units" else "params"
            report["global"] = 1.0 - cost.cost_of_masks(ctrl.masks)[measure] / cost.dense[measure]
        return report

    def _removed_params(self):
        ctrl = self.require()
        cost = getattr(ctrl.allocator, "cost_model", None)
        if cost is None or not ctrl.masks:
            return None if cost is None else (0.0, cost.dense["params"])
        return cost.dense["params"] - cost.cost_of_masks(ctrl.masks)["params"], cost.dense["params"]

    def masked_tensors(self) -> Dict[int, str]:
        if self.groups is None:
            return {}
        out = {}
        for t in self.groups.targets:
            for s in t.slices:
                if s.is_param:
                    out[id(t.tensor(s))] = s.tensor
        return out

    def floored_groups(self) -> list:
        """Groups whose kept count was raised to the allocator's floor at the last update."""
        return list(getattr(self.require().allocator, "last_floored", []))

    # -- state ----------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        state = super().state_dict()
        if self.record is not None:
            state["record"] = self.record.to_json()
        return state

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if "record" in state:
            raise ValueError("this checkpoint was written after the channels were physically removed; rebuild the "
                             "pruned model (sparsity_plugins.vision.apply_pruning_record with this record, or "
                             "load_pruned) instead of resuming pruning")
        super().load_state_dict(state)

    def __repr__(self) -> str:
        return (f"ChannelPruning(schedule={self.schedule!r}, criterion={self.criterion!r}, "
                f"allocator={self.allocator!r}, enforcement={self.enforcement!r}, measure={self.measure!r}, "
                f"round_to={self.round_to}, exclude={self.exclude!r}, name={self.name!r})")
