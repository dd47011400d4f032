"""Týr-style search of layer-wise sparsity, coarse to fine (Li et al., 2025, "Týr-the-Pruner:
Unlocking Accurate 50% Structural Pruning for LLMs via Global Sparsity Distribution
Optimization"; its iterative prune-and-search with coarse-to-fine sparsity granularity).

The search state is one sparsity offset per target, ``Δ ∈ δ·ℤ^T``, always projected onto the
global budget (``r_t = clip(α − Δ_t, lo_t, 1)``, one shift ``α`` meets the budget exactly; see
:mod:`~sparsity_core.allocators.layer_search`). Starting from ``Δ = 0`` (uniform):

    repeat: for each target t (in a seeded random order), try Δ_t + δ, then Δ_t − δ;
            accept the first move whose evaluation improves on the best so far
            if a whole sweep improves nothing: δ ← δ/2 (finer granularity)
    until δ < min_step or max_evals evaluations were spent

so the coarse steps move large amounts of budget between layers and the fine ones settle
them, each move paid for by the other layers through ``α``. The paper searches a supernet
of locally pruned layers with an evolutionary search and expectation error accumulation;
this allocator keeps its two ingredients that concern allocation (search under the global
budget against a measured objective, coarse-to-fine granularity) and evaluates candidates
directly with the user's ``evaluate`` / ``probe`` (e.g. the calibration loss).
:class:`~sparsity_core.allocators.random_search.RandomSearch` is its baseline at the same
number of evaluations.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import torch

from ..registry import ALLOCATORS
from ..validation import check_int, check_range
from .layer_search import LayerSearch
from .probes import Evaluate, Probe
from .ratios import Spans


@ALLOCATORS.register("search")
@ALLOCATORS.register("tyr")
class Search(LayerSearch):
    """Args:
        evaluate: ``evaluate(masks) -> loss`` (lower is better), or
        probe: ``probe() -> loss`` evaluated with the candidate's masks applied.
        step: the first (coarsest) granularity δ, in sparsity.
        min_step: the search stops when δ falls below this.
        max_evals: at most this many evaluations (the first is the uniform allocation).
        seed: seed of the sweep order.
        min_keep_fraction, min_keep_units, round_to: the per-target floor (:class:`Allocator`).
    """

    def __init__(self, evaluate: Optional[Evaluate] = None, probe: Optional[Probe] = None, step: float = 0.1,
                 min_step: float = 0.025, max_evals: int = 200, seed: int = 0, **kwargs: Any) -> None:
        super().__init__(evaluate=evaluate, probe=probe, seed=seed, **kwargs)
        self.step = check_range(step, "search step", 0.0, 1.0, low_open=True)
        self.min_step = check_range(min_step, "search min_step", 0.0, 1.0, low_open=True)
        if self.min_step > self.step:
            raise ValueError(f"search min_step must be <= step, got min_step={min_step!r} > step={step!r}")
        self.max_evals = check_int(max_evals, "search max_evals", minimum=1)

    def search(self, run, offsets: torch.Tensor, keep: Dict[str, int], best: float, sp: Spans, keep_cost: float,
               gen: torch.Generator) -> Tuple[torch.Tensor, Dict[str, int]]:
        delta = self.step
        while delta >= self.min_step * (1 - 1e-9) and self.evaluations < self.max_evals:
            improved = False
            for i in torch.randperm(offsets.numel(), generator=gen).tolist():
                for sign in (1.0, -1.0):
                    if self.evaluations >= self.max_evals:
                        break
                    trial = offsets.clone()
                    trial[i] += sign * delta
                    cand = self.candidate(trial, sp, keep_cost)
                    if cand == keep:  # clipped away: the same allocation
                        continue
                    value = run(cand)
                    if value < best:
                        offsets, keep, best, improved = trial, cand, value, True
                        break
            if not improved:
                delta /= 2.0
        return offsets, keep

    def __repr__(self) -> str:
        return (f"Search(step={self.step}, min_step={self.min_step}, max_evals={self.max_evals}, seed={self.seed}, "
                f"min_keep_fraction={self.min_keep_fraction}, min_keep_units={self.min_keep_units})")
