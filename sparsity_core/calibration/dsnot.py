"""DSnoT: training-free prune-and-grow of a sparse mask (Zhang et al., ICLR 2024, "Dynamic
Sparse No Training: Training-Free Fine-tuning for Sparse LLMs", https://arxiv.org/abs/2310.08915).

Given a layer's dense weights ``W`` (output row ``i``, input feature ``j``), a mask ``M``
(1 = kept) from any one-shot method (Wanda's by default) and the calibration inputs ``X``,
the *expected reconstruction error* of output ``i`` is

    ε_i = E[(W_i − (W⊙M)_i)·X] = Σ_j W_ij (1 − M_ij) μ_j,      μ_j = E[X_j],

the mean shift of the output the pruned weights cause. DSnoT swaps weights row by row to
drive ``ε_i`` towards zero, keeping the row's count of kept weights (so the layer's sparsity
is kept exactly). With ``c_ij = W_ij μ_j`` (regrowing ``j`` changes ``ε_i`` by ``−c_ij``,
pruning it by ``+c_ij``), one cycle for every row whose ``|ε_i|`` exceeds ``update_threshold``:

- **grow** (paper Eq. 6): among pruned weights with ``sign(c_ij) = sign(ε_i)``, the one
  maximising ``sign(ε_i)·c_ij / Var(X_j)^p``: the largest reduction of the mean error per
  unit of input variance it adds (``p = var_power``, 1 in the paper);
- **prune** (paper Eq. 7): among kept weights with ``sign(ε_i)·c_ij ≤ 0`` (pruning them does
  not push the error further away), the one with the smallest Wanda score
  ``|W_ij|·‖X_j‖₂``. Under N:M (``NM`` layout) the pruned weight is the lowest-Wanda kept
  weight of the grown weight's group of ``m``, as in the authors' N:M code, so the pattern
  stays N:M;
- the swap is made only if ``|ε_i|`` strictly decreases; otherwise the row stops (the error
  stops decreasing). Cycles end when no row changes or after ``max_cycles``.

As in the authors' code, the candidates are queued once from the starting mask (pruned
weights by the growing score, kept weights by the pruning score, split by the sign of
``c_ij``) and consumed in order, so every weight moves at most once and a cycle costs
``O(rows)``. Unlike their default, a swap that would make ``|ε_i|`` larger is refused, so
the expected error of every row is non-increasing.

So ``|ε_i|`` never increases, every row keeps its count (and every N:M group its ``n``), and
the weights themselves are not changed (no training, no weight update). ``E[X_j]`` and
``Var(X_j)`` come from the core's :class:`~sparsity_core.observe.ActivationObserver` with
``means=True`` (``Σx`` and ``Σx²`` per feature over all calibration rows); the authors pool
per-batch variances instead of the total variance used here.

Used as a refiner of :func:`~sparsity_core.calibration.driver.calibrate_prune`
(``refine=DSnoT()``) or directly on one target: ``DSnoT().refine(target, mask, stats)``.
"""
from __future__ import annotations

from typing import Any, Dict, Tuple

import torch

from ..layouts import NM, Elements
from ..targets import Target
from ..validation import check_int, check_nonnegative


def expected_error(weight: torch.Tensor, mask: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """``ε_i = Σ_j W_ij (1 − M_ij) μ_j`` per output row (float64)."""
    w = weight.detach().double().reshape(weight.shape[0], -1)
    return (w * (~mask.reshape(w.shape)).double() * mean.double().to(w.device)).sum(dim=1)


class DSnoT:
    """Args:
        max_cycles: the most prune-and-grow cycles per layer (paper: 50).
        update_threshold: rows with ``|ε_i|`` at or below it are left alone (paper: 0.1, in
            the units of the layer's output).
        var_power: ``p`` of the growing criterion's ``Var(X_j)^p`` (paper: 1; 0 ignores the variance).
    """

    #: the refiner reads per-feature input means (observe with ``means=True``)
    needs_means = True

    def __init__(self, max_cycles: int = 50, update_threshold: float = 0.1, var_power: float = 1.0) -> None:
        self.max_cycles = check_int(max_cycles, "DSnoT max_cycles", 1)
        self.update_threshold = check_nonnegative(update_threshold, "DSnoT update_threshold")
        self.var_power = check_nonnegative(var_power, "DSnoT var_power")

    def _inputs(self, target: Target, mask: torch.Tensor, stats: Any):
        if not isinstance(target.layout, Elements):
            raise ValueError(f"DSnoT refines element masks (element, per_row, N:M); {target.name!r} has layout "
                             f"{target.layout.name!r}")
        weight = target.read()
        if weight.dim() != 2:
            raise ValueError(f"DSnoT needs a 2-D (Linear) weight; {target.name!r} has shape {tuple(weight.shape)}")
        if tuple(mask.shape) != tuple(weight.shape):
            raise ValueError(f"DSnoT: the mask of {target.name!r} has shape {tuple(mask.shape)}, the weight "
                             f"{tuple(weight.shape)}")
        if stats is None or not getattr(stats, "rows", 0):
            raise ValueError(f"DSnoT needs calibration input statistics for {target.name!r}")
        if getattr(stats, "sum", None) is None:
            raise ValueError(f"DSnoT needs the input means of {target.name!r}: observe with means=True")
        if stats.sq_sum.numel() != weight.shape[1]:
            raise ValueError(f"DSnoT: the input statistics of {target.name!r} have {stats.sq_sum.numel()} features, "
                             f"the weight has {weight.shape[1]} inputs")
        w = weight.double()
        dev = w.device
        mean = stats.means().to(dev)
        var = stats.variances().to(dev)
        contrib = w * mean
        wanda = w.abs() * stats.sq_sum.to(dev).sqrt()
        scale = var.clamp_min(torch.finfo(torch.float64).tiny) ** self.var_power if self.var_power else None
        grow = contrib / scale if scale is not None else contrib
        for what, value in (("expected reconstruction error", contrib), ("growing score", grow), ("Wanda score", wanda)):
            if not torch.isfinite(value).all():
                raise ValueError(f"DSnoT: the {what} of {target.name!r} has NaN/Inf entries (weights or calibration "
                                 "statistics); masks left unchanged")
        return contrib, grow, wanda

    def refine(self, target: Target, mask: torch.Tensor, stats: Any) -> Tuple[torch.Tensor, Dict[str, float]]:
        """A refined copy of ``mask`` (True = kept) and ``{"error_before", "error_after"``
        (mean ``|ε_i|`` over rows), ``"swaps"``, ``"cycles"}``."""
        contrib, grow, wanda = self._inputs(target, mask, stats)
        dev = contrib.device
        mask = mask.clone().to(dev)
        rows = contrib.shape[0]
        eps = (contrib * (~mask).double()).sum(dim=1)
        before = float(eps.abs().mean())
        m = target.layout.m if isinstance(target.layout, NM) else 0
        inf = float("inf")
        pruned, kept = ~mask, mask

        def queue(valid: torch.Tensor, key: torch.Tensor):
            """Per row: the columns where ``valid``, by ascending ``key``; and their count."""
            order = torch.argsort(torch.where(valid, key, torch.full_like(key, inf)).float(), dim=1, stable=True)
            return order, valid.sum(dim=1)

        # candidates come from the starting mask (as the authors' code): every weight moves at most once
        grow_q = {1: queue(pruned & (contrib > 0), -grow), -1: queue(pruned & (contrib < 0), grow)}
        prune_q = {1: queue(kept & (contrib <= 0), wanda), -1: queue(kept & (contrib > 0), wanda)} if not m else None
        pos = {(kind, s): torch.zeros(rows, dtype=torch.long, device=dev) for kind in "gp" for s in (1, -1)}
        active = torch.ones(rows, dtype=torch.bool, device=dev)
        swaps = cycles = 0
        for _ in range(self.max_cycles):
            work = active & (eps.abs() > self.update_threshold)
            if not work.any():
                break
            cycles += 1
            r = torch.nonzero(work).squeeze(1)
            up = eps[r] > 0
            g = torch.empty_like(r)
            p = torch.empty_like(r)
            ok = torch.ones_like(r, dtype=torch.bool)
            for s, sel in ((1, up), (-1, ~up)):
                if not sel.any():
                    continue
                rr = r[sel]
                order, count = grow_q[s]
                at = pos[("g", s)][rr]
                ok[sel] &= at < count[rr]
                g[sel] = order[rr, at.clamp_max(order.shape[1] - 1)]
                if not m:
                    order, count = prune_q[s]
                    at = pos[("p", s)][rr]
                    ok[sel] &= at < count[rr]
                    p[sel] = order[rr, at.clamp_max(order.shape[1] - 1)]
            if m:  # the lowest-Wanda kept weight of the grown weight's group of m
                cols = (g - g % m).unsqueeze(1) + torch.arange(m, device=dev)
                kept_b = mask[r.unsqueeze(1), cols]
                p = cols.gather(1, torch.where(kept_b, wanda[r.unsqueeze(1), cols], inf).argmin(dim=1, keepdim=True))
                p = p.squeeze(1)
                ok &= kept_b.any(dim=1)
            after = eps[r] - contrib[r, g] + contrib[r, p]
            ok &= after.abs() < eps[r].abs()
            active[r[~ok]] = False  # a row whose next swap does not lower |ε| stops
            if not ok.any():
                break
            ro, go, po = r[ok], g[ok], p[ok]
            mask[ro, go] = True
            mask[ro, po] = False
            eps[ro] = after[ok]
            for s, sel in ((1, up[ok]), (-1, ~up[ok])):
                pos[("g", s)][ro[sel]] += 1
                if not m:
                    pos[("p", s)][ro[sel]] += 1
            swaps += int(ok.sum())
        return mask, {"error_before": before, "error_after": float(eps.abs().mean()), "swaps": float(swaps),
                      "cycles": float(cycles)}

    def __repr__(self) -> str:
        return f"DSnoT(max_cycles={self.max_cycles}, update_threshold={self.update_threshold}, var_power={self.var_power})"
