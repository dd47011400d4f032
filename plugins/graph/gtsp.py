"""GTSP: sparsity in graph transformers built from PyG ``GPSConv`` (Liu, Bian et al., 2024,
"Exploring Sparsity in Graph Transformers", Neural Networks; GTSP).

GTSP removes four kinds of units: input tokens (nodes, with their edges), attention
heads, whole layers and individual weights. Here heads, layers and tokens carry learnable
gates trained end to end with the task loss (:mod:`.gtsp_gates`); a FLOPs budget ramps on a
core :class:`~sparsity_core.schedules.base.Schedule` (e.g. ``Cubic``) and, at every update
step, closes the units with the least Taylor importance per FLOP until
``F ≤ (1 − s(step))·F_dense`` (:mod:`.gtsp_plan`); weights are left to the core
(the :class:`~sparsity_plugins.graph.gtsp_program.GTSP` program runs the core's
``WeightSparsity`` on the linear weights). :meth:`GTSPController.finalize` then removes
closed heads (smaller attention), closed layers (identity) and dropped tokens (induced
subgraphs) for real; the finalized model computes what the gated model computes in eval.

Differences to the reference code: tokens are really dropped (it zeroed features), heads are
gated on the output projection instead of dying/regrowing rows of ``in_proj_weight``, layers
have learned gates instead of DropPath, and one FLOPs budget prices all three.

Plain loop (no Lightning)::

    ctrl = GTSPController(model, GTSPConfig(flops=Cubic(start_step=50, end_step=500, final_sparsity=0.3)))
    opt = torch.optim.Adam(model.parameters())           # after attaching: gates are parameters
    for step, batch in enumerate(loader, start=1):
        loss = F.cross_entropy(model(batch.x, batch.edge_index, batch.batch), batch.y)
        opt.zero_grad(); loss.backward()
        ctrl.before_optimizer_step(); opt.step(); ctrl.after_optimizer_step(step)
    ctrl.finalize()
"""
from __future__ import annotations

import logging
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn
from torch.nn.utils import parametrize

from sparsity_core.ranks import log_rank_zero
from sparsity_core.sync import LocalSync

from ._deps import torch_geometric
from .gtsp_attention import PrunedAttention, check_supported
from .gtsp_config import GTSPConfig
from .gtsp_flops import FlopsCounter, LayerCost, count_flops, gps_parts
from .gtsp_gates import GTSPLayer, HeadGate, PrunedGPSLayer, SkipLayer
from .gtsp_plan import GTSPPlan, PlanCost, allocate

log = logging.getLogger(__name__)

__all__ = ["GTSPConfig", "GTSPController", "GTSPPlan", "PrunedAttention", "PrunedGPSLayer", "SkipLayer",
           "count_flops", "find_gps_layers"]


def find_gps_layers(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    """``(name, GPSConv)`` for every GPS layer of ``model``; ``ValueError`` if there is none
    or GTSP is already attached / finalized."""
    GPSConv = torch_geometric("nn").GPSConv
    if any(isinstance(m, (GTSPLayer, PrunedGPSLayer, SkipLayer)) for m in model.modules()):
        raise ValueError("GTSP is already attached to (or was finalized on) this model")
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, GPSConv)]
    if not found:
        raise ValueError(f"{type(model).__name__} has no torch_geometric.nn.GPSConv layer: GTSP sparsifies GPS "
                         "graph transformers")
    if any(n == "" for n, _ in found):
        raise ValueError("pass the model that contains the GPSConv layers, not a GPSConv itself")
    return found


def _set_child(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, module)


class GTSPController:
    """Attaches GTSP gates to ``model`` and drives the budget (see the module docstring).

    Construction validates everything first (``ValueError``, model untouched), then wraps
    every ``GPSConv`` in a :class:`GTSPLayer` and, with ``"heads"`` in ``kinds``,
    parametrizes its ``attn.out_proj.weight`` with a :class:`HeadGate`.
    """

    def __init__(self, model: nn.Module, config: Optional[GTSPConfig] = None, sync: Optional[LocalSync] = None,
                 **overrides: Any) -> None:
        if config is not None and overrides:
            raise ValueError("pass either a GTSPConfig or keyword arguments, not both")
        config = config or GTSPConfig(**overrides)
        found = find_gps_layers(model)
        if "heads" in config.kinds:
            for name, gps in found:
                check_supported(gps.attn, f"{name}.attn")
        self.model, self.config, self.sync = model, config, sync or LocalSync()
        self.names = [n for n, _ in found]
        self.layers: List[GTSPLayer] = []
        self.head_gates: List[Optional[HeadGate]] = []
        self.generator = torch.Generator().manual_seed(config.seed)
        for name, gps in found:
            layer = GTSPLayer(gps, tokens="tokens" in config.kinds, edge_keys=config.edge_keys,
                              token_noise=config.token_noise)
            layer.generator = self.generator
            p = next(gps.parameters(), None)
            if p is not None:
                layer.to(device=p.device, dtype=p.dtype)
            gate = None
            if "heads" in config.kinds:
                gate = HeadGate(gps.attn.num_heads, gps.attn.head_dim).to(gps.attn.out_proj.weight.device)
                parametrize.register_parametrization(gps.attn.out_proj, "weight", gate)
            _set_child(model, name, layer)
            self.layers.append(layer)
            self.head_gates.append(gate)
        heads = [gps.attn.num_heads if hasattr(gps.attn, "num_heads") else gps.heads for _, gps in found]
        self.plan = GTSPPlan.dense(heads)
        self.importance = {"heads": [[0.0] * h for h in heads], "layers": [0.0] * len(heads),
                           "tokens": [0.0] * len(heads)}
        self.observed = 0
        self.step, self.last_update_step, self.history = -1, None, []
        self.costs: Optional[List[LayerCost]] = None
        self.other_flops = 0.0
        self.finalized = False
        self._other_counter: Optional[FlopsCounter] = None
        self.start_calibration()

    # -- cost model -----------------------------------------------------------------------
    def start_calibration(self) -> None:
        """(Re)build the FLOPs model from the next ``calibration_batches`` forward passes."""
        if self.calibrating:
            self._other_counter.stop()
        inside = {id(m) for layer in self.layers for m in layer.modules()}
        for layer in self.layers:
            layer.calib = {"sizes": [], "edges": [], "node": [], "edge": []}
        self._other_counter = FlopsCounter(self.model, parts=gps_parts(self.model),
                                           select=lambda m: id(m) not in inside).start()

    @property
    def calibrating(self) -> bool:
        return self._other_counter is not None

    def _costs_now(self) -> Tuple[List[LayerCost], float]:
        if not self.calibrating:
            return self.costs, self.other_flops
        forwards = len(self.layers[0].calib["sizes"])
        if forwards == 0:
            raise ValueError("GTSP has not seen a forward pass yet: its FLOPs model needs at least one batch "
                             "(call calibrate(...) or train a step before the first update)")
        costs = []
        for i, layer in enumerate(self.layers):
            c, attn = layer.calib, layer.gps.attn
            if c["node"]:
                node, edge = sum(c["node"]) / len(c["node"]), sum(c["edge"]) / len(c["edge"])
            else:  # closed before it ran in this window: its per-node/edge costs from before
                node, edge = (self.costs[i].node_flops, self.costs[i].edge_flops) if self.costs else (0.0, 0.0)
            # softmax attention is priced analytically; other attention types (performer)
            # only through their linear maps, which the calibration counts per node
            mha = isinstance(attn, nn.MultiheadAttention)
            costs.append(LayerCost(layer.gps.channels, int(attn.num_heads) if mha else 0,
                                   int(attn.head_dim) if mha else 0, node, edge,
                                   [list(s) for s in c["sizes"]], list(c["edges"]),
                                   getattr(attn, "bucket_slack", None) if mha else None))
        return costs, self._other_counter.report.total / forwards

    def _end_calibration(self) -> None:
        if not self.calibrating:
            return
        costs, other = self._costs_now() if self.layers[0].calib["sizes"] else (None, 0.0)
        self._other_counter.stop()
        self._other_counter = None
        for layer in self.layers:
            layer.calib = None
        self.costs, self.other_flops = costs, other

    def calibrate(self, *args: Any, **kwargs: Any) -> None:
        """Build the FLOPs model from one forward pass ``model(*args, **kwargs)`` (no
        gradients, eval mode, then the previous mode) and check the final budget is
        feasible (``ValueError`` otherwise)."""
        if not self.calibrating:
            self.start_calibration()
        was = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                self.model(*args, **kwargs)
        finally:
            self.model.train(was)
        self._end_calibration()
        self.check_feasible()

    def check_feasible(self) -> None:
        costs, other = self._costs_now()
        zero = {"heads": [[0.0] * len(h) for h in self.plan.head_keep], "layers": [0.0] * len(self.layers),
                "tokens": [0.0] * len(self.layers)}
        allocate(GTSPPlan.dense([len(h) for h in self.plan.head_keep]), costs, other, zero,
                 self.config.schedule.final, self.config.limits)

    # -- training-loop interface ----------------------------------------------------------
    def before_optimizer_step(self) -> None:
        """Gradients are final: fold this step's Taylor terms into the importance EMA."""
        if self.finalized:
            return
        heads = [g.take_taylor() if g is not None else torch.zeros(len(h))
                 for g, h in zip(self.head_gates, self.plan.head_keep)]
        layer_band = [layer.take_taylor() for layer in self.layers]
        flat = torch.cat([torch.cat(heads), torch.stack([lb[0] for lb in layer_band]),
                          torch.stack([lb[1] for lb in layer_band])]).abs().double()
        flat = self.sync.all_reduce_mean(flat).cpu()
        old = torch.tensor([v for h in self.importance["heads"] for v in h] + self.importance["layers"]
                           + self.importance["tokens"], dtype=torch.float64)
        new = flat if self.observed == 0 else self.config.ema * old + (1.0 - self.config.ema) * flat
        self.observed += 1
        vals, i = new.tolist(), 0
        for h in self.importance["heads"]:
            h[:] = vals[i:i + len(h)]
            i += len(h)
        n = len(self.layers)
        self.importance["layers"] = vals[i:i + n]
        self.importance["tokens"] = vals[i + n:i + 2 * n]

    def after_optimizer_step(self, step: int) -> bool:
        """Call once per optimizer step with the number of steps done; returns whether the
        plan changed."""
        if self.finalized:
            return False
        self.step = step
        if self.calibrating and len(self.layers[0].calib["sizes"]) >= self.config.calibration_batches:
            self._end_calibration()
            self.check_feasible()
        return self.update(step)

    def update(self, step: int, force: bool = False) -> bool:
        schedule = self.config.schedule
        if not (force or schedule.is_update_step(step, self.config.update_every)) or step == self.last_update_step:
            return False
        target = schedule.value(step)
        self.last_update_step = step
        if target <= 0:
            return False
        costs, other = self._costs_now()
        ceiling = schedule.final + self.config.overshoot
        new = allocate(self.plan, costs, other, self.importance, target, self.config.limits, ceiling)
        new = GTSPPlan.from_state(self.sync.broadcast(new.state()))
        changed = new != self.plan
        self.apply_plan(new)
        self.history.append({"step": step, "target": target, "flops_removed": self.flops_removed()})
        log_rank_zero(log, logging.DEBUG, "GTSP step %d: target %.3f, plan %s", step, target, new)
        return changed

    def apply_plan(self, plan: GTSPPlan) -> None:
        """Set the gates to ``plan`` (closed heads/layers get gate 0; token keep ratios)."""
        shape = [len(h) for h in self.plan.head_keep]
        if [len(h) for h in plan.head_keep] != shape or len(plan.token_keep) != len(shape):
            raise ValueError(f"plan does not fit the model's {len(shape)} layers with heads {shape}")
        with torch.no_grad():
            for layer, gate, open_, keep, ratio in zip(self.layers, self.head_gates, plan.layer_open,
                                                       plan.head_keep, plan.token_keep):
                layer.layer_open.fill_(bool(open_))
                layer.token_keep.fill_(float(ratio))
                if gate is not None:
                    gate.mask.copy_(torch.tensor(keep, dtype=torch.bool))
        self.plan = plan.copy()

    # -- reporting ------------------------------------------------------------------------
    def flops_removed(self, plan: Optional[GTSPPlan] = None) -> float:
        """Fraction of the dense FLOPs the plan removes, by the analytic cost model."""
        costs, other = self._costs_now()
        plan = plan or self.plan
        dense = PlanCost(costs, other, scorer=False).dense["flops"]
        return 1.0 - PlanCost(costs, other, scorer="tokens" in self.config.kinds).flops(plan) / dense

    def summary(self) -> Dict[str, float]:
        p = self.plan
        out = {"heads_kept": p.heads_in_open_layers(), "heads": sum(map(len, p.head_keep)),
               "layers_kept": sum(p.layer_open), "layers": len(p.layer_open),
               "token_keep": sum(p.token_keep) / len(p.token_keep)}
        try:
            out["flops_removed"] = self.flops_removed()
        except ValueError:  # no forward pass seen yet
            pass
        return out

    # -- finalize -------------------------------------------------------------------------
    def finalize(self) -> Dict[str, float]:
        """Remove closed heads, layers and dropped tokens for real (see the module); the
        result computes what the gated model computes in eval. Returns :meth:`summary`."""
        if self.finalized:
            raise RuntimeError("GTSP was already finalized on this model")
        summary = self.summary()
        self._end_calibration()
        for name, layer, gate, open_, keep, ratio in zip(self.names, self.layers, self.head_gates,
                                                         self.plan.layer_open, self.plan.head_keep,
                                                         self.plan.token_keep):
            if not open_:
                _set_child(self.model, name, SkipLayer())
                continue
            gps = layer.gps
            if gate is not None:
                if all(keep):  # fold the gate scales into the output projection
                    parametrize.remove_parametrizations(gps.attn.out_proj, "weight", leave_parametrized=True)
                else:
                    gps.attn = PrunedAttention.from_gated(gps.attn, torch.tensor(keep))
            scale = float(layer.gate().detach())
            scorer = layer.token_scorer if ratio < 1.0 else None
            _set_child(self.model, name, PrunedGPSLayer(gps, scale, ratio, scorer, self.config.edge_keys))
        self.finalized = True
        return summary

    def detach(self) -> None:
        """Take the gates off again (their current scales folded in): the model gets back its
        ``GPSConv`` layers. Used when setting up fails after attaching."""
        self._end_calibration()
        for name, layer, gate in zip(self.names, self.layers, self.head_gates):
            if gate is not None and parametrize.is_parametrized(layer.gps.attn.out_proj, "weight"):
                parametrize.remove_parametrizations(layer.gps.attn.out_proj, "weight", leave_parametrized=True)
            _set_child(self.model, name, layer.gps)
        self.finalized = True

    # -- state ----------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        costs, other = (None, 0.0)
        if not self.calibrating or self.layers[0].calib["sizes"]:
            costs, other = self._costs_now()
        return {"layers": list(self.names), "plan": self.plan.state(),
                "importance": {"heads": [list(h) for h in self.importance["heads"]],
                               "layers": list(self.importance["layers"]), "tokens": list(self.importance["tokens"])},
                "observed": self.observed, "step": self.step, "last_update_step": self.last_update_step,
                "history": [dict(h) for h in self.history], "costs": None if costs is None else [c.state() for c in costs],
                "other_flops": other, "generator": self.generator.get_state(), "finalized": self.finalized}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if list(state.get("layers", [])) != self.names:
            raise ValueError(f"GTSP state was saved for layers {state.get('layers')}, this model has {self.names}")
        if state.get("finalized"):
            raise ValueError("this GTSP state was saved after finalize; rebuild the pruned model instead of resuming")
        plan = GTSPPlan.from_state(state["plan"])
        self.apply_plan(plan)  # validates the shapes before anything else changes
        imp = state["importance"]
        self.importance = {"heads": [list(map(float, h)) for h in imp["heads"]],
                           "layers": list(map(float, imp["layers"])), "tokens": list(map(float, imp["tokens"]))}
        self.observed, self.step = int(state["observed"]), int(state["step"])
        self.last_update_step = state["last_update_step"]
        self.history = [dict(h) for h in state.get("history", [])]
        if state.get("costs") is not None:
            self._end_calibration()
            self.costs = [LayerCost(**c) for c in state["costs"]]
            self.other_flops = float(state["other_flops"])
        self.generator.set_state(state["generator"])

    def __repr__(self) -> str:
        return f"GTSPController(layers={len(self.layers)}, config={self.config!r})"
