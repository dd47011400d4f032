"""Mirror descent on the simplex of layer budgets (UniPruning: Ding et al., 2025, "UniPruning:
Unifying Local Metric and Global Feedback for Scalable Sparse LLMs",
https://arxiv.org/abs/2510.03291; its global controller).

A global controller splits the budget above the floors, ``B' = B − Σ_t c_t·floor_t``, into
shares ``a ∈ Δ`` (``a_t ≥ 0``, ``Σ_t a_t = 1``) with caps ``a_t ≤ u_t = (C_t − c_t·floor_t)/B'``
(a target cannot keep more than all of its units): target ``t`` keeps
``k_t = floor_t + a_t·B'/c_t`` units. It maximises the local saliency kept,
``F(a) = Σ_t R_t(k_t)`` with ``R_t(k)`` the sum of the ``k`` best scores of target ``t``
(each target's scores divided by their mean when ``normalize``, so layers are compared on
one scale), by mirror descent with the entropy mirror map (exponentiated gradient):

    g_t = ∂F/∂a_t ∝ ŝ_t(k_t) / c_t                    (the marginal unit's saliency per cost)
    a ← KL-projection onto {Σa = 1, 0 ≤ a ≤ u} of  a ⊙ exp(η_i · g / max|g|),   η_i = η/√(i+1)

The KL projection onto the capped simplex is ``min(u, λ·y)`` with ``λ`` solved so the sum
is 1, so every iterate stays on the simplex (``iterates`` holds them). The decreasing step
``η/√(i+1)`` (the classic schedule of mirror descent on a non-smooth objective) lets the
iterates settle instead of oscillating around the equal-marginal point. The start is the
uniform density (every target keeps the same fraction above its floor); ``steps``
iterations of step ``η`` move it towards the point where the marginal saliencies per cost
are equal (the global ranking of the normalised scores). Only the budgets move: weights
are never touched, the criterion's scores decide which units each target keeps. With
``warm_start`` the next allocation over the same targets starts from the last shares (the
controller carries its state across the updates of a training run).
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np
import torch

from ..registry import ALLOCATORS
from ..targets import Target
from ..validation import check_int, check_positive
from .base import Allocator
from .ratios import Spans, fit_ratios, integer_keep, sorted_scores, spans

_F64 = torch.float64


def _project(y: np.ndarray, caps: np.ndarray) -> Optional[np.ndarray]:
    """The projection below on float64 arrays; ``None`` when rounding left no consistent ``j``."""
    y = np.clip(y, 0.0, None)
    pos = y > 0
    if not pos.any():
        raise ValueError("cannot project a zero vector onto the simplex")
    ratio = np.where(pos, caps / np.maximum(y, 1e-300), np.inf)
    order = np.argsort(ratio, kind="stable")
    r, u, w = ratio[order], caps[order], y[order]
    capped_mass = np.concatenate([[0.0], np.cumsum(u)[:-1]])  # Σ caps of the j before
    free_mass = np.cumsum(w[::-1])[::-1]  # Σ y from j on
    lam = (1.0 - capped_mass) / np.maximum(free_mass, 1e-300)
    prev = np.concatenate([[-np.inf], r[:-1]])
    ok = (lam <= r * (1 + 1e-12)) & (lam >= prev * (1 - 1e-12)) & (free_mass > 0)
    if not ok.any():
        return None
    out = np.minimum(caps, lam[int(np.flatnonzero(ok)[0])] * y)
    return out / out.sum()


def project_capped_simplex(y: torch.Tensor, caps: torch.Tensor) -> torch.Tensor:
    """``argmin_a KL(a ‖ y)`` over ``{a ≥ 0, Σ a = 1, a ≤ caps}`` (``y ≥ 0``, ``Σ caps ≥ 1``):
    ``a = min(caps, λ·y)``. The capped entries are those with the smallest ``caps/y``; with
    ``j`` of them, ``λ = (1 − Σ_capped caps) / Σ_free y``; the ``j`` consistent with the order
    is found in one pass over the sorted ratios."""
    out = _project(y.detach().double().cpu().numpy(), caps.detach().double().cpu().numpy())
    if out is None:  # solve by bisection instead
        n = y.numel()
        unit = Spans(names=[str(i) for i in range(n)], n=torch.ones(n, dtype=_F64), c=torch.ones(n, dtype=_F64),
                     floor=torch.zeros(n, dtype=_F64))
        return fit_ratios(y.clamp_min(0.0), unit, 1.0, mode="scale", hi=caps)
    return torch.from_numpy(out)


@ALLOCATORS.register("mirror_descent")
@ALLOCATORS.register("unipruning")
class MirrorDescent(Allocator):
    """Args:
        steps: number of mirror-descent iterations.
        lr: η, the step size (on gradients scaled to at most 1).
        normalize: divide each target's scores by their mean (local saliency on one scale).
        warm_start: start from the previous allocation's shares when the targets are the same.
        min_keep_fraction, min_keep_units, round_to: the per-target floor (:class:`Allocator`).
    """

    def __init__(self, steps: int = 100, lr: float = 0.5, normalize: bool = True, warm_start: bool = False,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.steps = check_int(steps, "mirror descent steps", minimum=0)
        self.lr = check_positive(lr, "mirror descent lr")
        for name, flag in (("normalize", normalize), ("warm_start", warm_start)):
            if not isinstance(flag, bool):
                raise ValueError(f"mirror descent {name} must be True or False, got {flag!r}")
        self.normalize, self.warm_start = normalize, warm_start
        #: the shares a after every step of the last allocation (first: the start)
        self.iterates: List[torch.Tensor] = []
        self._last: Optional[Dict[str, float]] = None

    def distribute(self, targets: Sequence[Target], scores: Mapping[str, torch.Tensor], keep_cost: float,
                   measure: str, floors: Mapping[str, int]) -> Dict[str, int]:
        sp = spans(targets, measure, floors)
        extra = keep_cost - float((sp.floor * sp.c).sum())
        room = sp.full - sp.floor * sp.c
        if extra <= 0 or float(room.sum()) <= 0:
            self.iterates = []
            return integer_keep(sp, sp.lo, keep_cost)
        caps = room / extra
        ordered = sorted_scores(targets, scores)
        if self.normalize:
            ordered = {k: v / v.abs().mean().clamp_min(1e-300) if v.numel() else v for k, v in ordered.items()}
        names = sp.names
        # the loop runs on small float64 arrays (numpy: no thread-pool overhead per step)
        flat = torch.cat([ordered[n] for n in names]).numpy() if names else np.zeros(0)
        n_units = sp.n.numpy()
        start = np.concatenate([[0.0], np.cumsum(n_units)[:-1]]).astype(np.int64)
        last = np.maximum(n_units.astype(np.int64) - 1, 0)
        empty = n_units <= 0
        floor, c = sp.floor.numpy(), np.maximum(sp.c.numpy(), 1e-300)
        caps_np = caps.numpy()
        a = (room / room.sum()).numpy()
        if self.warm_start and self._last is not None and set(self._last) == set(names):
            prev = np.maximum(np.array([self._last[n] for n in names]), 1e-12)
            a = project_capped_simplex(torch.from_numpy(prev / prev.sum()), caps).numpy()
        self.iterates = [torch.from_numpy(a.copy())]
        for step in range(self.steps):
            k = np.floor(floor + a * extra / c + 1e-9).astype(np.int64)
            index = np.minimum(start + np.minimum(k, last), max(flat.size - 1, 0))
            g = np.where(empty, 0.0, flat[index] if flat.size else 0.0) / c
            scale = float(np.abs(g).max())
            if scale <= 0:
                break
            y = a * np.exp((self.lr / (step + 1) ** 0.5) * g / scale)
            projected = _project(y, caps_np)
            a = projected if projected is not None else project_capped_simplex(
                torch.from_numpy(y), caps).numpy()
            self.iterates.append(torch.from_numpy(a.copy()))
        self._last = {n: float(v) for n, v in zip(names, a)}
        a = torch.from_numpy(a)
        c = sp.c.clamp_min(1e-300)
        ratios = (sp.floor + a * extra / c) / sp.n.clamp_min(1)
        return integer_keep(sp, torch.minimum(ratios, torch.ones_like(ratios)), keep_cost)

    def __repr__(self) -> str:
        return (f"MirrorDescent(steps={self.steps}, lr={self.lr}, normalize={self.normalize}, "
                f"warm_start={self.warm_start}, min_keep_fraction={self.min_keep_fraction}, "
                f"min_keep_units={self.min_keep_units})")
