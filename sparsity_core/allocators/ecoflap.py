"""ECoFLaP: layer keep ratios from a zeroth-order estimate of global importance (Sung et al.,
2024, ICLR, "ECoFLaP: Efficient Coarse-to-Fine Layer-Wise Pruning for Vision-Language
Models", https://arxiv.org/abs/2310.02998).

*Coarse* step (this allocator): the gradient of the calibration loss ``L`` is estimated from
forward passes only, by two-sided simultaneous perturbation (SPSA / MeZO) over ``K`` random
directions ``z_k ~ N(0, I)`` of every target's weights at once:

    ĝ = (1/K) Σ_k  [L(θ + ε z_k) − L(θ − ε z_k)] / (2ε) · z_k

The importance of target ``t`` is ``S_t = Σ_{w∈t} |w · ĝ_w|`` (``importance="weight_grad"``,
the first-order Taylor saliency) or ``Σ |ĝ_w|`` (``"grad"``), summed over the layer as in
the paper's ``sum`` aggregation. (The estimate of each coordinate carries noise of about
``‖∇L‖/√K``, the same for every layer, so layer importances are only as sharp as ``K``
allows.) The kept cost is proportional to the importance:
``C_t·r_t = α·S_t`` (keep ratio ∝ importance per unit of cost), with ``α`` solved so the
ratios spend the budget exactly, each ratio clipped to ``[max(floor_t/n_t, 1 − s_max), 1]``
where ``s_max = s + max_deviation`` (the paper's ``max_sparsity_per_layer``, set to the
target + 0.1 in its scripts) and what clipping leaves redistributed.

*Fine* step: local pruning inside each layer, i.e. the criterion's scores (Wanda's in the
paper) choose which units a layer keeps, as the one-shot driver / controller does with the
counts this allocator returns.

The forwards: ``probe`` is a zero-argument callable returning the calibration loss of the
model with its **current** weights (:func:`~sparsity_core.allocators.probes.loss_probe`
builds one from calibration batches and a ``loss_fn(model, batch)``, the same arguments as
``one_shot_prune``'s). The allocator adds ``±ε z`` to the targets' parameters in place
around each call and restores them bit-exactly afterwards (also on error); ``2K`` probes
per allocation. Targets must be parameters. Built by name without a probe
(``allocator="ecoflap"``) it raises a ``ValueError`` saying so when asked to allocate.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Sequence

import torch

from ..registry import ALLOCATORS
from ..targets import Target
from ..validation import check_int, check_positive, check_range
from .base import Allocator
from .probes import Probe, call_probe, restored, weight_targets
from .ratios import fit_ratios, integer_keep, spans

IMPORTANCES = ("weight_grad", "grad")


@ALLOCATORS.register("ecoflap")
class ECoFLaP(Allocator):
    """Args:
        probe: ``probe() -> loss`` on calibration data with the current weights (see the module).
        samples: K, the number of random perturbation directions (2K forwards).
        eps: ε, the perturbation size.
        importance: ``"weight_grad"`` (Σ|w·ĝ|) or ``"grad"`` (Σ|ĝ|).
        max_deviation: a layer's sparsity is at most the target + this (``None``: no cap).
        seed: seed of the perturbation directions.
        min_keep_fraction, min_keep_units, round_to: the per-target floor (:class:`Allocator`).
    """

    #: measures the model through a forward-only probe
    needs_probe = True

    def __init__(self, probe: Optional[Probe] = None, samples: int = 8, eps: float = 1e-3,
                 importance: str = "weight_grad", max_deviation: Optional[float] = 0.1, seed: int = 0,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if probe is not None and not callable(probe):
            raise ValueError(f"ECoFLaP probe must be a callable probe() -> loss, got {probe!r}")
        self.probe = probe
        self.samples = check_int(samples, "ECoFLaP samples", minimum=1)
        self.eps = check_positive(eps, "ECoFLaP eps")
        if importance not in IMPORTANCES:
            raise ValueError(f"ECoFLaP importance must be one of {', '.join(IMPORTANCES)}; got {importance!r}")
        self.importance = importance
        self.max_deviation = None if max_deviation is None else check_range(max_deviation, "ECoFLaP max_deviation")
        self.seed = check_int(seed, "ECoFLaP seed", minimum=0)
        #: S_t of the last allocation
        self.last_importance: Dict[str, float] = {}

    def estimate(self, targets: Sequence[Target]) -> Dict[str, torch.Tensor]:
        """ĝ per target (float32, on the parameter's device) by two-sided SPSA; weights restored."""
        if self.probe is None:
            raise ValueError("the ecoflap allocator needs probe=...: a callable returning the calibration loss "
                             "(e.g. ECoFLaP(probe=loss_probe(model, batches, loss_fn)))")
        weight_targets(targets, "ECoFLaP")
        gen = torch.Generator().manual_seed(self.seed)
        grads = {t.name: torch.zeros(t.shape, dtype=torch.float32, device=t.param.device) for t in targets}
        with restored(targets), torch.no_grad():
            base = {t.name: t.param.detach().clone() for t in targets}
            for _ in range(self.samples):
                z = {t.name: torch.randn(t.shape, generator=gen).to(t.param.device) for t in targets}
                losses = []
                for sign in (1.0, -1.0):
                    for t in targets:
                        torch.add(base[t.name], z[t.name].to(t.param.dtype), alpha=sign * self.eps, out=t.param.data)
                    losses.append(call_probe(self.probe, "the ECoFLaP probe"))
                proj = (losses[0] - losses[1]) / (2.0 * self.eps)
                for t in targets:
                    grads[t.name].add_(z[t.name], alpha=proj / self.samples)
        return grads

    def layer_importance(self, targets: Sequence[Target]) -> torch.Tensor:
        grads = self.estimate(targets)
        out = []
        for t in targets:
            g = grads[t.name]
            value = g.abs() if self.importance == "grad" else (t.read().float().to(g.device) * g).abs()
            out.append(float(value.double().sum()))
        return torch.tensor(out, dtype=torch.float64)

    def distribute(self, targets: Sequence[Target], scores: Mapping[str, torch.Tensor], keep_cost: float,
                   measure: str, floors: Mapping[str, int]) -> Dict[str, int]:
        sp = spans(targets, measure, floors)
        importance = self.layer_importance(targets)
        self.last_importance = {t.name: float(v) for t, v in zip(targets, importance)}
        per_cost = importance / sp.full.clamp_min(1e-300)
        lo = None
        if self.max_deviation is not None:
            s_max = min(1.0, sp.sparsity(keep_cost) + self.max_deviation)
            lo = torch.full_like(per_cost, 1.0 - s_max)
        ratios = self._fit(per_cost, sp, keep_cost, lo)
        return integer_keep(sp, ratios, keep_cost)

    @staticmethod
    def _fit(per_cost: torch.Tensor, sp, keep_cost: float, lo: Optional[torch.Tensor]) -> torch.Tensor:
        if lo is None:
            return fit_ratios(per_cost, sp, keep_cost, mode="scale")
        # a higher lower bound than the floors: fit on spans whose floors are raised to it
        raised = type(sp)(names=sp.names, n=sp.n, c=sp.c,
                          floor=torch.maximum(sp.floor, torch.ceil(lo * sp.n - 1e-9)).clamp(max=sp.n))
        if float((raised.floor * raised.c).sum()) > keep_cost:  # the cap cannot hold: floors only
            return fit_ratios(per_cost, sp, keep_cost, mode="scale")
        return fit_ratios(per_cost, raised, keep_cost, mode="scale")

    def __repr__(self) -> str:
        return (f"ECoFLaP(probe={'set' if self.probe is not None else None}, samples={self.samples}, eps={self.eps}, "
                f"importance={self.importance!r}, max_deviation={self.max_deviation}, seed={self.seed}, "
                f"min_keep_fraction={self.min_keep_fraction}, min_keep_units={self.min_keep_units})")
