"""PAGCP: performance-aware global channel pruning of multi-task CNNs, as a core allocator.

Ye et al., 2023, "Performance-aware Approximation of Global Channel Pruning for Multitask
CNNs" (TPAMI 45(8), https://arxiv.org/abs/2303.11923). Global channel pruning is
approximated by *sequential greedy* layer pruning under a *performance-aware oracle*:

1. Order: the groups are visited by decreasing MACs saved when ``order_ratio`` (30 %) of
   their units alone are pruned (``order="macs"``; ``"given"``: the targets' order).
2. Oracle: group ``l`` (the ``i``-th visited) is pruned at the largest ratio ``r`` of the grid
   ``ratios`` (its lowest-saliency units first, by the criterion's scores; PAGCP's is
   :class:`~.saliency.JointSaliency`) such that for **every** task ``t``

       L_t(pruned up to l, ratio r) ≤ (1 + τ_t·δ^i) · L̂_t

   where ``L̂_t`` is the reference loss: the dense loss, raised after each committed layer
   to ``max(L̂_t, L_t(committed))`` (a local, per-layer drop), ``τ_t`` the task's threshold
   and ``δ`` (``threshold_decay``) shrinks it along the sequence. The first ratio that
   breaks one task's threshold stops the layer at the ratio before (``last_capped`` names
   that task). Ratios are tried in increasing order, each on the model already pruned at the
   committed ratios of the groups visited before.
3. FLOPs target: as soon as the network's cost (``cost_model``: the exact
   :class:`~.budget.ChannelCost` for channel groups, else the first-order
   :class:`~sparsity_core.cost.LinearCost`) is within ``(1 − s)`` of the dense cost, the
   current group keeps the largest count that meets it and the sweep ends. If a whole sweep
   ends above the budget, the threshold scale of each task that capped a group in it grows
   by ``relax``, or at once to the scale that would have admitted the ratio it refused if
   that is larger (``relax_tasks="capping"``; ``"all"``: the other tasks' grow by ``relax``
   too), and the sweep restarts from the dense model (PAGCP's rounds); ``refine`` bisection
   sweeps between the last two scales (per task, on their logs) find the smallest
   relaxation that meets the budget. After ``max_rounds`` relaxations, or a sweep that no
   task capped, a last sweep runs without thresholds (logged), so a budget the floors allow
   is always met. Relaxing only the capping tasks keeps a task near zero loss (where any
   pruning is a large *relative* increase) from loosening every other task's threshold
   with its own: the other tasks stay performance-aware.

Each probe is ``probe() -> {task: loss}`` of the model with its current weights
(:func:`~.task_probe.task_loss_probe`); the allocator zeroes the pruned units' slices for a
probe and restores them bit-exactly (:func:`~.task_probe.group_task_evaluator`). Evaluations
per sweep: at most ``len(ratios)`` per group. Built by name (``allocator="pagcp"``) without a
probe it raises ``ValueError`` when asked to allocate. :func:`~.pagcp_oneshot.pagcp_prune`
runs it one-shot and removes the channels. Departures from the paper's procedure: it
fine-tunes between pruning rounds and keeps only the layers with the least loss increase per
FLOP saved; here one call is one round that stops at the budget, and the per-task
relaxation replaces the rounds' growing thresholds.
"""
from __future__ import annotations

import logging
import math
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from sparsity_core.allocators.base import Allocator
from sparsity_core.allocators.budget import MEASURES, Budget
from sparsity_core.cost import CostModel, LinearCost
from sparsity_core.ranks import log_rank_zero
from sparsity_core.registry import ALLOCATORS
from sparsity_core.targets import Target
from sparsity_core.validation import check_int, check_range

from .pagcp_oracle import PerformanceOracle, Thresholds
from .task_probe import TaskProbe, check_slice_targets, group_task_evaluator

log = logging.getLogger(__name__)

ORDERS = ("macs", "given")
RELAX_TASKS = ("capping", "all")


def default_ratios() -> Tuple[float, ...]:
    """0.05, 0.10, ..., 0.95."""
    return tuple(round(0.05 * k, 2) for k in range(1, 20))


@ALLOCATORS.register("pagcp")
class PAGCP(Allocator):
    """Args:
        probe: ``probe() -> {task: loss}`` (see the module).
        threshold: τ, the relative loss increase allowed per layer: one float for every task
            or ``{task: τ_t}`` (tasks the probe returns and the mapping lacks use ``"*"``,
            else are not checked).
        threshold_decay: δ, τ of the ``i``-th visited group is ``τ·δ^i``.
        ratios: increasing pruning ratios tried per group, in (0, 1).
        relax: factor on the thresholds for the next sweep when one ends above the budget.
        relax_tasks: whose thresholds a failed sweep relaxes: ``"capping"`` (the tasks that
            capped a group in it) or ``"all"``.
        max_rounds: relaxed sweeps before the last sweep without thresholds.
        refine: bisection sweeps (on the log of each task's threshold scale) between the last
            scales that missed the budget and the first that met it: the smallest relaxation.
        order: ``"macs"`` or ``"given"`` (see the module); order_ratio: the ratio used to rank.
        cost_model: exact costs (``ChannelCost``); default first-order per-unit costs.
        min_keep_fraction, min_keep_units, round_to: the per-group floor and rounding.
    """

    needs_probe = True

    def __init__(self, probe: Optional[TaskProbe] = None, threshold: Thresholds = 0.05, threshold_decay: float = 1.0,
                 ratios: Optional[Sequence[float]] = None, relax: float = 2.0, relax_tasks: str = "capping",
                 max_rounds: int = 16,
                 refine: int = 3, order: str = "macs", order_ratio: float = 0.3,
                 cost_model: Optional[CostModel] = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if probe is not None and not callable(probe):
            raise ValueError(f"PAGCP probe must be a callable probe() -> {{task: loss}}, got {probe!r}")
        self.probe = probe
        self.oracle = PerformanceOracle(threshold, threshold_decay)
        ratios = default_ratios() if ratios is None else tuple(float(r) for r in ratios)
        if not ratios or any(not 0.0 < r < 1.0 for r in ratios) or list(ratios) != sorted(set(ratios)):
            raise ValueError(f"PAGCP ratios must be strictly increasing values in (0, 1), got {ratios!r}")
        self.ratios = ratios
        self.relax = check_range(relax, "PAGCP relax (the thresholds' growth between sweeps)", 1.0, math.inf,
                                 low_open=True)
        if relax_tasks not in RELAX_TASKS:
            raise ValueError(f"PAGCP relax_tasks must be one of {', '.join(RELAX_TASKS)}; got {relax_tasks!r}")
        self.relax_tasks = relax_tasks
        self.max_rounds = check_int(max_rounds, "PAGCP max_rounds", minimum=0)
        self.refine = check_int(refine, "PAGCP refine", minimum=0)
        if order not in ORDERS:
            raise ValueError(f"PAGCP order must be one of {', '.join(ORDERS)}; got {order!r}")
        self.order = order
        self.order_ratio = check_range(order_ratio, "PAGCP order_ratio", low_open=True, high_open=True)
        if cost_model is not None and not isinstance(cost_model, CostModel):
            raise ValueError(f"PAGCP cost_model must be a CostModel, got {type(cost_model).__name__}")
        self.cost_model = cost_model
        #: what the last allocation found: the largest threshold scale used (inf: none) and
        #: each task's, the number of sweeps, the task that capped each group, per-task losses,
        #: the order, evaluations
        self.last_threshold: float = float("nan")
        self.last_scales: Dict[str, float] = {}
        self.last_rounds = 0
        self.last_capped: Dict[str, str] = {}
        self.last_losses: Dict[str, float] = {}
        self.last_order: List[str] = []
        self.evaluations = 0

    # -- the entry point ------------------------------------------------------------------
    def allocate(self, targets: Sequence[Target], scores: Mapping[str, torch.Tensor], budget: Budget) -> Dict[str, int]:
        targets = list(targets)
        if budget.sparsity is None:
            raise ValueError("PAGCP needs a sparsity budget (the fraction of the measure removed)")
        if budget.measure not in MEASURES:
            raise ValueError(f"budget measure must be one of {', '.join(MEASURES)}; got {budget.measure!r}")
        if self.probe is None:
            raise ValueError("the pagcp allocator needs probe=...: a callable returning {task: calibration loss} "
                             "(e.g. PAGCP(probe=task_loss_probe(model, batches, loss_fn)))")
        check_slice_targets(targets, "PAGCP")
        missing = [t.name for t in targets if t.name not in scores]
        if missing:
            raise ValueError(f"PAGCP got no scores for {missing[:3]}")
        cost_model = self.cost_model or LinearCost(targets)
        cost = lambda keep: cost_model.cost(keep)[budget.measure]  # noqa: E731
        limit = (1.0 - budget.sparsity) * cost({})
        floors = {t.name: self.floor(t) for t in targets}
        if cost(floors) > limit * (1 + 1e-9):
            raise ValueError(f"infeasible budget: the per-group floors keep {cost(floors):.6g} {budget.measure}, "
                             f"the budget allows {limit:.6g}; lower min_keep_fraction/min_keep_units or the sparsity")
        evaluate = group_task_evaluator(targets, self.probe)
        self.evaluations = 0
        base = self._run(evaluate, {})
        order = self._order(targets, lambda keep: cost_model.cost(keep)["macs"], floors)
        self.last_order = [t.name for t in order]
        meets = lambda found: cost(found[0]) <= limit * (1 + 1e-9)  # noqa: E731
        sweep = lambda scales: self._sweep(order, scores, scales, base, evaluate, cost, limit, floors)  # noqa: E731
        scales = previous = {task: 1.0 for task in base}
        sweeps, met = 0, False
        while True:
            found = sweep(scales)
            sweeps += 1
            met, capping, needed = meets(found), set(found[1].values()), found[3]
            if met or not capping or sweeps > self.max_rounds:  # no capping task: relaxing cannot help
                break
            relaxed = set(base) if self.relax_tasks == "all" else capping
            previous, scales = scales, {t: max(v * self.relax, needed.get(t, 0.0) * (1 + 1e-9)) if t in relaxed
                                        else v for t, v in scales.items()}
        if not met:
            scales = {task: math.inf for task in base}
            found = sweep(scales)
            sweeps += 1
            why = "no task capped a group" if not capping else f"{self.max_rounds} relaxations"
            log_rank_zero(log, logging.WARNING, "PAGCP: no sweep met the budget (%s); the last one ran without "
                          "thresholds", why)
        elif sweeps > 1:  # the smallest scales that meet the budget, between the last two tried
            low, high = previous, scales
            for _ in range(self.refine):
                mid = {t: math.sqrt(low[t] * high[t]) for t in high}
                trial = sweep(mid)
                sweeps += 1
                if meets(trial):
                    high, found = mid, trial
                else:
                    low = mid
            scales = high
        keep, capped, losses, _ = found
        self.last_threshold, self.last_scales, self.last_rounds = max(scales.values(), default=1.0), scales, sweeps
        self.last_capped, self.last_losses = capped, losses
        return keep

    # -- pieces ---------------------------------------------------------------------------
    def _run(self, evaluate, masks: Mapping[str, torch.Tensor]) -> Dict[str, float]:
        self.evaluations += 1
        return evaluate(masks)

    def tau(self, task: str, position: int, scale: float) -> Optional[float]:
        """The oracle's τ_t·δ^i·scale (``None``: ``task`` is not checked)."""
        return self.oracle.tau(task, position, scale)

    def count(self, target: Target, ratio: float, floor: int) -> int:
        """Units kept when ``ratio`` of them are pruned (floor and ``round_to`` applied)."""
        n = target.num_units
        return self._round(n - int(math.floor(ratio * n + 1e-9)), floor, n)

    def _order(self, targets: List[Target], macs, floors: Mapping[str, int]) -> List[Target]:
        if self.order == "given":
            return list(targets)
        dense = macs({})
        saved = {t.name: dense - macs({t.name: self.count(t, self.order_ratio, floors[t.name])}) for t in targets}
        return sorted(targets, key=lambda t: -saved[t.name])  # stable: ties keep the given order

    def _sweep(self, order: List[Target], scores, scales: Mapping[str, float], base: Dict[str, float], evaluate, cost,
               limit: float, floors: Mapping[str, int]):
        """One greedy sweep: ``(keep, {group: capping task}, losses, {task: needed scale})``, the
        needed scale being the smallest that would have admitted the ratio a task refused."""
        keep = {t.name: t.num_units for t in order}
        masks: Dict[str, torch.Tensor] = {}
        reference, current, capped, needed = dict(base), dict(base), {}, {}
        select = lambda t, k: t.layout.select(scores[t.name], k, t.shape)  # noqa: E731
        unconstrained = all(math.isinf(v) for v in scales.values())
        for i, t in enumerate(order):
            committed, committed_losses = t.num_units, current
            for k in self._candidates(t, floors[t.name], unconstrained):
                if k >= committed:
                    continue
                losses = self._run(evaluate, {**masks, t.name: select(t, k)})
                worst = self.oracle.violation(losses, reference, i, scales)
                if worst is not None:
                    capped[t.name] = worst
                    unit, ref = self.tau(worst, i, 1.0), reference[worst]
                    if ref > 0:  # (L / L̂ − 1) / (τ_t·δ^i): the scale at which this ratio passes
                        needed[worst] = max(needed.get(worst, 0.0), (losses[worst] / ref - 1.0) / unit)
                    break
                previous, committed, committed_losses = committed, k, losses
                if cost({**keep, t.name: k}) <= limit:
                    keep[t.name] = self._fit(t, k, previous, keep, cost, limit, floors[t.name])
                    if keep[t.name] != k:
                        committed_losses = self._run(evaluate, {**masks, t.name: select(t, keep[t.name])})
                    return keep, capped, committed_losses, needed
            keep[t.name] = committed
            if committed < t.num_units:
                masks[t.name] = select(t, committed)
            current = committed_losses
            reference = {task: max(reference.get(task, v), v) for task, v in current.items()}
        return keep, capped, current, needed

    def _candidates(self, target: Target, floor: int, unconstrained: bool) -> List[int]:
        """Kept counts of the ratio grid (decreasing); the floor too in the sweep without thresholds."""
        counts = [self.count(target, r, floor) for r in self.ratios]
        return counts + [floor] if unconstrained else counts

    def _fit(self, target: Target, k: int, previous: int, keep: Mapping[str, int], cost, limit: float,
             floor: int) -> int:
        """The largest count in ``[k, previous)`` whose cost meets ``limit`` (``cost(k)`` does;
        the cost falls with fewer units)."""
        lo, hi = k, previous
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if cost({**keep, target.name: mid}) <= limit:
                lo = mid
            else:
                hi = mid
        best = self._round(lo, floor, target.num_units)
        while best > k and cost({**keep, target.name: best}) > limit:
            best = max(k, best - max(1, self.round_to))
        return best

    def __repr__(self) -> str:
        return (f"PAGCP(probe={'set' if self.probe is not None else None}, threshold={self.oracle.threshold!r}, "
                f"threshold_decay={self.oracle.decay}, ratios={len(self.ratios)} from {self.ratios[0]} to "
                f"{self.ratios[-1]}, relax={self.relax}, max_rounds={self.max_rounds}, refine={self.refine}, "
                f"order={self.order!r}, "
                f"min_keep_fraction={self.min_keep_fraction}, min_keep_units={self.min_keep_units})")
