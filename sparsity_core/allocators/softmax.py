"""Softmax (energy) allocation: keep ratios proportional to a softmax of layer importance.

The closed form named "StructPrune's" in issue 17 (the allocation step of
importance-weighted structured pruning; the paper's exact formulation was not available
here, so this module states the rule it implements):

    p_t = exp(I_t / T) / Σ_u exp(I_u / T),        r_t = clip(α·p_t, lo_t, 1)

with ``I_t`` the importance of target ``t``, ``T`` the temperature (``T → ∞``: uniform
ratios; ``T → 0``: the most important targets dense first), ``lo_t = floor_t/n_t`` and
``α`` solved so that ``Σ_t C_t·r_t`` equals the budget exactly (``C_t``: the target's full
cost in the budget's measure). Clipping at 1 (a dense target) or at a floor frees or takes
budget, which the common ``α`` redistributes over the unclipped targets
(:func:`~sparsity_core.allocators.ratios.fit_ratios`); integer counts follow by
largest-remainder rounding, so the kept units sum to the budget.

Importance ``I``:

- ``"energy"`` (default): the log of the mean squared score of the target's units,
  ``log(Σ_u s_u² / n_t)``, standardised across targets (zero mean, unit deviation), so that
  ``T`` does not depend on the scores' scale;
- ``"mean"``: the same with the mean score ``log(Σ_u |s_u| / n_t)``;
- a mapping ``{target name: I_t}`` or a callable ``importance(target, scores) -> float``,
  used as given.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, Mapping, Sequence, Union

import torch

from ..registry import ALLOCATORS
from ..targets import Target
from ..validation import check_positive
from .base import Allocator
from .ratios import fit_ratios, integer_keep, spans

ImportanceSpec = Union[str, Mapping[str, float], Callable[[Target, torch.Tensor], float]]
NAMED = ("energy", "mean")


def standardize(x: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit (population) deviation; all zeros when the values are equal."""
    centred = x - x.mean()
    std = float(centred.pow(2).mean().sqrt())
    return centred / std if std > 0 else torch.zeros_like(x)


@ALLOCATORS.register("softmax")
class Softmax(Allocator):
    """Args:
        temperature: T > 0.
        importance: ``"energy"``, ``"mean"``, a mapping or a callable (see the module).
        min_keep_fraction, min_keep_units, round_to: the per-target floor (:class:`Allocator`).
    """

    def __init__(self, temperature: float = 1.0, importance: ImportanceSpec = "energy", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.temperature = check_positive(temperature, "softmax temperature")
        if isinstance(importance, str):
            if importance not in NAMED:
                raise ValueError(f"softmax importance must be one of {', '.join(NAMED)}, a mapping or a callable; "
                                 f"got {importance!r}")
        elif not (callable(importance) or isinstance(importance, Mapping)):
            raise ValueError(f"softmax importance must be one of {', '.join(NAMED)}, a mapping or a callable; "
                             f"got {importance!r}")
        self.importance = importance
        #: the softmax shares p_t of the last allocation
        self.last_shares: Dict[str, float] = {}

    def layer_importance(self, targets: Sequence[Target], scores: Mapping[str, torch.Tensor]) -> torch.Tensor:
        if isinstance(self.importance, Mapping):
            missing = [t.name for t in targets if t.name not in self.importance]
            if missing:
                raise ValueError(f"softmax importance has no value for targets {missing[:5]}")
            values = [float(self.importance[t.name]) for t in targets]
        elif callable(self.importance):
            values = [float(self.importance(t, scores[t.name])) for t in targets]
        else:
            values = []
            for t in targets:
                s = scores[t.name].reshape(-1).double().cpu()
                stat = s.pow(2).mean() if self.importance == "energy" else s.abs().mean()
                values.append(math.log(max(float(stat), 1e-300)) if s.numel() else 0.0)
            out = torch.tensor(values, dtype=torch.float64)
            if not torch.isfinite(out).all():
                raise ValueError("softmax: the scores contain NaN/Inf; nothing allocated")
            return standardize(out)
        out = torch.tensor(values, dtype=torch.float64)
        if not torch.isfinite(out).all():
            raise ValueError("softmax: the layer importances contain NaN/Inf; nothing allocated")
        return out

    def shares(self, targets: Sequence[Target], scores: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``p = softmax(I / T)`` over the targets."""
        return torch.softmax(self.layer_importance(targets, scores) / self.temperature, dim=0)

    def ratios(self, targets: Sequence[Target], scores: Mapping[str, torch.Tensor], keep_cost: float,
               measure: str, floors: Mapping[str, int]) -> torch.Tensor:
        """Keep ratios ``clip(α·p, lo, 1)`` with ``Σ C·r = keep_cost`` (before rounding)."""
        p = self.shares(targets, scores)
        self.last_shares = {t.name: float(v) for t, v in zip(targets, p)}
        return fit_ratios(p, spans(targets, measure, floors), keep_cost, mode="scale")

    def distribute(self, targets: Sequence[Target], scores: Mapping[str, torch.Tensor], keep_cost: float,
                   measure: str, floors: Mapping[str, int]) -> Dict[str, int]:
        r = self.ratios(targets, scores, keep_cost, measure, floors)
        return integer_keep(spans(targets, measure, floors), r, keep_cost)

    def __repr__(self) -> str:
        imp = self.importance if isinstance(self.importance, str) else type(self.importance).__name__
        return (f"Softmax(temperature={self.temperature}, importance={imp!r}, "
                f"min_keep_fraction={self.min_keep_fraction}, min_keep_units={self.min_keep_units})")
