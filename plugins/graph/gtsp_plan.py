"""GTSP budget: which layers, heads and token fractions to keep for a FLOPs target.

A :class:`GTSPPlan` is plain data: per layer whether it is open, which heads it keeps and
the fraction ``ρ`` of each graph's nodes it processes. :func:`allocate` grows a plan
(closed units stay closed) until its FLOPs ``F`` satisfy ``F ≤ (1 − s)·F_dense`` for the
scheduled fraction ``s``, with the core's greedy knapsack
(:func:`~sparsity_core.allocators.knapsack.greedy_removal`): among the allowed moves (close
one head, close one layer, lower one layer's ``ρ`` by ``token_step``) it takes the one with
the smallest ``I_u / ΔF_u``, where ``I_u`` is the Taylor importance of the unit (loss
change, comparable across kinds; for a token move the per-node importance times the nodes
it drops) and ``ΔF_u`` the FLOPs it saves under the current plan. A token move lowers ``ρ``
by ``token_step`` until at least one node of the calibration graphs is dropped.
Moves that would remove more than ``ceiling`` of the dense FLOPs are taken only when no
other move is left, and then the one that overshoots least.

Limits: at most ``max_heads`` of all heads and ``max_layers`` of all layers closed (so at
least one head and one layer always remain), ``ρ ≥ min_token_keep`` and every graph keeps
at least one node per layer.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from sparsity_core.allocators.knapsack import InfeasibleBudget, greedy_removal
from sparsity_core.cost import CostModel

from .gtsp_flops import LayerCost

KINDS = ("tokens", "heads", "layers")


@dataclass
class GTSPPlan:
    layer_open: List[bool]
    head_keep: List[List[bool]]
    token_keep: List[float]

    @classmethod
    def dense(cls, heads: Sequence[int]) -> "GTSPPlan":
        return cls([True] * len(heads), [[True] * h for h in heads], [1.0] * len(heads))

    def copy(self) -> "GTSPPlan":
        return GTSPPlan(list(self.layer_open), [list(h) for h in self.head_keep], list(self.token_keep))

    def state(self) -> dict:
        return {"layer_open": list(self.layer_open), "head_keep": [list(h) for h in self.head_keep],
                "token_keep": list(self.token_keep)}

    @classmethod
    def from_state(cls, state: dict) -> "GTSPPlan":
        return cls([bool(o) for o in state["layer_open"]], [[bool(k) for k in h] for h in state["head_keep"]],
                   [float(r) for r in state["token_keep"]])

    @property
    def heads_closed(self) -> int:
        return sum(not k for h in self.head_keep for k in h)

    @property
    def layers_closed(self) -> int:
        return sum(not o for o in self.layer_open)

    def heads_in_open_layers(self) -> int:
        return sum(sum(h) for h, o in zip(self.head_keep, self.layer_open) if o)

    def contains(self, other: "GTSPPlan") -> bool:
        """Whether every unit closed in ``other`` is closed here too (plans only shrink)."""
        return (all(o or not p for o, p in zip(other.layer_open, self.layer_open))
                and all(k or not m for a, b in zip(other.head_keep, self.head_keep) for k, m in zip(a, b))
                and all(r <= q + 1e-9 for r, q in zip(self.token_keep, other.token_keep)))


@dataclass
class Limits:
    kinds: Tuple[str, ...] = KINDS
    max_heads: float = 0.5
    max_layers: float = 0.5
    min_token_keep: float = 0.5
    token_step: float = 0.1


Move = Tuple  # ("head", l, h) | ("layer", l) | ("tokens", l)


def moves(plan: GTSPPlan, limits: Limits) -> List[Move]:
    """Moves allowed from ``plan`` by the limits."""
    out: List[Move] = []
    total_heads = sum(len(h) for h in plan.head_keep)
    n_layers = len(plan.layer_open)
    heads_on = "heads" in limits.kinds
    for layer, is_open in enumerate(plan.layer_open):
        if not is_open:
            continue
        if heads_on and plan.heads_closed + 1 <= math.floor(limits.max_heads * total_heads + 1e-9) \
                and plan.heads_in_open_layers() >= 2:
            out += [("head", layer, h) for h, k in enumerate(plan.head_keep[layer]) if k]
        if "layers" in limits.kinds and plan.layers_closed + 1 <= math.floor(limits.max_layers * n_layers + 1e-9):
            left_heads = plan.heads_in_open_layers() - sum(plan.head_keep[layer])
            if not heads_on or left_heads >= 1:
                out.append(("layer", layer))
        if "tokens" in limits.kinds and plan.token_keep[layer] - limits.token_step >= limits.min_token_keep - 1e-9:
            out.append(("tokens", layer))
    return out


def apply_move(plan: GTSPPlan, move: Move, limits: Limits, costs: Sequence[LayerCost]) -> Optional[GTSPPlan]:
    """The plan after ``move``; a token move lowers ``ρ`` by as many ``token_step`` as it
    takes to drop at least one node of the calibration graphs (``None``: none does)."""
    new = plan.copy()
    layer = move[1]
    if move[0] == "head":
        new.head_keep[layer][move[2]] = False
    elif move[0] == "layer":
        new.layer_open[layer] = False
    else:
        now = costs[layer].kept_nodes(plan.token_keep[layer])
        ratio = plan.token_keep[layer]
        while True:
            ratio = round(ratio - limits.token_step, 6)
            if ratio < limits.min_token_keep - 1e-9:
                return None
            if costs[layer].kept_nodes(ratio) < now - 1e-9:
                break
        new.token_keep[layer] = ratio
    return new


def layer_flops(costs: Sequence[LayerCost], plan: GTSPPlan, layer: int, scorer: bool) -> float:
    return costs[layer].flops(plan.layer_open[layer], sum(plan.head_keep[layer]), plan.token_keep[layer], scorer)


def total_flops(costs: Sequence[LayerCost], plan: GTSPPlan, other: float, scorer: bool) -> float:
    return other + sum(layer_flops(costs, plan, i, scorer) for i in range(len(costs)))


class PlanCost(CostModel):
    """GTSP's analytic FLOPs model as a core cost model. Per layer ``i`` three targets:
    ``"<i>.layer"`` (1 open, 0 closed), ``"<i>.heads"`` (heads kept) and ``"<i>.tokens"``
    (the kept fraction ρ of each graph's nodes, in units of ``1/token_units``). ``macs`` is
    half the FLOPs (the linear maps' and products' convention); ``units`` counts heads and layers."""

    def __init__(self, costs: Sequence[LayerCost], other: float, scorer: bool, token_units: int = 100) -> None:
        self.costs, self.other, self.scorer, self.token_units = list(costs), float(other), bool(scorer), token_units

    def plan_of(self, keep: Dict[str, float]) -> GTSPPlan:
        layers = range(len(self.costs))
        return GTSPPlan([bool(keep.get(f"{i}.layer", 1)) for i in layers],
                        [[h < keep.get(f"{i}.heads", self.costs[i].heads) for h in range(self.costs[i].heads)]
                         for i in layers],
                        [keep.get(f"{i}.tokens", self.token_units) / self.token_units for i in layers])

    def cost(self, keep: Dict[str, float]) -> Dict[str, float]:
        plan = self.plan_of(keep)
        flops = total_flops(self.costs, plan, self.other, self.scorer)
        return {"units": float(plan.heads_in_open_layers() + sum(plan.layer_open)), "params": 0.0,
                "macs": flops / 2.0, "flops": flops}

    def flops(self, plan: GTSPPlan) -> float:
        """FLOPs of ``plan`` itself (which heads are closed does not change the count)."""
        keep = {}
        for i, (open_, heads, ratio) in enumerate(zip(plan.layer_open, plan.head_keep, plan.token_keep)):
            keep.update({f"{i}.layer": int(open_), f"{i}.heads": sum(heads), f"{i}.tokens": ratio * self.token_units})
        return self.cost(keep)["flops"]


def importance_of(move: Move, importance: Dict[str, list], costs: Sequence[LayerCost], plan: GTSPPlan,
                  new: GTSPPlan) -> float:
    """Taylor importance of a move; for tokens the per-node importance times the nodes dropped."""
    if move[0] == "head":
        return float(importance["heads"][move[1]][move[2]])
    if move[0] == "layer":
        return float(importance["layers"][move[1]])
    c = costs[move[1]]
    dropped = c.kept_nodes(plan.token_keep[move[1]]) - c.kept_nodes(new.token_keep[move[1]])
    return float(importance["tokens"][move[1]]) * dropped


def allocate(plan: GTSPPlan, costs: Sequence[LayerCost], other: float, importance: Dict[str, list], target: float,
             limits: Limits, ceiling: Optional[float] = None) -> GTSPPlan:
    """The plan grown from ``plan`` until it removes at least ``target`` of the dense FLOPs
    (see the module), by the core's greedy knapsack engine. ``ValueError`` (and ``plan``
    unchanged) when the limits cannot reach it."""
    scorer = "tokens" in limits.kinds
    dense_plan = GTSPPlan.dense([len(h) for h in plan.head_keep])
    dense = total_flops(costs, dense_plan, other, False)
    if dense <= 0:
        raise ValueError("the cost model has no FLOPs: calibrate it on at least one batch first")

    def step(cur: GTSPPlan, move: Move):
        new = apply_move(cur, move, limits, costs)
        if new is None:
            return None
        return new, layer_flops(costs, cur, move[1], scorer) - layer_flops(costs, new, move[1], scorer)

    try:
        result, _ = greedy_removal(
            plan.copy(), total_flops(costs, plan, other, scorer), (1.0 - target) * dense,
            moves=lambda cur: moves(cur, limits), apply=step,
            value=lambda cur, move, new: importance_of(move, importance, costs, cur, new),
            floor=(1.0 - (ceiling if ceiling is not None else 1.0)) * dense, tolerance=1e-9 * dense)
    except InfeasibleBudget:
        raise ValueError(
            f"GTSP budget infeasible: removing {target:.1%} of the FLOPs needs more than the limits allow "
            f"(kinds={limits.kinds}, max_heads={limits.max_heads}, max_layers={limits.max_layers}, "
            f"min_token_keep={limits.min_token_keep}); raise a limit, enable another kind or lower the target"
        ) from None
    return result
