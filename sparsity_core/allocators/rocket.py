"""Multiple-choice knapsack over per-layer sparsity levels (ROCKET: Ali et al., 2026, "ROCKET:
Rapid Optimization via Calibration-guided Knapsack Enhanced Truncation for Efficient Model
Compression", https://arxiv.org/abs/2602.11008; its layer-wise allocation step).

Every target ``t`` offers candidate levels ``ℓ`` (sparsities; kept units
``k_tℓ = max(floor_t, ⌊(1 − ℓ)·n_t⌋)``), each with a kept cost ``w_tℓ = c_t·k_tℓ`` in the
budget's measure and a measured reconstruction error ``e_tℓ``. Exactly one level per target
is chosen to

    minimise Σ_t e_t,ℓ(t)    subject to    Σ_t w_t,ℓ(t) ≤ B

(a multiple-choice knapsack), solved exactly by dynamic programming over the budget:
``E_t(b) = min_ℓ E_{t−1}(b − q_tℓ) + e_tℓ``, ``E_0 ≡ 0``, then backtracking from ``B``.

Discretisation: costs are measured above each target's cheapest level
(``w'_tℓ = w_tℓ − min_ℓ w_tℓ``, capacity ``B' = B − Σ_t min_ℓ w_tℓ``). When every ``w'`` is an
integer and ``B' ≤ resolution`` the DP runs on the integers and is exact. Otherwise costs are
rounded *up* to a grid of ``B'/resolution``, ``q_tℓ = ⌈w'_tℓ/δ⌉``: every chosen combination
then fits the true budget, and it is optimal for the rounded costs (an optimum using the
last ``< T·δ`` of the budget can be missed). Time ``O(T · L · resolution)``.

The DP's combination leaves some budget unspent (levels are discrete); with ``fill=True``
(default) it goes to the best remaining units by score per unit cost, as global ranking
would, so the kept counts spend the budget (the suite's rounding rule, as every allocator).

Errors ``e_tℓ``:

- ``errors`` given: a mapping ``{target name: [e per level]}`` or a callable
  ``errors(target, keeps) -> [e per kept count]`` (e.g. prune the layer at each count with
  the method of choice and measure ``‖WX − ŴX‖²`` on calibration inputs, as ROCKET does).
- ``activations`` given with Gram matrices (``ActivationObserver(gram=True)``): the exact
  output reconstruction error of keeping the ``k`` best-scoring weights,
  ``‖(W − Ŵ)X‖²_F = Σ_i Δw_i (XᵀX) Δw_iᵀ``; without Gram matrices its diagonal,
  ``Σ_pruned W_ij² ‖X_j‖²``.
- otherwise ``Σ_pruned s_u²`` from the scores: with Wanda's ``s = |W|·‖X‖`` that is the same
  diagonal approximation of the reconstruction error.

A NaN/Inf error raises ``ValueError`` (nothing allocated, the model untouched); when even the
cheapest levels exceed the budget, :class:`~sparsity_core.allocators.knapsack.InfeasibleBudget`
(a ``ValueError``) names the smallest reachable cost and the budget.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch

from ..criteria.wanda import input_scale
from ..registry import ALLOCATORS
from ..targets import Target
from ..validation import check_int, check_sparsity
from .base import Allocator
from .budget import kept_count, unit_cost
from .knapsack import InfeasibleBudget
from .ratios import fill_by_rank, sorted_scores

ErrorSpec = Union[None, Mapping[str, Sequence[float]], Callable[[Target, List[int]], Sequence[float]]]

DEFAULT_LEVELS = tuple(round(0.05 * i, 2) for i in range(20))  # 0, 0.05, ..., 0.95


def multiple_choice_knapsack(costs: Sequence[Sequence[float]], errors: Sequence[Sequence[float]], capacity: float,
                             resolution: int = 2000) -> Tuple[List[int], float]:
    """One option per group minimising the summed error with summed cost ``≤ capacity``.

    Returns ``(chosen option index per group, total error)``; raises :class:`InfeasibleBudget`
    when the cheapest options already exceed ``capacity``. See the module for the
    discretisation (exact for integer costs when the capacity above the cheapest options is
    at most ``resolution``).
    """
    check_int(resolution, "knapsack resolution", minimum=1)
    if len(costs) != len(errors):
        raise ValueError(f"{len(costs)} cost lists but {len(errors)} error lists")
    w = [torch.tensor([float(c) for c in cs], dtype=torch.float64) for cs in costs]
    e = [torch.tensor([float(x) for x in es], dtype=torch.float64) for es in errors]
    for i, (wi, ei) in enumerate(zip(w, e)):
        if wi.numel() == 0 or wi.numel() != ei.numel():
            raise ValueError(f"group {i}: {wi.numel()} costs and {ei.numel()} errors (need the same, at least one)")
        if not torch.isfinite(ei).all():
            raise ValueError(f"group {i}: the reconstruction errors contain NaN/Inf; nothing allocated")
        if not torch.isfinite(wi).all() or (wi < 0).any():
            raise ValueError(f"group {i}: costs must be finite and >= 0")
    if not w:
        return [], 0.0
    base = sum(float(wi.min()) for wi in w)
    tol = 1e-9 * max(1.0, abs(capacity))
    if base > capacity + tol:
        raise InfeasibleBudget(f"no combination of levels fits: the cheapest levels keep {base:.6g} but the budget "
                               f"allows {capacity:.6g}")
    extra = [wi - wi.min() for wi in w]
    room = max(0.0, capacity - base)
    integral = all(bool(torch.all(x == torch.round(x))) for x in extra)
    if integral and room + tol < resolution + 1:
        delta, bins = 1.0, int(math.floor(room + tol))
    else:
        # bins span the room plus the tolerance, as the integral case's floor(room + tol) does
        delta, bins = ((room + tol) / resolution if room > 0 else 1.0), (resolution if room > 0 else 0)
    q = [torch.ceil(x / delta - 1e-9).clamp_min(0).long() for x in extra]
    inf = float("inf")
    best = torch.zeros(bins + 1, dtype=torch.float64)  # E_0(b) = 0: no group yet
    choice = torch.empty(len(w), bins + 1, dtype=torch.long)
    for g in range(len(w)):
        new = torch.full((bins + 1,), inf, dtype=torch.float64)
        arg = torch.zeros(bins + 1, dtype=torch.long)
        for opt in range(len(q[g])):
            shift = int(q[g][opt])
            if shift > bins:
                continue
            cand = torch.full((bins + 1,), inf, dtype=torch.float64)
            cand[shift:] = best[: bins + 1 - shift] + e[g][opt]
            better = cand < new
            new = torch.where(better, cand, new)
            arg = torch.where(better, torch.full_like(arg, opt), arg)
        best, choice[g] = new, arg
    if not math.isfinite(float(best[bins])):
        raise InfeasibleBudget(f"no combination of levels fits the budget {capacity:.6g}")
    picks, b = [0] * len(w), bins
    for g in range(len(w) - 1, -1, -1):
        opt = int(choice[g, b])
        picks[g] = opt
        b -= int(q[g][opt])
    total = float(sum(float(e[g][picks[g]]) for g in range(len(w))))
    return picks, total


@ALLOCATORS.register("knapsack")
@ALLOCATORS.register("rocket")
class Knapsack(Allocator):
    """Args:
        levels: candidate sparsities per target (default 0, 0.05, ..., 0.95).
        errors: measured errors per level (a mapping) or a callable (see the module).
        activations: input statistics for the reconstruction error (see the module).
        resolution: budget grid of the DP (see the module).
        fill: spend the DP's leftover budget on the best remaining units.
        min_keep_fraction, min_keep_units, round_to: the per-target floor (:class:`Allocator`).
    """

    uses_activations = True

    def __init__(self, levels: Optional[Sequence[float]] = None, errors: ErrorSpec = None,
                 activations: Optional[Mapping[str, Any]] = None, resolution: int = 2000, fill: bool = True,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        levels = DEFAULT_LEVELS if levels is None else levels
        if isinstance(levels, (str, bytes)) or not hasattr(levels, "__iter__"):
            raise ValueError(f"knapsack levels must be a sequence of sparsities in [0, 1), got {levels!r}")
        self.levels = tuple(sorted({check_sparsity(x, "knapsack level") for x in levels}))
        if not self.levels:
            raise ValueError("knapsack levels must hold at least one sparsity in [0, 1)")
        if errors is not None and not (callable(errors) or isinstance(errors, Mapping)):
            raise ValueError(f"knapsack errors must be a mapping or a callable, got {errors!r}")
        if activations is not None and not isinstance(activations, Mapping):
            raise ValueError(f"knapsack activations must map target names to input statistics, got {activations!r}")
        self.errors, self.activations = errors, activations
        self.resolution = check_int(resolution, "knapsack resolution", minimum=1)
        if not isinstance(fill, bool):
            raise ValueError(f"knapsack fill must be True or False, got {fill!r}")
        self.fill = fill
        #: the chosen level (sparsity) per target and the DP's total error, of the last allocation
        self.last_levels: Dict[str, float] = {}
        self.last_error: float = float("nan")

    def candidate_keeps(self, target: Target, floor: int) -> List[int]:
        return [max(floor, kept_count(target.num_units, s)) for s in self.levels]

    # -- reconstruction errors ---------------------------------------------------------------
    def level_errors(self, target: Target, keeps: List[int], ordered: torch.Tensor,
                     scores: torch.Tensor) -> List[float]:
        if isinstance(self.errors, Mapping):
            if target.name not in self.errors:
                raise ValueError(f"knapsack errors has no entry for target {target.name!r}")
            out = [float(x) for x in self.errors[target.name]]
            if len(out) != len(self.levels):
                raise ValueError(f"knapsack errors of {target.name!r}: {len(out)} values for {len(self.levels)} levels")
            return out
        if callable(self.errors):
            out = [float(x) for x in self.errors(target, list(keeps))]
            if len(out) != len(keeps):
                raise ValueError(f"knapsack errors({target.name!r}) returned {len(out)} values for {len(keeps)} levels")
            return out
        stats = None if self.activations is None else self.activations.get(target.name)
        if stats is not None and stats.rows and target.param is not None and target.param.dim() == 2 \
                and target.layout.num_units(target.shape) == target.param.numel():
            return self._activation_errors(target, keeps, scores, stats)
        sq = ordered.pow(2)  # Σ over pruned units of s² = total − the k best
        tail = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(sq, 0)])
        total = float(tail[-1])
        return [total - float(tail[k]) for k in keeps]

    @staticmethod
    def _activation_errors(target: Target, keeps: List[int], scores: torch.Tensor, stats: Any) -> List[float]:
        w = target.read().double().cpu()
        order = torch.argsort(scores.reshape(-1).double().cpu(), descending=True, stable=True)
        gram = None if stats.gram is None else stats.gram.double().cpu()
        diag = stats.sq_sum.double().cpu()
        scale = input_scale(target, w, diag)  # ‖X_j‖² broadcast over the rows
        out = []
        for k in keeps:
            pruned = torch.ones(w.numel(), dtype=torch.bool)
            pruned[order[:k]] = False
            delta = torch.where(pruned.reshape(w.shape), w, torch.zeros_like(w))
            if gram is not None:
                out.append(float(((delta @ gram) * delta).sum()))
            else:
                out.append(float((delta.pow(2) * scale).sum()))
        return out

    # -- allocation ---------------------------------------------------------------------------
    def distribute(self, targets: Sequence[Target], scores: Mapping[str, torch.Tensor], keep_cost: float,
                   measure: str, floors: Mapping[str, int]) -> Dict[str, int]:
        ordered = sorted_scores(targets, scores)
        keeps, costs, errors = [], [], []
        for t in targets:
            ks = self.candidate_keeps(t, floors[t.name])
            es = self.level_errors(t, ks, ordered[t.name], scores[t.name])
            bad = [self.levels[i] for i, x in enumerate(es) if not math.isfinite(x)]
            if bad:
                raise ValueError(f"knapsack: the reconstruction error of {t.name!r} is NaN/Inf at sparsity "
                                 f"{bad[0]:g}; nothing allocated, the model is untouched")
            keeps.append(ks)
            costs.append([unit_cost(t, measure) * k for k in ks])
            errors.append(es)
        try:
            picks, total = multiple_choice_knapsack(costs, errors, keep_cost, self.resolution)
        except InfeasibleBudget as err:
            raise InfeasibleBudget(f"knapsack: {err} ({measure}; levels up to sparsity {max(self.levels):g})") from None
        keep = {t.name: keeps[i][picks[i]] for i, t in enumerate(targets)}
        self.last_levels = {t.name: self.levels[picks[i]] for i, t in enumerate(targets)}
        self.last_error = total
        if self.fill:
            spent = sum(unit_cost(t, measure) * keep[t.name] for t in targets)
            keep = fill_by_rank(targets, scores, keep, keep_cost - spent, measure, ordered)
        return keep

    def __repr__(self) -> str:
        return (f"Knapsack(levels={len(self.levels)} in [{self.levels[0]:g}, {self.levels[-1]:g}], "
                f"errors={'given' if self.errors is not None else None}, "
                f"activations={'bound' if self.activations is not None else None}, resolution={self.resolution}, "
                f"fill={self.fill}, min_keep_fraction={self.min_keep_fraction}, min_keep_units={self.min_keep_units})")
