"""The ``UGS`` Lightning callback: graph lottery tickets on an existing PyG model.

    trainer = pl.Trainer(max_steps=6 * 200, callbacks=[UGS(rounds=5, steps_per_round=200)])
    trainer.fit(module, datamodule=node_datamodule(data))

See :mod:`.ugs` for the method. The graph is taken from ``edge_index=`` or from the
datamodule's ``data`` (``LightningNodeData``, full-batch): UGS masks the edges of one fixed
graph, so every forward must see that graph (its edges in the same order).
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

import pytorch_lightning as pl
import torch
from lightning_utilities.core.rank_zero import rank_zero_warn
from torch import Tensor
from torch.nn.utils import parametrize

from sparsity_core.controller import SparsityController
from sparsity_core.discovery import Patterns, discover_targets
from sparsity_core.lightning.callback import SparsityCallback
from sparsity_core.schedules.iterative import Iterative
from sparsity_core.targets import Target

from ._deps import torch_geometric
from .ugs import EDGE_MASK_NAME, ROUND_DENSITY, EdgeMask, RoundRates, WeightMask, _check_nonneg, _check_rate


def _drop_parametrized_copy(tensor_name: str):
    """PyG's ``Linear._save_to_state_dict`` writes ``weight`` itself; under a
    parametrization that is the computed ``W ⊙ m`` next to ``parametrizations.weight.*``,
    and ``load_state_dict`` then rejects it as an unexpected key. Drop the computed copy."""

    def hook(module, state_dict, prefix, local_metadata):
        if parametrize.is_parametrized(module, tensor_name):
            state_dict.pop(prefix + tensor_name, None)

    return hook


class UGS(SparsityCallback):
    """Unified GNN sparsification (Chen et al., 2021) as a callback over the core's
    iterative schedule.

    Args:
        rounds: pruning rounds; after round ``r`` the edge density is ``(1 − edge_rate)^r``
            and the weight density ``(1 − weight_rate)^r``.
        steps_per_round: optimizer steps of training per round; training after the last
            round (from the rewound weights, masks fixed) trains the ticket.
        edge_rate, weight_rate: fraction of the remaining edges / weights pruned per round
            (UGS: 0.05 and 0.2); 0 leaves that kind unmasked.
        edge_l1, weight_l1: ℓ₁ coefficients λ_g, λ_θ on the masks.
        edge_index, num_nodes: the graph (default: ``trainer.datamodule.data``).
        undirected: one mask value per undirected edge (default: whether the graph is).
        rewind_step: optimizer step whose weights every round rewinds to (0: initialization).
        include, exclude: regexes on module names choosing the masked weights (default:
            every weight of two or more dimensions, the last layer included, as UGS does).
        finalize: at the end of fit, bake ``W ⊙ m_θ`` into plain weights and freeze the
            edge mask (it stays attached: the model's function does not change).
    """

    def __init__(self, rounds: int = 5, steps_per_round: int = 200, edge_rate: float = 0.05,
                 weight_rate: float = 0.2, edge_l1: float = 1e-2, weight_l1: float = 1e-2,
                 edge_index: Optional[Tensor] = None, num_nodes: Optional[int] = None,
                 undirected: Optional[bool] = None, rewind_step: int = 0, include: Patterns = None,
                 exclude: Patterns = None, finalize: bool = False, log_per_target: bool = True) -> None:
        self.edge_rate = _check_rate(edge_rate, "edge_rate")
        self.weight_rate = _check_rate(weight_rate, "weight_rate")
        if self.edge_rate == 0.0 and self.weight_rate == 0.0:
            raise ValueError("edge_rate and weight_rate are both 0: nothing to prune")
        self.edge_l1 = _check_nonneg(edge_l1, "edge_l1")
        self.weight_l1 = _check_nonneg(weight_l1, "weight_l1")
        schedule = Iterative(final_sparsity=1.0 - ROUND_DENSITY ** rounds, rounds=rounds,
                             steps_per_round=steps_per_round, rewind_step=rewind_step)
        super().__init__(schedule=schedule, criterion="magnitude", enforcement="hard", include=include,
                         exclude=exclude, update_every=1, finalize=finalize, log_per_target=log_per_target)
        self.edge_index, self.num_nodes, self.undirected = edge_index, num_nodes, undirected
        self.edge_mask: Optional[EdgeMask] = None
        self._weight_sites: List[tuple] = []  # (module, tensor name) with a WeightMask

    @property
    def state_key(self) -> str:
        return self._generate_state_key(schedule=repr(self.schedule), edge_rate=self.edge_rate,
                                        weight_rate=self.weight_rate, include=self.include, exclude=self.exclude)

    # -- set-up ---------------------------------------------------------------------------
    def _graph(self, trainer: "pl.Trainer"):
        edge_index, num_nodes = self.edge_index, self.num_nodes
        if edge_index is None:
            data = getattr(getattr(trainer, "datamodule", None), "data", None)
            edge_index = getattr(data, "edge_index", None)
            if edge_index is None:
                raise ValueError("UGS needs the graph: pass edge_index= or fit with a datamodule holding it as "
                                 "`.data` (torch_geometric.data.lightning.LightningNodeData, loader='full')")
            num_nodes = num_nodes or data.num_nodes
        if num_nodes is None:
            num_nodes = int(edge_index.max()) + 1 if isinstance(edge_index, Tensor) and edge_index.numel() else 0
        return edge_index, int(num_nodes)

    def build_controller(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> SparsityController:
        MessagePassing = torch_geometric("nn").MessagePassing
        if not any(isinstance(m, MessagePassing) for m in pl_module.modules()):
            raise ValueError(f"{type(pl_module).__name__} has no torch_geometric MessagePassing layer to mask")
        if hasattr(pl_module, EDGE_MASK_NAME) or any(parametrize.is_parametrized(m) for m in pl_module.modules()):
            raise ValueError("the model already carries masks or parametrizations (UGS applied twice?)")
        # Validate everything before the model changes.
        edge_mask = None
        if self.edge_rate > 0:
            edge_index, num_nodes = self._graph(trainer)
            undirected = self.undirected
            if undirected is None:
                undirected = torch_geometric("utils").is_undirected(edge_index, num_nodes=num_nodes)
            edge_mask = EdgeMask(edge_index, num_nodes, bool(undirected))
        weights = (discover_targets(pl_module, include=self.include, exclude=self.exclude, skip_head=False)
                   if self.weight_rate > 0 else [])
        # Now attach the masks.
        targets: List[Target] = []
        if edge_mask is not None:
            pl_module.add_module(EDGE_MASK_NAME, edge_mask)
            edge_mask.attach(pl_module)
            self.edge_mask = edge_mask
            targets.append(Target(name=f"{EDGE_MASK_NAME}.mask", param=edge_mask.mask, module_name=EDGE_MASK_NAME))
        for t in weights:
            module_name, tensor_name = t.name.rsplit(".", 1)
            module = pl_module.get_submodule(module_name)
            parametrize.register_parametrization(module, tensor_name, WeightMask(t.shape))
            if hasattr(type(module), "_save_to_state_dict") and type(module)._save_to_state_dict is not \
                    torch.nn.Module._save_to_state_dict:
                module.register_state_dict_post_hook(_drop_parametrized_copy(tensor_name))
            self._weight_sites.append((module, tensor_name))
            mask = getattr(module.parametrizations, tensor_name)[0].mask
            targets.append(Target(name=f"{module_name}.parametrizations.{tensor_name}.0.mask", param=mask,
                                  module_name=module_name, macs_per_unit=t.macs_per_unit))
        groups = [([t.name for t in targets if t.module_name == EDGE_MASK_NAME], self.edge_rate),
                  ([t.name for t in targets if t.module_name != EDGE_MASK_NAME], self.weight_rate)]
        self.allocator = RoundRates(groups)
        return SparsityController(targets, schedule=self.schedule, criterion=self.criterion, allocator=self.allocator,
                                  enforcement=self.enforcement, update_every=1, measure="units", model=pl_module)

    def on_fit_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        super().on_fit_start(trainer, pl_module)
        owned = {id(p) for opt in trainer.optimizers for g in opt.param_groups for p in g["params"]}
        missing = [t.param for t in self._require().targets if id(t.param) not in owned]
        if missing and trainer.optimizers:
            rank_zero_warn(f"UGS: {len(missing)} mask tensor(s) were not in the optimizer (configure_optimizers "
                           "did not use self.parameters()); added as a new param group of the first optimizer")
            trainer.optimizers[0].add_param_group({"params": missing})

    # -- per optimizer step ---------------------------------------------------------------
    def on_before_optimizer_step(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", optimizer: Any) -> None:
        ctrl = self._require()
        if not ctrl.finalized:
            owned = {id(p) for g in optimizer.param_groups for p in g["params"]}
            with torch.no_grad():
                for t in ctrl.targets:
                    lam = self.edge_l1 if t.module_name == EDGE_MASK_NAME else self.weight_l1
                    if lam and t.param.grad is not None and id(t.param) in owned:
                        t.param.grad.add_(torch.sign(t.param), alpha=lam)  # ∂ λ‖m‖₁ / ∂m
        super().on_before_optimizer_step(trainer, pl_module, optimizer)

    def on_train_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        super().on_train_end(trainer, pl_module)
        if self.finalize and self._weight_sites:
            for module, name in self._weight_sites:
                parametrize.remove_parametrizations(module, name, leave_parametrized=True)
            self._weight_sites = []
            if self.edge_mask is not None:
                self.edge_mask.mask.requires_grad_(False)

    # -- results --------------------------------------------------------------------------
    def sparsity_report(self) -> Dict[str, float]:
        """``global``: fraction of the masked weights pruned; ``edges``: of the edges."""
        ctrl = self._require()
        out = {}
        for key, pick in (("edges", True), ("weights", False)):
            ts = [t for t in ctrl.targets if (t.module_name == EDGE_MASK_NAME) == pick]
            if ts:
                out[key] = ctrl.masks.weighted_sparsity(ts, "units") if ctrl.masks else 0.0
        out["global"] = out.get("weights", out.get("edges", 0.0))
        return out

    def kept_edge_index(self) -> Tensor:
        """The ticket's graph: the edges whose mask is non-zero (self-loops kept)."""
        if self.edge_mask is None:
            raise ValueError("UGS has no edge mask (edge_rate=0 or not set up)")
        return self.edge_mask.edge_index[:, self.edge_mask.kept()]

    def __repr__(self) -> str:
        return (f"UGS(rounds={self.schedule.rounds}, steps_per_round={self.schedule.steps_per_round}, "
                f"edge_rate={self.edge_rate}, weight_rate={self.weight_rate}, edge_l1={self.edge_l1}, "
                f"weight_l1={self.weight_l1}, rewind_step={self.schedule.rewind_step})")
