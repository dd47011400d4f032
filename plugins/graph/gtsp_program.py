"""``GTSP``: graph-transformer sparsification as a core program.

    trainer = pl.Trainer(callbacks=[SparsityCallback(programs=[
        GTSP(flops=Cubic(start_step=50, end_step=400, final_sparsity=0.3),
             weights=Cubic(start_step=50, end_step=400, final_sparsity=0.5))])])

At ``attach`` the gates are put on every ``GPSConv`` of the LightningModule (before
``configure_optimizers``, so ``self.parameters()`` includes them); with
``example_input_array`` set the budget is checked there on that input and an infeasible
one fails before training (the gates are taken off again); the FLOPs model itself is
calibrated on the first training batches. Each optimizer step folds the gates' Taylor terms
into the importance (``before_optimizer_step``), and the plan follows the FLOPs schedule
(``after_optimizer_step``), both through :class:`~.gtsp.GTSPController` (the plain-loop
engine). Weights are pruned by the core: a :class:`~sparsity_core.mask_program.WeightSparsity`
program inside this one (magnitude criterion, global ranking, hard masks) over the linear
weights, the gated attention projections included (their stored tensor, under the head
gate). At ``finalize`` the weight zeros are made permanent, then closed heads, layers and
dropped tokens are removed. ``state_dict`` holds both, so a resumed run continues with the
same plan, importance, cost model and noise stream.
"""
from __future__ import annotations

import logging
from typing import Any, Dict, Optional, Union

from torch import nn

from sparsity_core.discovery import Patterns, as_patterns
from sparsity_core.mask_program import ScheduleSpec, WeightSparsity
from sparsity_core.program import Host, Program, attached
from sparsity_core.registry import PROGRAMS
from sparsity_core.schedules.base import Schedule
from sparsity_core.validation import check_int

from .gtsp import GTSPController
from .gtsp_config import GTSPConfig

log = logging.getLogger(__name__)


@PROGRAMS.register("gtsp")
class GTSP(Program):
    """GTSP on the ``GPSConv`` layers of a model.

    Args:
        flops: FLOPs fraction to remove: a core schedule (starting at step >= 1) or a float;
            the other settings go in ``config`` (then leave ``flops`` out).
        weights: weight sparsity of the linear weights (core magnitude pruning): a schedule
            such as ``Cubic``, a float, or a callable ``step -> sparsity`` (0: dense weights).
        config: a full :class:`GTSPConfig` (``kinds``, ``max_heads``, ``update_every``...).
        exclude: extra regular expressions of modules whose weights stay dense (token
            scorers and the classifier head always do).
        weight_update_every: recompute weight masks every this many optimizer steps.
        finalize: remove the closed units (and make weight zeros permanent) at the end of fit.
    """

    name = "gtsp"

    def __init__(self, flops: Union[float, Schedule, None] = None, weights: ScheduleSpec = 0.0,
                 config: Optional[GTSPConfig] = None, exclude: Patterns = None, weight_update_every: int = 10,
                 finalize: bool = True, name: Optional[str] = None) -> None:
        if config is not None and flops is not None:
            raise ValueError("pass either config=GTSPConfig(...) or flops=, not both")
        self.config = config or GTSPConfig(flops=0.3 if flops is None else flops)
        extra = [exclude] if isinstance(exclude, str) else list(exclude or [])
        as_patterns(extra, "exclude")
        self.weight_program = WeightSparsity(weights, exclude=[r"token_scorer"] + extra,
                                             update_every=check_int(weight_update_every, "weight_update_every", 1),
                                             name="weights")
        self.prunes_weights = not (isinstance(weights, (int, float)) and weights == 0)
        self.finalize_at_end = bool(finalize)
        if name is not None:
            self.name = name
        self.controller: Optional[GTSPController] = None
        self.result: Dict[str, float] = {}

    @property
    def weights(self) -> Optional[WeightSparsity]:
        """The weight program (``None`` with dense weights)."""
        return self.weight_program if self.prunes_weights else None

    def state_id(self) -> str:
        return f"{self.name}(kinds={list(self.config.kinds)!r})"

    # -- the program protocol -------------------------------------------------------------
    def attach(self, host: Host) -> None:
        if self.controller is not None:
            if self.controller.model is not host.model:
                raise ValueError("this GTSP program already holds the gates of another model; use one per model")
            return
        ctrl = GTSPController(host.model, self.config)
        try:
            example = host.example_input
            if example is not None:
                if isinstance(example, dict):
                    ctrl.calibrate(**example)
                else:
                    ctrl.calibrate(*(example if isinstance(example, (tuple, list)) else (example,)))
                ctrl.start_calibration()  # the cost model then follows the training batches
            if self.weights is not None:
                self.weights.attach(host)
        except Exception:
            ctrl.detach()  # leave the model as it was
            raise
        self.controller = ctrl

    def detach(self) -> None:
        if self.weights is not None:
            self.weights.detach()
        if self.controller is not None and not self.controller.finalized:
            self.controller.detach()
        self.controller = None

    def bind(self, host: Host) -> None:
        self.require().sync = host.sync
        if self.weights is not None:
            self.weights.bind(host)

    def trained_parameters(self) -> Dict[str, nn.Parameter]:
        ctrl = self.require()
        out = {f"{name}.layer_logit": layer.layer_logit for name, layer in zip(ctrl.names, ctrl.layers)}
        out.update({f"{name}.head_gate.logits": g.logits for name, g in zip(ctrl.names, ctrl.head_gates)
                    if g is not None})
        return out

    def masked_tensors(self) -> Dict[int, str]:
        return {} if self.weights is None else self.weights.masked_tensors()

    def start(self, step: int) -> None:
        if self.weights is not None:
            self.weights.start(step)

    def before_optimizer_step(self, optimizer: Any) -> None:
        if self.weights is not None:
            self.weights.before_optimizer_step(optimizer)
        self.require().before_optimizer_step()

    def after_optimizer_step(self, step: int) -> None:
        if self.weights is not None:
            self.weights.after_optimizer_step(step)
        self.require().after_optimizer_step(step)

    def report(self) -> Dict[str, float]:
        summary = self.require().summary()
        out = {k: float(v) for k, v in summary.items() if k in ("heads_kept", "layers_kept", "token_keep",
                                                                  "flops_removed")}
        if self.weights is not None:
            out["weights"] = self.weights.report()["global"]
        return out

    def removed_params(self):
        return None if self.weights is None else self.weights.removed_params()

    def finalize(self) -> None:
        if self.weights is not None and not self.weights.finalized:
            self.weights.finalize()  # weight zeros made permanent first
        self.result = self.require().finalize()

    @property
    def finalized(self) -> bool:
        return self.controller is not None and self.controller.finalized

    # -- state ----------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        state: Dict[str, Any] = {"plan": self.require().state_dict()}
        if self.weights is not None:
            state["weights"] = self.weights.state_dict()
        return state

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if "plan" not in state or (self.weights is not None) != ("weights" in state):
            raise ValueError(f"not a GTSP state for this configuration: keys {sorted(state)}")
        if self.weights is not None:
            self.weights.require().check_state(state["weights"]["controller"])
        self.require().load_state_dict(state["plan"])
        if self.weights is not None:
            self.weights.load_state_dict(state["weights"])

    def require(self) -> GTSPController:
        return attached(self.controller, "GTSP")

    def __repr__(self) -> str:
        return (f"GTSP(config={self.config!r}, weights={self.weight_program.schedule!r}, "
                f"finalize={self.finalize_at_end}, name={self.name!r})")
