"""PAGCP's performance-aware oracle: may a layer be pruned this far, for every task?

Ye et al., 2023, "Performance-aware Approximation of Global Channel Pruning for Multitask
CNNs" (TPAMI, https://arxiv.org/abs/2303.11923). At the ``i``-th layer of the greedy
sequence, a candidate pruning is accepted when every checked task ``t`` keeps

    L_t(candidate) ≤ (1 + τ_t·δ^i·c) · L̂_t

with ``L̂_t`` the reference loss (the dense loss raised to the loss of each committed layer),
``τ_t`` the task's relative threshold, ``δ`` a decay along the sequence and ``c`` the
relaxation scale of the current sweep, one for all tasks or one per task (``c = ∞``: no
check). The task that breaks its threshold by the most caps the layer.
"""
from __future__ import annotations

import math
from typing import Mapping, Optional, Union

from sparsity_core.validation import check_positive, check_range

Thresholds = Union[float, Mapping[str, float]]


class PerformanceOracle:
    """Args:
        threshold: τ for every task, or ``{task: τ_t}`` (``"*"``: the tasks not named; tasks
            neither names are not checked).
        decay: δ in (0, 1].
    """

    def __init__(self, threshold: Thresholds = 0.05, decay: float = 1.0) -> None:
        if isinstance(threshold, Mapping):
            if not threshold:
                raise ValueError("PAGCP threshold mapping is empty; give {task: τ} (or '*' for every task)")
            self.threshold = {str(k): check_positive(v, f"PAGCP threshold of {k!r}") for k, v in threshold.items()}
        else:
            self.threshold = check_positive(threshold, "PAGCP threshold")
        self.decay = check_range(decay, "PAGCP threshold_decay", low_open=True)

    def tau(self, task: str, position: int, scale: float) -> Optional[float]:
        """τ_t·δ^i·c of ``task`` at the ``position``-th layer (``None``: not checked)."""
        if isinstance(self.threshold, Mapping):
            base = self.threshold.get(task, self.threshold.get("*"))
            if base is None:
                return None
        else:
            base = self.threshold
        return base * self.decay ** position * scale

    def violation(self, losses: Mapping[str, float], reference: Mapping[str, float], position: int,
                  scale: Union[float, Mapping[str, float]]) -> Optional[str]:
        """The task whose loss exceeds its bound the most (``None``: every task within);
        ``scale``: ``c`` for every task or ``{task: c_t}`` (a task it lacks: 1)."""
        worst, excess = None, 0.0
        for task, value in losses.items():
            c = scale.get(task, 1.0) if isinstance(scale, Mapping) else scale
            tau, ref = self.tau(task, position, c), reference.get(task)
            if tau is None or ref is None or math.isinf(tau):
                continue
            over = value - (1.0 + tau) * ref
            if over > 1e-12 * max(1.0, ref) and (worst is None or over > excess):
                worst, excess = task, over
        return worst

    def __repr__(self) -> str:
        return f"PerformanceOracle(threshold={self.threshold!r}, decay={self.decay})"
