"""Random search of layer-wise sparsity: the baseline of the searches (random search as a
baseline for architecture search: Li & Talwalkar, 2019, "Random Search and Reproducibility
for Neural Architecture Search", https://arxiv.org/abs/1902.07638; Bergstra & Bengio, 2012).

Candidates are drawn i.i.d.: sparsity offsets ``Δ_t ~ U(−spread, spread)`` per target, each
projected onto the global budget exactly as :class:`~sparsity_core.allocators.tyr.Search`'s
(``r_t = clip(α − Δ_t, lo_t, 1)``, see :mod:`~sparsity_core.allocators.layer_search`). The
first candidate is ``Δ = 0`` (uniform), as the search's start; ``evaluations`` candidates in
all are evaluated (give it the search's count for a like-for-like comparison) and the best
is kept.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import torch

from ..registry import ALLOCATORS
from ..validation import check_int, check_range
from .layer_search import LayerSearch
from .probes import Evaluate, Probe
from .ratios import Spans


@ALLOCATORS.register("random_search")
class RandomSearch(LayerSearch):
    """Args:
        evaluate: ``evaluate(masks) -> loss`` (lower is better), or
        probe: ``probe() -> loss`` evaluated with the candidate's masks applied.
        evaluations: the number of candidates drawn (the first is the uniform allocation).
        spread: offsets are drawn from ``U(−spread, spread)``, in sparsity.
        seed: seed of the draws.
        min_keep_fraction, min_keep_units, round_to: the per-target floor (:class:`Allocator`).
    """

    def __init__(self, evaluate: Optional[Evaluate] = None, probe: Optional[Probe] = None, evaluations: int = 100,
                 spread: float = 0.2, seed: int = 0, **kwargs: Any) -> None:
        super().__init__(evaluate=evaluate, probe=probe, seed=seed, **kwargs)
        self.budget_evals = check_int(evaluations, "random search evaluations", minimum=1)
        self.spread = check_range(spread, "random search spread", 0.0, 1.0)

    def search(self, run, offsets: torch.Tensor, keep: Dict[str, int], best: float, sp: Spans, keep_cost: float,
               gen: torch.Generator) -> Tuple[torch.Tensor, Dict[str, int]]:
        for _ in range(self.budget_evals - 1):
            trial = (torch.rand(offsets.numel(), generator=gen, dtype=torch.float64) * 2 - 1) * self.spread
            cand = self.candidate(trial, sp, keep_cost)
            value = run(cand)
            if value < best:
                offsets, keep, best = trial, cand, value
        return offsets, keep

    def __repr__(self) -> str:
        return (f"RandomSearch(evaluations={self.budget_evals}, spread={self.spread}, seed={self.seed}, "
                f"min_keep_fraction={self.min_keep_fraction}, min_keep_units={self.min_keep_units})")
