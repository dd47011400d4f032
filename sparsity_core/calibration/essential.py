"""Essential sparsity: the sharp dropping point of a metric under one-shot magnitude pruning
(Jaiswal et al., NeurIPS 2023, "The Emergence of Essential Sparsity in Large Pre-trained
Models: The Weights that Matter", https://arxiv.org/abs/2306.03805).

The pretrained weights are pruned one shot by magnitude (no calibration, no retraining; the
core's :func:`~sparsity_core.oneshot.one_shot_prune`, global ranking by default) at increasing
sparsities ``s_0 = 0 < s_1 < … < s_n``, each level from the dense weights, and a metric
``m(s)`` is measured at each. The paper observes that ``m`` stays nearly flat up to some
sparsity and then drops much faster: that sparsity is the *essential sparsity*. Two readings
are reported:

- ``dropping_point`` (the knee): with ``x`` the levels scaled to ``[0, 1]`` and ``y`` the
  metric scaled to ``[0, 1]`` (1 = best seen), the level maximising ``y − (1 − x)``, the
  largest gap above the chord from the first to the last point (Kneedle, Satopää et al.,
  2011): the last level before the curve bends down;
- ``within_tolerance``: the largest level such that every level up to it is within
  ``tolerance`` (in the metric's units) of the dense metric.

The dense weights are restored after the sweep (also if ``evaluate`` fails). The curve is
saved as a plot when matplotlib is installed; otherwise ``message`` says it was skipped.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, List, Optional, Sequence, Union

import torch
from torch import nn

from ..allocators.base import Allocator
from ..criteria.base import Criterion
from ..oneshot import one_shot_prune
from ..targets import Target
from ..validation import check_nonnegative, check_sparsity

DEFAULT_LEVELS = tuple(round(0.05 * i, 2) for i in range(19))  # 0, 0.05, ..., 0.9


@dataclass
class EssentialSparsityResult:
    levels: List[float]
    metrics: List[float]
    dense: float
    dropping_point: float
    within_tolerance: float
    plot: Optional[str] = None
    message: str = ""
    seconds: List[float] = field(default_factory=list)


def knee(levels: Sequence[float], metrics: Sequence[float], higher_is_better: bool = True) -> float:
    """The level maximising ``y − (1 − x)`` on the curve scaled to the unit square."""
    x = torch.tensor(levels, dtype=torch.float64)
    y = torch.tensor(metrics, dtype=torch.float64)
    if not higher_is_better:
        y = -y
    span_x, span_y = float(x[-1] - x[0]), float(y.max() - y.min())
    if span_x <= 0 or span_y <= 0:
        return float(x[-1])
    xs, ys = (x - x[0]) / span_x, (y - y.min()) / span_y
    return float(x[int(torch.argmax(ys - (1.0 - xs)))])


def _plot(path: str, result: EssentialSparsityResult, ylabel: str) -> str:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: plot skipped"
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(result.levels, result.metrics, "o-", label="one-shot magnitude")
    ax.axvline(result.dropping_point, color="tab:red", ls="--", label=f"dropping point {result.dropping_point:.2f}")
    ax.axvline(result.within_tolerance, color="tab:green", ls=":", label=f"within tolerance {result.within_tolerance:.2f}")
    ax.set_xlabel("sparsity")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return f"plot saved to {path}"


def essential_sparsity(model: nn.Module, targets: Sequence[Target], evaluate: Callable[[nn.Module], float],
                       levels: Sequence[float] = DEFAULT_LEVELS, criterion: Union[str, Criterion] = "magnitude",
                       allocator: Union[str, Allocator] = "global", tolerance: float = 0.01,
                       higher_is_better: bool = True, plot: Optional[str] = None, ylabel: str = "metric",
                       batches: Optional[Iterable] = None) -> EssentialSparsityResult:
    """Sweep ``levels`` (0 is added if missing), measure ``evaluate(model)`` at each, find the
    dropping point; the model ends with its dense weights. ``batches`` only for criteria that
    observe (the paper's magnitude does not)."""
    levels = sorted({check_sparsity(v, "essential-sparsity level") for v in levels} | {0.0})
    if len(levels) < 3:
        raise ValueError(f"essential sparsity needs at least 3 levels (with 0), got {levels}")
    tolerance = check_nonnegative(tolerance, "tolerance")
    if not callable(evaluate):
        raise ValueError(f"evaluate must be callable evaluate(model) -> float, got {evaluate!r}")
    targets = list(targets)
    if not targets or any(t.param is None for t in targets):
        raise ValueError("essential sparsity needs parameter targets (e.g. discover_targets(model))")
    saved = [t.param.detach().clone() for t in targets]
    metrics: List[float] = []
    seconds: List[float] = []
    try:
        for level in levels:
            began = time.perf_counter()
            with torch.no_grad():
                for t, w in zip(targets, saved):
                    t.param.copy_(w)
            if level > 0:
                one_shot_prune(model, targets, batches, level, criterion=criterion, allocator=allocator)
            value = float(evaluate(model))
            if value != value or value in (float("inf"), float("-inf")):
                raise ValueError(f"evaluate returned {value} at sparsity {level}")
            metrics.append(value)
            seconds.append(time.perf_counter() - began)
    finally:
        with torch.no_grad():
            for t, w in zip(targets, saved):
                t.param.copy_(w)
    dense = metrics[0]
    ok = [abs(m - dense) <= tolerance or (m > dense if higher_is_better else m < dense) for m in metrics]
    within = levels[0]
    for level, good in zip(levels, ok):
        if not good:
            break
        within = level
    result = EssentialSparsityResult(levels=list(levels), metrics=metrics, dense=dense,
                                     dropping_point=knee(levels, metrics, higher_is_better),
                                     within_tolerance=within, seconds=seconds)
    if plot is not None:
        result.plot = plot
        result.message = _plot(plot, result, ylabel)
        if not result.message.startswith("plot saved"):
            result.plot = None
    return result
