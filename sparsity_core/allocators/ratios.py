"""From per-target keep ratios to integer kept counts that spend a budget exactly.

The layer-wise allocators (OWL, ECoFLaP, softmax, mirror descent, the searches) decide a
*keep ratio* ``r_t`` per target (the fraction of its units kept); this module turns those
into kept counts with the same accounting for all of them:

- :class:`Spans`: per target its units ``n_t``, the cost ``c_t`` of one unit in the
  budget's measure, its full cost ``C_t = c_t·n_t`` and its floor (ratio ``lo_t = floor_t/n_t``).
- :func:`fit_ratios`: ``r_t(α) = clip(b_t + α, lo_t, hi_t)`` (``mode="shift"``) or
  ``clip(α·b_t, lo_t, hi_t)`` (``mode="scale"``), with the one constant ``α`` solved so that
  ``Σ_t C_t·r_t = keep_cost``. What clipping at ``hi`` (a dense target) or at a floor
  leaves is thereby redistributed over the unclipped targets. ``α`` is found by bisection
  (``Σ C·r`` is non-decreasing in ``α``), then solved exactly on the final linear piece.
- :func:`integer_keep`: ``k_t = ⌊r_t·n_t⌋`` (at least the floor), then one more unit to the
  targets with the largest fractional parts while the budget allows (largest-remainder
  rounding). With a budget in units the total is ``⌊keep_cost⌋``, the suite's rounding rule
  (:func:`~sparsity_core.allocators.budget.kept_count`); in params or MACs the kept cost
  never exceeds the budget.
- :func:`fill_by_rank`: hand out a remaining budget unit by unit to the best-scoring pruned
  units (per unit cost), as global ranking would (the level-based allocators' slack).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence

import torch

from ..targets import Target
from .budget import unit_cost

_F64 = torch.float64


@dataclass
class Spans:
    """Sizes and costs of the targets an allocator splits a budget over (float64 tensors)."""

    names: List[str]
    n: torch.Tensor
    c: torch.Tensor
    floor: torch.Tensor

    @property
    def full(self) -> torch.Tensor:
        return self.n * self.c

    @property
    def lo(self) -> torch.Tensor:
        return torch.where(self.n > 0, self.floor / self.n.clamp_min(1), torch.ones_like(self.n))

    def sparsity(self, keep_cost: float) -> float:
        """The budget as a sparsity of the targets' full cost."""
        total = float(self.full.sum())
        return 1.0 - keep_cost / total if total > 0 else 0.0


def spans(targets: Sequence[Target], measure: str, floors: Mapping[str, int]) -> Spans:
    return Spans(names=[t.name for t in targets],
                 n=torch.tensor([float(t.num_units) for t in targets], dtype=_F64),
                 c=torch.tensor([unit_cost(t, measure) for t in targets], dtype=_F64),
                 floor=torch.tensor([float(floors[t.name]) for t in targets], dtype=_F64))


def fit_ratios(base: torch.Tensor, sp: Spans, keep_cost: float, mode: str = "shift",
               hi: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Keep ratios ``clip(f(b, α), lo, hi)`` with ``Σ C·r = keep_cost`` (see the module)."""
    if mode not in ("shift", "scale"):
        raise ValueError(f"mode must be 'shift' or 'scale', got {mode!r}")
    b = base.to(_F64).reshape(-1)
    if not torch.isfinite(b).all():
        raise ValueError("per-target values contain NaN/Inf; nothing allocated")
    lo = sp.lo
    hi = torch.ones_like(lo) if hi is None else torch.maximum(hi.to(_F64), lo)
    full = sp.full
    if mode == "scale":
        b = b.clamp_min(0.0)
        if not (b > 0).any():
            b = torch.ones_like(b)

    def ratios(a: float) -> torch.Tensor:
        raw = b + a if mode == "shift" else b * a
        return torch.minimum(torch.maximum(raw, lo), hi)

    if keep_cost >= float((full * hi).sum()):
        return hi.clone()
    if keep_cost <= float((full * lo).sum()):
        return lo.clone()
    if mode == "shift":
        a_lo, a_hi = float((lo - b).min()), float((hi - b).max())
    else:
        a_lo, a_hi = 0.0, float((hi[b > 0] / b[b > 0]).max())
    for _ in range(200):
        mid = 0.5 * (a_lo + a_hi)
        if float((full * ratios(mid)).sum()) < keep_cost:
            a_lo = mid
        else:
            a_hi = mid
        if a_hi - a_lo <= 1e-15 * max(1.0, abs(a_hi)):
            break
    r = ratios(0.5 * (a_lo + a_hi))
    # exact on the final linear piece: the clipped targets stay, the free ones share the rest
    free = (r > lo) & (r < hi) & (full > 0)
    if free.any():
        rest = keep_cost - float((full * r)[~free].sum())
        if mode == "shift":
            a = (rest - float((full * b)[free].sum())) / float(full[free].sum())
            cand = b[free] + a
        else:
            denom = float((full * b)[free].sum())
            cand = b[free] * (rest / denom) if denom > 0 else r[free]
        if bool(((cand >= lo[free] - 1e-12) & (cand <= hi[free] + 1e-12)).all()):
            r = r.clone()
            r[free] = torch.minimum(torch.maximum(cand, lo[free]), hi[free])
    return r


def integer_keep(sp: Spans, ratios: torch.Tensor, keep_cost: float) -> Dict[str, int]:
    """Integer kept counts from keep ratios by largest-remainder rounding (see the module)."""
    x = (ratios.to(_F64) * sp.n).clamp(min=0.0)
    x = torch.minimum(torch.maximum(x, sp.floor), sp.n)
    k = torch.floor(x + 1e-9)
    k = torch.minimum(torch.maximum(k, sp.floor), sp.n)
    remaining = keep_cost - float((k * sp.c).sum())
    tol = 1e-9 * max(1.0, abs(keep_cost))
    frac = (x - k).tolist()
    order = sorted(range(len(frac)), key=lambda i: -frac[i])  # stable: earlier targets win ties
    kk = k.tolist()
    n, c = sp.n.tolist(), sp.c.tolist()
    cheapest = min(c, default=0.0)
    for i in order:
        if remaining + tol < cheapest:
            break
        if kk[i] < n[i] and c[i] <= remaining + tol:
            kk[i] += 1
            remaining -= c[i]
    return {name: int(v) for name, v in zip(sp.names, kk)}


def fill_by_rank(targets: Sequence[Target], scores: Mapping[str, torch.Tensor], keep: Dict[str, int],
                 remaining: float, measure: str,
                 ordered: Optional[Mapping[str, torch.Tensor]] = None) -> Dict[str, int]:
    """Add the best pruned units (by score per unit cost, across targets) while ``remaining``
    budget allows; ``keep`` counts the best units of each target as kept already
    (``ordered``: the scores sorted in descending order, if at hand)."""
    tol = 1e-9 * max(1.0, abs(remaining))
    if remaining <= tol:
        return dict(keep)
    pool, owners, costs = [], [], []
    for i, t in enumerate(targets):
        n, k = t.num_units, keep[t.name]
        cost = unit_cost(t, measure)
        if k >= n or cost > remaining + tol:
            continue
        room = min(n - k, int(remaining / cost + 1e-9) + 1 if cost > 0 else n - k)  # no more can fit
        s = (ordered[t.name] if ordered is not None
             else torch.sort(scores[t.name].reshape(-1).to(_F64).cpu(), descending=True).values)[k:k + room]
        pool.append(s / cost if cost > 0 else torch.full_like(s, float("inf")))
        owners.append(torch.full((s.numel(),), i, dtype=torch.long))
        costs.append(torch.full((s.numel(),), cost, dtype=_F64))
    if not pool:
        return dict(keep)
    value, owner, cost = torch.cat(pool), torch.cat(owners), torch.cat(costs)
    order = torch.argsort(value, descending=True, stable=True)
    spent = torch.cumsum(cost[order], 0)
    taken = int(torch.searchsorted(spent, torch.tensor([remaining + tol], dtype=_F64), right=True).item())
    counts = torch.bincount(owner[order[:taken]], minlength=len(targets))
    out = dict(keep)
    for i, t in enumerate(targets):
        out[t.name] += int(counts[i])
    return out


def kept_cost(sp: Spans, keep: Mapping[str, int]) -> float:
    return float(sum(sp.c[i] * keep[name] for i, name in enumerate(sp.names)))


def sorted_scores(targets: Sequence[Target], scores: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Each target's scores in descending order (float64, CPU), checked finite."""
    out = {}
    for t in targets:
        s = scores[t.name].reshape(-1).to(_F64).cpu()
        if s.numel() != t.num_units:
            raise ValueError(f"{s.numel()} scores for {t.describe()}")
        if not torch.isfinite(s).all():
            raise ValueError(f"scores of {t.name!r} contain NaN/Inf; nothing allocated")
        out[t.name] = torch.sort(s, descending=True).values
    return out
