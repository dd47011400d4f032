"""Greedy knapsack: remove what costs most for the least importance, until the budget fits.

:func:`greedy_removal` is the engine: from a state, while its cost is above ``goal``, take the
allowed move with the smallest ``value / saving`` (importance lost per unit of cost saved;
ties: the larger saving). Moves that would bring the cost below ``floor`` (overshoot) are
taken only when no other move is left, and then the one that overshoots least. It knows
nothing of what a state is: GTSP's plans (close a head, a layer, a token fraction) and
:class:`GreedyKnapsack`'s kept counts both run on it.

:class:`GreedyKnapsack` is the allocator over targets: a move removes the lowest-scoring
kept unit of one target, its saving measured by a cost model (any
:class:`~sparsity_core.cost.CostModel`: the marginal saving of a unit may depend on what else
is kept), its value that unit's score. With the first-order :class:`~sparsity_core.cost.LinearCost`
this ranks units by score per unit cost, the classic greedy solution of the fractional
knapsack (Dantzig, 1957).
"""
from __future__ import annotations

from typing import Callable, Dict, Iterable, Mapping, Optional, Sequence, Tuple, TypeVar

import torch

from ..cost import CostModel, LinearCost
from ..registry import ALLOCATORS
from ..targets import Target
from ..validation import check_int
from .base import Allocator
from .budget import Budget

S = TypeVar("S")
M = TypeVar("M")


class InfeasibleBudget(ValueError):
    """No allowed move is left and the cost is still above the goal."""


def greedy_removal(state: S, cost: float, goal: float, moves: Callable[[S], Iterable[M]],
                   apply: Callable[[S, M], Optional[Tuple[S, float]]], value: Callable[[S, M, S], float],
                   floor: Optional[float] = None, tolerance: float = 0.0) -> Tuple[S, float]:
    """Greedy removal from ``state`` (costing ``cost``) until the cost is at most ``goal``.

    ``moves(state)`` lists the allowed moves; ``apply(state, move)`` returns the new state and
    the cost it saves (``None``: the move does nothing here); ``value(state, move, new)`` the
    importance the move loses. Returns the final state and its cost; raises
    :class:`InfeasibleBudget` (nothing changed for the caller: states are not mutated) when
    the moves run out first.
    """
    while cost > goal + tolerance:
        best = fallback = None
        for move in moves(state):
            step = apply(state, move)
            if step is None:
                continue
            new, saving = step
            if saving <= 0:
                continue
            after = cost - saving
            if floor is None or after >= floor - tolerance:
                key = (value(state, move, new) / saving, -saving)
                if best is None or key < best[0]:
                    best = (key, new, after)
            elif fallback is None or after > fallback[0]:
                fallback = (after, new, after)
        pick = best or fallback
        if pick is None:
            raise InfeasibleBudget(f"no move is left: the cost is {cost:.6g}, the goal {goal:.6g}")
        _, state, cost = pick
    return state, cost


@ALLOCATORS.register("greedy_knapsack")
class GreedyKnapsack(Allocator):
    """Kept units per target by :func:`greedy_removal` (see the module).

    Args:
        cost_model: how removing units saves cost (default: :class:`LinearCost` of the targets).
        chunk: units removed per move (larger is faster, coarser).
    """

    def __init__(self, cost_model: Optional[CostModel] = None, chunk: int = 1, min_keep_fraction: float = 0.0,
                 min_keep_units: int = 1) -> None:
        super().__init__(min_keep_fraction=min_keep_fraction, min_keep_units=min_keep_units)
        self.cost_model = cost_model
        self.chunk = check_int(chunk, "chunk", minimum=1)

    def allocate(self, targets: Sequence[Target], scores: Mapping[str, torch.Tensor], budget: Budget) -> Dict[str, int]:
        if budget.sparsity is None:
            raise ValueError("the greedy knapsack needs a sparsity budget (fraction of the measure removed)")
        model = self.cost_model or LinearCost(targets)
        measure = budget.measure
        order = {t.name: torch.sort(scores[t.name].reshape(-1).double()).values for t in targets}
        # a layout that fixes the kept count (N:M) keeps it: no move on that target
        fixed = {t.name: t.layout.fixed_keep(t.shape) for t in targets if t.layout.fixed_keep(t.shape) is not None}
        floors = {t.name: fixed.get(t.name, self.floor(t)) for t in targets}
        keep = {t.name: fixed.get(t.name, t.num_units) for t in targets}

        def moves(k: Dict[str, int]):
            return [t.name for t in targets if k[t.name] > floors[t.name]]

        def apply(k: Dict[str, int], name: str):
            new = dict(k)
            new[name] = max(floors[name], k[name] - self.chunk)
            return new, model.cost(k)[measure] - model.cost(new)[measure]

        def value(k: Dict[str, int], name: str, new: Dict[str, int]) -> float:
            n = len(order[name])  # kept = the k highest scores; the move drops the lowest of them
            return float(order[name][n - k[name]:n - new[name]].sum())

        dense = model.dense[measure]
        try:
            keep, _ = greedy_removal(keep, model.cost(keep)[measure], (1.0 - budget.sparsity) * dense, moves, apply,
                                     value, tolerance=1e-9 * max(dense, 1.0))
        except InfeasibleBudget as err:
            raise ValueError(f"infeasible budget: the per-target floors (and N:M counts) keep more than "
                             f"{1 - budget.sparsity:.1%} of the {measure} ({err})") from None
        return keep

    def __repr__(self) -> str:
        return f"GreedyKnapsack(chunk={self.chunk}, min_keep_fraction={self.min_keep_fraction})"
