"""OWL: Outlier Weighed Layerwise sparsity (Yin et al., 2024, ICML, "Outlier Weighed Layerwise
Sparsity (OWL): A Missing Secret Sauce for Pruning LLMs to High Sparsity",
https://arxiv.org/abs/2310.05175).

Layers with many *outliers* keep more. With the outlier metric ``A_ij = |W_ij|·‖X_j‖₂``
(Wanda's score; ``X`` the layer's calibration inputs), the layerwise outlier distribution of
target ``t`` is

    D_t = #{ij : A_ij > M · mean(A_t)} / #A_t          (M: the outlier threshold, paper: 5)

(pooled over the targets of one block when ``block_pattern`` groups them, as the paper
does per decoder layer). ``D`` is normalised to ``[0, 2λ]``,
``D̂_t = 2λ·(D_t − min D)/(max D − min D)``, and the layer sparsity is

    s_t = s − (D̂_t − mean(D̂))        (λ: the largest deviation from the target s)

with the mean weighted by each target's full cost in the budget's measure, so the ratios
average to the target *in the budget's quantity* (units, params or MACs). Ratios are then
clipped to ``[0, 1 − floor_t/n_t]`` and what clipping leaves is spread by one common shift
(:func:`~sparsity_core.allocators.ratios.fit_ratios`); kept counts follow by
largest-remainder rounding. The per-weight choice inside each layer is the criterion's.

Where ``A`` comes from:

- ``activations`` given (an :class:`~sparsity_core.observe.ActivationObserver` or
  ``{target name: InputStats}``, the statistics ``ScoreContext.activations`` holds):
  ``A = |W|·‖X‖₂`` is computed from each target's weights and input norms, element-wise,
  whatever the criterion and layout.
- otherwise the scores handed to :meth:`allocate` are ``A``: with ``criterion="wanda"``
  they are exactly ``|W|·‖X‖₂`` (per weight, or summed per unit for structured layouts),
  so ``one_shot_prune(..., criterion="wanda", allocator="owl")`` and
  ``SparsityCallback(criterion="wanda", allocator="owl")`` run the paper's method by name.
  With another criterion OWL measures outliers of that criterion's scores.
"""
from __future__ import annotations

import re
from typing import Any, Dict, Mapping, Optional, Sequence

import torch

from ..criteria.wanda import input_scale
from ..registry import ALLOCATORS
from ..targets import Target
from ..validation import check_positive, check_range
from .base import Allocator
from .ratios import fit_ratios, integer_keep, spans


@ALLOCATORS.register("owl")
class OWL(Allocator):
    """Args:
        lam: λ, the largest deviation of a layer's sparsity from the target (paper: 0.08).
        m: M, the outlier threshold as a multiple of the layer's mean metric (paper: 5).
        activations: input statistics to compute ``|W|·‖X‖`` from (default: use the scores).
        block_pattern: a regular expression whose first group names a target's block
            (``r"blocks\\.(\\d+)\\."``): the targets of one block share one outlier ratio.
        min_keep_fraction, min_keep_units, round_to: the per-target floor (:class:`Allocator`).
    """

    #: reads calibration input statistics (like the ``wanda`` criterion) when it is given them
    uses_activations = True

    def __init__(self, lam: float = 0.08, m: float = 5.0, activations: Optional[Mapping[str, Any]] = None,
                 block_pattern: Optional[str] = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.lam = check_range(lam, "OWL lam", 0.0, 1.0)
        self.m = check_positive(m, "OWL m")
        if activations is not None and not isinstance(activations, Mapping):
            raise ValueError(f"OWL activations must map target names to input statistics, got {activations!r}")
        self.activations = activations
        self.block_pattern = None
        if block_pattern is not None:
            try:
                self.block_pattern = re.compile(block_pattern)
            except (re.error, TypeError) as err:
                raise ValueError(f"OWL block_pattern must be a regular expression: {err}") from None
        #: the layer sparsities of the last allocation (before integer rounding)
        self.last_sparsities: Dict[str, float] = {}

    # -- the outlier distribution ------------------------------------------------------------
    def metric(self, target: Target, scores: torch.Tensor) -> torch.Tensor:
        """``|W|·‖X‖₂`` per weight when activations are bound, else the target's scores."""
        stats = None if self.activations is None else self.activations.get(target.name)
        if stats is not None and stats.rows and target.param is not None and target.param.dim() >= 2:
            w = target.read().double()
            return (w.abs() * input_scale(target, w, stats.norms().to(w.device))).reshape(-1).cpu()
        return scores.reshape(-1).double().cpu()

    def outlier_ratios(self, targets: Sequence[Target], scores: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``D_t``: the fraction of each target's metric above ``m`` × its mean; with
        ``block_pattern``, of the block's metrics pooled (one mean per block, as the paper)."""
        metrics = []
        for t in targets:
            a = self.metric(t, scores[t.name])
            if not torch.isfinite(a).all():
                raise ValueError(f"OWL: the outlier metric of {t.name!r} contains NaN/Inf; nothing allocated")
            metrics.append(a)
        groups: Dict[str, list] = {}
        for i, t in enumerate(targets):
            key = t.name
            if self.block_pattern is not None:
                found = self.block_pattern.search(t.name)
                if found:
                    key = "block:" + (found.group(1) if found.groups() else found.group(0))
            groups.setdefault(key, []).append(i)
        out = torch.zeros(len(targets), dtype=torch.float64)
        for members in groups.values():
            a = torch.cat([metrics[i] for i in members])
            ratio = float((a > self.m * a.mean()).sum()) / a.numel() if a.numel() else 0.0
            out[members] = ratio
        return out

    def sparsities(self, targets: Sequence[Target], scores: Mapping[str, torch.Tensor], keep_cost: float,
                   measure: str, floors: Mapping[str, int]) -> Dict[str, float]:
        """Layer sparsities ``s_t`` (before rounding); their cost-weighted mean is the budget's."""
        sp = spans(targets, measure, floors)
        d = self.outlier_ratios(targets, scores)
        spread = float(d.max() - d.min()) if d.numel() else 0.0
        norm = (d - d.min()) / spread * (2.0 * self.lam) if spread > 0 else torch.zeros_like(d)
        ratios = fit_ratios(norm, sp, keep_cost, mode="shift")
        return {t.name: float(1.0 - r) for t, r in zip(targets, ratios)}

    def distribute(self, targets: Sequence[Target], scores: Mapping[str, torch.Tensor], keep_cost: float,
                   measure: str, floors: Mapping[str, int]) -> Dict[str, int]:
        sp = spans(targets, measure, floors)
        sparsity = self.sparsities(targets, scores, keep_cost, measure, floors)
        self.last_sparsities = sparsity
        ratios = torch.tensor([1.0 - sparsity[t.name] for t in targets], dtype=torch.float64)
        return integer_keep(sp, ratios, keep_cost)

    def __repr__(self) -> str:
        return (f"OWL(lam={self.lam}, m={self.m}, activations={'bound' if self.activations is not None else None}, "
                f"block_pattern={self.block_pattern.pattern if self.block_pattern else None}, "
                f"min_keep_fraction={self.min_keep_fraction}, min_keep_units={self.min_keep_units})")
