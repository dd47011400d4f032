"""GTSP configuration: what may be removed, how fast, and the limits of the budget."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Tuple, Union

from sparsity_core.schedules.base import Schedule
from sparsity_core.schedules.constant import Constant
from sparsity_core.validation import check_int, check_nonnegative, check_range, check_sparsity

from .gtsp_plan import KINDS, Limits


@dataclass
class GTSPConfig:
    """What GTSP may remove and how fast.

    Args:
        flops: fraction of the model's FLOPs to remove, as a schedule over optimizer steps
            (``Cubic(start_step=…, end_step=…, final_sparsity=0.3)``) or a float (reached at
            step 1). Schedules must start at step ≥ 1: importance needs gradients.
        kinds: unit kinds the budget may close: any of ``"tokens"``, ``"heads"``, ``"layers"``.
        max_heads, max_layers: at most these fractions of all heads / layers closed, in [0, 1).
        min_token_keep: lowest fraction of each graph's nodes a layer processes, in (0, 1].
        token_step: a token move lowers a layer's keep ratio by this much.
        token_noise: Gumbel noise scale of token selection in training (0: deterministic).
        update_every: recompute the plan every this many optimizer steps within the schedule.
        ema: smoothing of the Taylor importance over optimizer steps, in [0, 1).
        overshoot: a move may remove up to ``final + overshoot`` of the FLOPs before others.
        calibration_batches: forward passes whose sizes define the cost model.
        edge_keys: keyword arguments of the GPS layers that are edge-level tensors.
        seed: seed of the Gumbel noise generator.
    """

    flops: Union[float, Schedule] = 0.3
    kinds: Tuple[str, ...] = KINDS
    max_heads: float = 0.5
    max_layers: float = 0.5
    min_token_keep: float = 0.5
    token_step: float = 0.1
    token_noise: float = 1.0
    update_every: int = 10
    ema: float = 0.9
    overshoot: float = 0.05
    calibration_batches: int = 8
    edge_keys: Tuple[str, ...] = ("edge_attr", "edge_weight")
    seed: int = 0
    schedule: Schedule = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.flops, Schedule):
            self.schedule = self.flops
        else:
            self.schedule = Constant(sparsity=check_sparsity(self.flops, "flops fraction to remove"), start_step=1)
        check_sparsity(self.schedule.final, "flops fraction to remove")
        if self.schedule.final > 0 and self.schedule.start_step < 1:
            raise ValueError("the flops schedule must start at step >= 1: GTSP ranks units by gradient importance, "
                             f"which step 0 does not have (got start_step={self.schedule.start_step})")
        self.kinds = tuple([self.kinds] if isinstance(self.kinds, str) else self.kinds)
        bad = [k for k in self.kinds if k not in KINDS]
        if bad or not self.kinds:
            raise ValueError(f"kinds must be a non-empty subset of {KINDS}, got {self.kinds!r}")
        check_sparsity(self.max_heads, "max_heads (fraction of heads that may close; 1 would allow removing "
                                       "every head of every layer)")
        check_sparsity(self.max_layers, "max_layers (fraction of layers that may close)")
        check_range(self.min_token_keep, "min_token_keep", low_open=True)
        check_range(self.token_step, "token_step", low_open=True)
        check_sparsity(self.ema, "ema")
        for name in ("token_noise", "overshoot"):
            check_nonnegative(getattr(self, name), name)
        for name in ("update_every", "calibration_batches"):
            check_int(getattr(self, name), name, 1)
        self.edge_keys = tuple(self.edge_keys)

    @property
    def limits(self) -> Limits:
        return Limits(self.kinds, self.max_heads, self.max_layers, self.min_token_keep, self.token_step)
