"""What the search allocators share: candidates are per-target sparsity offsets projected
onto the budget, compared by a user-supplied evaluation.

A candidate is a vector of offsets ``Δ`` (one per target, in sparsity): target ``t`` keeps
the ratio ``r_t = clip(α − Δ_t, lo_t, 1)``, with the one shift ``α`` solved so that
``Σ_t C_t·r_t`` is the budget (:func:`~sparsity_core.allocators.ratios.fit_ratios`), then
integer counts by largest-remainder rounding. ``Δ = 0`` is the uniform allocation; every
candidate meets the budget and the floors, so the search space is exactly the feasible
layer-wise sparsity distributions.

The evaluation (lower is better): ``evaluate(masks) -> float`` with ``masks`` the boolean
masks ``{target name: mask}`` the criterion's scores give at the candidate's counts, or a
``probe`` (``probe() -> loss`` of the model with its current weights; see
:mod:`~sparsity_core.allocators.probes`), which is then evaluated with the pruned units
zeroed in place and the weights restored bit-exactly afterwards. Candidates are cached by
their kept counts, so a count vector is evaluated once; ``evaluations`` is the number of
evaluations the last allocation ran, ``history`` the best value after each.
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from ..targets import Target
from ..validation import check_int
from .base import Allocator
from .probes import Evaluate, Probe, call_probe, masked_evaluator
from .ratios import Spans, fit_ratios, integer_keep, spans


class LayerSearch(Allocator):
    """Base class of :class:`~sparsity_core.allocators.tyr.Search` and
    :class:`~sparsity_core.allocators.random_search.RandomSearch` (see the module)."""

    #: compares candidates by a forward-only evaluation of the model
    needs_probe = True

    def __init__(self, evaluate: Optional[Evaluate] = None, probe: Optional[Probe] = None, seed: int = 0,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        what = type(self).__name__
        if evaluate is not None and not callable(evaluate):
            raise ValueError(f"{what} evaluate must be a callable evaluate(masks) -> float, got {evaluate!r}")
        if probe is not None and not callable(probe):
            raise ValueError(f"{what} probe must be a callable probe() -> loss, got {probe!r}")
        if evaluate is not None and probe is not None:
            raise ValueError(f"{what} takes evaluate= or probe=, not both")
        self.evaluate, self.probe = evaluate, probe
        self.seed = check_int(seed, f"{what} seed", minimum=0)
        self.evaluations = 0
        self.history: List[float] = []
        #: the sparsity offsets Δ of the best candidate of the last allocation
        self.best_offsets: Dict[str, float] = {}

    # -- pieces ---------------------------------------------------------------------------------
    def evaluator(self, targets: Sequence[Target]) -> Evaluate:
        if self.evaluate is not None:
            return self.evaluate
        if self.probe is not None:
            return masked_evaluator(targets, self.probe)
        raise ValueError(f"the {type(self).__name__} allocator needs evaluate=... (evaluate(masks) -> loss) or "
                         "probe=... (probe() -> calibration loss, e.g. loss_probe(model, batches, loss_fn))")

    @staticmethod
    def candidate(offsets: torch.Tensor, sp: Spans, keep_cost: float) -> Dict[str, int]:
        return integer_keep(sp, fit_ratios(-offsets, sp, keep_cost, mode="shift"), keep_cost)

    def _runner(self, targets: Sequence[Target], scores: Mapping[str, torch.Tensor]):
        evaluate = self.evaluator(targets)
        cache: Dict[Tuple[int, ...], float] = {}
        self.evaluations, self.history = 0, []

        def run(keep: Dict[str, int]) -> float:
            key = tuple(keep[t.name] for t in targets)
            if key not in cache:
                masks = {t.name: t.layout.select(scores[t.name], keep[t.name], t.shape) for t in targets}
                cache[key] = call_probe(lambda: evaluate(masks), f"{type(self).__name__}'s evaluation")
                self.evaluations += 1
                self.history.append(min(cache[key], self.history[-1]) if self.history else cache[key])
            return cache[key]

        return run

    def distribute(self, targets: Sequence[Target], scores: Mapping[str, torch.Tensor], keep_cost: float,
                   measure: str, floors: Mapping[str, int]) -> Dict[str, int]:
        """Start from the uniform allocation (offsets 0), let :meth:`search` improve it, keep
        the best offsets found."""
        sp = spans(targets, measure, floors)
        run = self._runner(targets, scores)
        offsets = torch.zeros(len(targets), dtype=torch.float64)
        keep = self.candidate(offsets, sp, keep_cost)
        offsets, keep = self.search(run, offsets, keep, run(keep), sp, keep_cost,
                                    torch.Generator().manual_seed(self.seed))
        self.best_offsets = {t.name: float(v) for t, v in zip(targets, offsets)}
        return keep

    def search(self, run, offsets: torch.Tensor, keep: Dict[str, int], best: float, sp: Spans, keep_cost: float,
               gen: torch.Generator) -> Tuple[torch.Tensor, Dict[str, int]]:
        """The best ``(offsets, keep)`` found from the start given (``best`` = its value)."""
        raise NotImplementedError
