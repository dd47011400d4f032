"""``HashGridPruning``: HollowNeRF-style pruning of a hash encoding, as a core program.

    enc = HashEncoding(dim=3, levels=16, log2_table_size=19, saliency_resolution=32)
    trainer = pl.Trainer(callbacks=[SparsityCallback(programs=[
        HashGridPruning(Cubic(start_step=500, end_step=3000, final_sparsity=0.65))])])

Xie et al., 2023, "HollowNeRF: Pruning Hashgrid-Based NeRFs with Trainable Collision
Mitigation" (https://arxiv.org/abs/2308.10122). The LightningModule holds a
:class:`~.hashgrid.HashEncoding` with a saliency grid ``G`` (``saliency_resolution=``). Then:

- targets: one core :class:`~sparsity_core.targets.Target` per level, its table ``tables.<l>``
  with ``Rows`` units: a unit is a hash entry (``F`` parameters), so the schedule's sparsity
  is the fraction of hash-table parameters removed (``measure="params"``);
- criterion (:class:`SaliencyUsage`): an entry's score is its saliency-weighted use
  ``Σ_x s(x)·w_e(x)`` by the training points since the last update (``s`` the gate, ``w_e``
  the interpolation weight); entries no salient point touches score 0 and go first;
- allocator: the core's (global ranking by default) turns the schedule's budget into kept
  entries per level; enforcement ``hard`` zeroes pruned entries, their gradients and Adam moments;
- ADMM (:class:`~.hashgrid_admm.SaliencyADMM`): the penalty gradient is added to ``G.grad``
  before each optimizer step, ``z`` and ``u`` are updated every ``admm_every`` steps; the
  saliency budget follows ``saliency`` (default: the hash schedule itself, i.e. the fraction of
  saliency mass kept equals the fraction of hash parameters kept);
- end of fit (``finalize=True``): pruned entries are removed from storage
  (:meth:`~.hashgrid.HashEncoding.remove_entries`; the output does not change; the tables'
  optimizer moments follow the kept rows) and :attr:`HashGridPruning.result` reports the
  parameters and bytes actually kept.

``state_dict`` holds the core controller (masks, usage sums, schedule position) and the ADMM
state ``z``, ``u``, so a resumed run continues identically.
"""
from __future__ import annotations

import logging
from typing import Any, Dict, List, Optional, Union

import torch
from torch import nn

from sparsity_core.allocators.base import Allocator
from sparsity_core.allocators.global_rank import GlobalRank
from sparsity_core.criteria.base import AccumulatingCriterion, ScoreContext
from sparsity_core.layouts import Rows
from sparsity_core.mask_program import MaskProgram, ScheduleSpec
from sparsity_core.program import Host, attached
from sparsity_core.ranks import log_rank_zero
from sparsity_core.registry import CRITERIA, PROGRAMS
from sparsity_core.schedules.base import Schedule
from sparsity_core.schedules.function import as_schedule
from sparsity_core.targets import Target
from sparsity_core.validation import check_int

from .hashgrid import HashEncoding
from .hashgrid_admm import SaliencyADMM

log = logging.getLogger(__name__)


@CRITERIA.register("saliency_usage")
class SaliencyUsage(AccumulatingCriterion):
    """Score of a hash entry ``e``: mean over optimizer steps of ``Σ_x s(x)·w_e(x)``, the
    gate-weighted interpolation weight with which the step's training points read it.

    Statistics are recorded by the encoding's training forwards (``record_usage``) and
    collected here once per optimizer step; they are plain tensors (:meth:`state_dict`).
    """

    observes = "forward"  # statistics of training forwards, collected once per optimizer step

    def __init__(self, relative: bool = True) -> None:
        super().__init__()
        self.relative = relative
        self.encoding: Optional[HashEncoding] = None
        self.level_of: Dict[str, int] = {}

    def bind(self, encoding: HashEncoding, level_of: Dict[str, int]) -> None:
        self.encoding, self.level_of = encoding, dict(level_of)

    def observe(self, target: Target, context: ScoreContext) -> None:
        if self.encoding is None:
            raise RuntimeError("SaliencyUsage is not bound to a HashEncoding")
        usage = self.encoding.take_usage(self.level_of[target.name])
        if usage is None:
            return
        self._accumulate(target.name, usage.float())

    def score(self, target: Target, context: ScoreContext) -> torch.Tensor:
        if target.name not in self._sums:
            raise ValueError(f"no usage recorded for {target.name!r}: the encoding must run training forwards "
                             "(module.train(), record_usage=True) before an update step")
        usage = self._sums[target.name] / self._counts[target.name]
        if not self.relative:
            return usage
        total = usage.sum()
        return usage * (usage.numel() / total) if total > 0 else usage

    def __repr__(self) -> str:
        return f"SaliencyUsage(relative={self.relative})"


def find_encoding(module: torch.nn.Module, name: Optional[str] = None):
    """``(name, HashEncoding)`` of ``module``: the one named ``name``, or the only one."""
    found = [(n, m) for n, m in module.named_modules() if isinstance(m, HashEncoding)]
    if name is not None:
        match = [(n, m) for n, m in found if n == name]
        if not match:
            raise ValueError(f"no HashEncoding named {name!r}; the module has {[n for n, _ in found] or 'none'}")
        return match[0]
    if len(found) != 1:
        raise ValueError(f"expected exactly one HashEncoding in {type(module).__name__}, found "
                         f"{[n for n, _ in found] or 'none'}; pass encoding='<module name>'")
    return found[0]


@PROGRAMS.register("hashgrid")
class HashGridPruning(MaskProgram):
    """Prune the hash entries of a gated :class:`~.hashgrid.HashEncoding` to a budget.

    Args:
        schedule: sparsity of the hash-table parameters (fraction removed): a core
            :class:`Schedule` starting at step >= 1 (usage is measured on training steps),
            a callable ``step -> sparsity``, or a float (then pruned once at step 1).
        saliency: sparsity of the saliency mass for the ADMM budget ``C = (1 − s)·|G|``: a
            float or a Schedule; default: ``schedule``.
        rho: ADMM penalty weight ρ (see :class:`~.hashgrid_admm.SaliencyADMM`).
        admm_every: z step and dual ascent every this many optimizer steps.
        allocator: ``"global"`` (rank entries of all levels together), ``"uniform"`` (the same
            fraction per level) or an :class:`Allocator`; default ``GlobalRank(min_keep_fraction=0.01)``.
        encoding: module name of the encoding (default: the only ``HashEncoding``).
        update_every: recompute the entry masks every this many optimizer steps within the schedule.
        finalize: remove the pruned entries from storage at the end of fit.
    """

    name = "hashgrid"

    def __init__(self, schedule: ScheduleSpec = 0.65, saliency: Union[Schedule, float, None] = None,
                 rho: float = 1e-5, admm_every: int = 16, allocator: Union[str, Allocator, None] = None,
                 encoding: Optional[str] = None, update_every: int = 50, finalize: bool = True,
                 name: Optional[str] = None) -> None:
        check_int(admm_every, "admm_every", 1)
        if encoding is not None and not isinstance(encoding, str):
            raise ValueError(f"encoding must be the module name of a HashEncoding (a str) or None, got {encoding!r}")
        super().__init__(schedule=schedule, criterion=SaliencyUsage(),
                         allocator=allocator if allocator is not None else GlobalRank(min_keep_fraction=0.01),
                         enforcement="hard", update_every=update_every, measure="params", finalize=finalize,
                         name=name, start_at=1)
        self.admm = SaliencyADMM(sparsity=self.schedule if saliency is None else as_schedule(saliency, at_step=1),
                                 rho=rho, every=admm_every)
        self.encoding_name = encoding
        self.encoding: Optional[HashEncoding] = None
        self.admm_state: Optional[Dict[str, torch.Tensor]] = None
        self.admm_log: Dict[str, float] = {}
        self.result: Dict[str, float] = {}

    def state_id(self) -> str:
        return f"{self.name}(encoding={self.encoding_name!r})"

    # -- the program ----------------------------------------------------------------------
    def discover(self, host: Host) -> List[Target]:
        name, enc = find_encoding(host.model, self.encoding_name)
        if enc.saliency is None:
            raise ValueError(f"HashGridPruning needs a saliency grid on {name or 'the encoding'!r}: build it with "
                             "HashEncoding(..., saliency_resolution=R)")
        if any(enc.compacted(lv) for lv in range(enc.levels)):
            raise ValueError(f"{name!r} already had entries removed; prune a dense encoding")
        prefix = f"{name}." if name else ""
        targets: List[Target] = [Target(name=f"{prefix}tables.{lv}", layout=Rows(0), param=enc.tables[lv],
                                        module_name=name) for lv in range(enc.levels)]
        self.criterion.bind(enc, {t.name: lv for lv, t in enumerate(targets)})
        return targets

    def attach(self, host: Host) -> None:
        super().attach(host)
        if self.encoding is None:
            self.encoding = find_encoding(host.model, self.encoding_name)[1]
            self.encoding.record_usage = True
            self.admm_state = self.admm.initialize_state(self.encoding.saliency)

    def detach(self) -> None:
        if self.encoding is not None:
            self.encoding.record_usage = False
        self.encoding, self.admm_state = None, None
        super().detach()

    def trained_parameters(self) -> Dict[str, nn.Parameter]:
        return {"saliency.logits": self._enc().saliency.logits}

    def before_optimizer_step(self, optimizer) -> None:
        grid = self._enc().saliency
        owned = {id(p) for g in optimizer.param_groups for p in g["params"]}
        if id(grid.logits) in owned and grid.logits.grad is not None:
            self.admm.penalty_grad_(grid, self.admm_state)
        super().before_optimizer_step(optimizer)

    def after_optimizer_step(self, step: int) -> None:
        super().after_optimizer_step(step)
        info = self.admm.step(self._enc().saliency, self.admm_state, step)
        if info:
            self.admm_log = info

    def report(self, detail: bool = False) -> Dict[str, float]:
        out = super().report(detail)
        out.update({f"saliency_{k}": v for k, v in self.admm_log.items()})
        return out

    def finalize(self) -> None:
        self.remove_now()

    def remove_now(self) -> Dict[str, float]:
        """Make the masks permanent and remove the pruned entries from storage now (the
        optimizers' moments of the tables keep their kept rows)."""
        ctrl, enc = self.require(), self._enc()
        if ctrl.finalized:
            raise RuntimeError("the hash entries were already removed")
        ctrl.finalize()  # pruned rows are exactly zero
        masks = [ctrl.masks.get(t.name) if ctrl.masks else None for t in ctrl.targets]
        enc.record_usage = False
        storage = enc.remove_entries(masks, optimizers=ctrl.optimizers)
        self.result = {**storage, "hash_sparsity_target": self.schedule.value(ctrl.step),
                       "saliency_mass": float(enc.saliency.mass().detach()), "saliency_capacity": self.admm.capacity(
                           enc.saliency, max(ctrl.step, 0))}
        log_rank_zero(log, logging.INFO, "hash grid: kept %d of %d entries (%.1f%%), %d index bytes", storage["entries_kept"],
                 storage["entries"], 100 * storage["kept_fraction"], storage["index_bytes"])
        return self.result

    # -- state ----------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        state = super().state_dict()
        state["admm"] = {k: v.detach().cpu().clone() for k, v in self.admm_state.items()}
        return state

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if "admm" not in state:
            raise ValueError(f"not a HashGridPruning state: keys {sorted(state)}")
        admm = {k: v.clone() for k, v in state["admm"].items()}
        self.admm._check(self._enc().saliency, admm)
        super().load_state_dict(state)
        self.admm_state = admm

    def _enc(self) -> HashEncoding:
        return attached(self.encoding, "HashGridPruning")

    def __repr__(self) -> str:
        return (f"HashGridPruning(schedule={self.schedule!r}, admm={self.admm!r}, allocator={self.allocator!r}, "
                f"encoding={self.encoding_name!r}, update_every={self.update_every}, name={self.name!r})")
