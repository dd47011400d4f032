"""``GTSP``: graph-transformer sparsification inside ``Trainer.fit`` with one callback.

    trainer = pl.Trainer(callbacks=[GTSP(flops=Cubic(start_step=50, end_step=400, final_sparsity=0.3),
                                         weights=Cubic(start_step=50, end_step=400, final_sparsity=0.5))])

At ``setup`` the gates are attached to every ``GPSConv`` of the LightningModule (before
``configure_optimizers``, so ``self.parameters()`` includes them); with
``example_input_array`` set the budget is checked there on that input and an infeasible
one fails before training (the gates are taken off again); the FLOPs model itself is
calibrated on the first training batches. Each optimizer step folds the
gates' Taylor terms into the importance (``on_before_optimizer_step``), and when
``trainer.global_step`` advances the plan follows the FLOPs schedule
(``on_train_batch_end``). Weights are pruned by the core: this callback *is* a
:class:`~sparsity_core.lightning.callback.SparsityCallback` (magnitude criterion, global
ranking, hard masks) over the linear weights, the attention projections included. At the
end of fit the weight zeros are made permanent, then closed heads, layers and dropped tokens
are removed (:meth:`GTSPController.finalize`). ``state_dict`` holds both controllers, so a
resumed run continues with the same plan, importance, cost model and noise stream.
"""
from __future__ import annotations

import logging
from typing import Any, Dict, Optional, Union

import pytorch_lightning as pl
from pytorch_lightning.utilities import rank_zero_warn

from sparsity_core.controller import SparsityController
from sparsity_core.discovery import Patterns, _as_patterns, discover_targets
from sparsity_core.lightning.callback import SparsityCallback
from sparsity_core.lightning.sync import StrategySync
from sparsity_core.schedules.base import Schedule
from sparsity_core.targets import Target

from .gtsp import GTSPConfig, GTSPController

log = logging.getLogger(__name__)


class GTSP(SparsityCallback):
    """GTSP on the ``GPSConv`` layers of a LightningModule.

    Args:
        flops: FLOPs fraction to remove: a core schedule (starting at step >= 1) or a float.
        weights: weight sparsity of the linear weights (core magnitude pruning): a schedule
            such as ``Cubic`` or a float (0: dense weights).
        config: a full :class:`GTSPConfig` instead of ``flops`` + ``options``.
        finalize: remove the closed units (and make weight zeros permanent) at the end of fit.
        weight_exclude: extra regular expressions of modules whose weights stay dense
            (token scorers and the classifier head always do).
        weight_update_every: recompute weight masks every this many optimizer steps.
        options: other :class:`GTSPConfig` fields (``kinds``, ``max_heads``, ``update_every``...).
    """

    def __init__(self, flops: Union[float, Schedule] = 0.3, weights: Union[float, Schedule] = 0.0,
                 config: Optional[GTSPConfig] = None, finalize: bool = True, weight_exclude: Patterns = None,
                 weight_update_every: int = 10, **options: Any) -> None:
        if config is not None and (options or flops != 0.3):
            raise ValueError("pass either config=GTSPConfig(...) or flops=/options, not both")
        self.config = config or GTSPConfig(flops=flops, **options)
        exclude = [weight_exclude] if isinstance(weight_exclude, str) else list(weight_exclude or [])
        _as_patterns(exclude, "weight_exclude")
        super().__init__(schedule=weights, criterion="magnitude", allocator="global", enforcement="hard",
                         exclude=[r"token_scorer"] + exclude, update_every=weight_update_every,
                         finalize=finalize, log_per_target=False)
        self.gtsp: Optional[GTSPController] = None
        self._pending_gtsp: Optional[Dict[str, Any]] = None
        self.result: Dict[str, float] = {}

    @property
    def state_key(self) -> str:
        return self._generate_state_key(gtsp=repr(self.config), weights=repr(self.schedule))

    # -- set-up ---------------------------------------------------------------------------
    def setup(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", stage: str) -> None:
        if stage != "fit":
            return
        if self.gtsp is not None:
            if self.gtsp.model is not pl_module:
                raise ValueError("this GTSP callback already holds the gates of another model; use one per model")
            return super().setup(trainer, pl_module, stage)
        ctrl = GTSPController(pl_module, self.config)
        try:
            example = pl_module.example_input_array
            if example is not None:
                if isinstance(example, dict):
                    ctrl.calibrate(**example)
                else:
                    ctrl.calibrate(*(example if isinstance(example, (tuple, list)) else (example,)))
                ctrl.start_calibration()  # the cost model then follows the training batches
            super().setup(trainer, pl_module, stage)
        except Exception:
            ctrl.detach()  # leave the model as it was
            raise
        self.gtsp = ctrl
        if self._pending_gtsp is not None:
            ctrl.load_state_dict(self._pending_gtsp)
            self._pending_gtsp = None

    def build_controller(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> SparsityController:
        """Core weight sparsity over the discovered linear weights plus the gated output
        projections (whose weight lives in ``parametrizations.weight.original``)."""
        targets = discover_targets(pl_module, include=self.include, exclude=self.exclude, layout=self.layout)
        have = {t.name for t in targets}
        for name, param in pl_module.named_parameters():
            if name.endswith("out_proj.parametrizations.weight.original") and name not in have:
                targets.append(Target(name=name, param=param, module_name=name.rsplit(".", 3)[0]))
        return SparsityController(targets, schedule=self.schedule, criterion=self.criterion,
                                  allocator=self.allocator, enforcement=self.enforcement,
                                  update_every=self.update_every, measure=self.measure, model=pl_module)

    def on_fit_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        super().on_fit_start(trainer, pl_module)
        ctrl = self._gtsp()
        ctrl.sync = StrategySync(trainer)
        if ctrl.finalized:
            return
        owned = {id(p) for opt in trainer.optimizers for g in opt.param_groups for p in g["params"]}
        gates = [layer.layer_logit for layer in ctrl.layers] + [g.logits for g in ctrl.head_gates if g is not None]
        if not all(id(p) in owned for p in gates):
            rank_zero_warn("GTSP gate parameters are not in the optimizer (configure_optimizers should use "
                           "self.parameters()); they keep their initial values and only rank the units")

    # -- per optimizer step ---------------------------------------------------------------
    def on_before_optimizer_step(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", optimizer: Any) -> None:
        super().on_before_optimizer_step(trainer, pl_module, optimizer)
        self._gtsp().before_optimizer_step()

    def on_train_batch_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        advanced = trainer.global_step > self._seen_step
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        ctrl = self._gtsp()
        if not advanced or ctrl.finalized:
            return
        ctrl.after_optimizer_step(trainer.global_step)
        for key, value in ctrl.summary().items():
            if key in ("heads_kept", "layers_kept", "token_keep", "flops_removed"):
                pl_module.log(f"gtsp/{key}", float(value), on_step=True, on_epoch=False, rank_zero_only=True)

    def on_train_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        super().on_train_end(trainer, pl_module)  # weight zeros made permanent first
        ctrl = self._gtsp()
        if self.finalize and not ctrl.finalized:
            self.result = ctrl.finalize()

    # -- state ----------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        state = super().state_dict()
        if self.gtsp is not None:
            state["gtsp"] = self.gtsp.state_dict()
        elif self._pending_gtsp is not None:
            state["gtsp"] = dict(self._pending_gtsp)
        return state

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        if not state_dict:
            return
        if "gtsp" not in state_dict:
            raise ValueError(f"not a GTSP callback state: keys {sorted(state_dict)}")
        gtsp_state = state_dict["gtsp"]
        super().load_state_dict({k: v for k, v in state_dict.items() if k != "gtsp"})
        if self.gtsp is None:
            self._pending_gtsp = dict(gtsp_state)
        else:
            self.gtsp.load_state_dict(gtsp_state)

    def _gtsp(self) -> GTSPController:
        if self.gtsp is None:
            raise RuntimeError("GTSP is not set up: it runs inside Trainer.fit")
        return self.gtsp

    def __repr__(self) -> str:
        return f"GTSP(config={self.config!r}, weights={self.schedule!r}, finalize={self.finalize})"
