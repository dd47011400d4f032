"""Pruning as a game: channel groups whose participation becomes dominated collapse to zero.

    trainer = pl.Trainer(callbacks=[SparsityCallback(programs=[EquilibriumPruning(cost=0.02)])])
    # or in a config: programs: [{program: game, cost: 0.02, lr: 0.05}]

Shah & Khan, 2025, "Pruning as a Game: Equilibrium-Driven Sparsification of Neural
Networks" (https://arxiv.org/abs/2512.22106): parameter groups are players of a continuous
non-cooperative game; each chooses its participation ``s_u ∈ [0, 1]`` to balance its
contribution to the objective against costs of participating and of competing with
redundant players; sparsity is the equilibrium where participating is dominated. Our
formulation on the vision plugin's channel groups (every unit of a group is a player; its
participation scales what the group's consumers read, :mod:`~.participation`):

    U_u(s_u; s_−u, θ) = −L(θ, s) − λ·s_u − (α/2)·s_u² − γ·s_u·mean_{v≠u} ρ_uv·s_v

with ``ρ_uv = |cos(θ_u, θ_v)|`` the redundancy of two units of one group. Each optimizer step
of the weights θ (the user's loss, unchanged) is also a step of the game: every player
ascends its own utility, ``s_u ← Π_[0,1](s_u + η·∂U_u/∂s_u)``, with ``∂L/∂s_u`` from the
same backward. If a player's marginal benefit ``−∂L/∂s_u`` stays below ``λ − δ`` (δ > 0)
whatever the others do, participation is strictly dominated: ``s_u`` falls by at least
``η·δ`` per step, reaches 0 within ``⌈s_u/(η·δ)⌉`` steps and the projection keeps it there.
A player whose benefit exceeds ``λ + α + γ`` stays at 1. With ``absorbing=True`` (default) a
collapsed unit stays out for good (its mask is pruned).

At ``finalize`` (end of fit with ``finalize=True``) the participations are folded into the
consumers' weights (the network's function does not change) and the collapsed units are
removed physically (:func:`~.removal.remove_channels`, optimizers rebound); a group whose
units all collapsed keeps ``min_keep`` of them, which contribute zero. The participations
are not in any optimizer (the program steps them) and are not AMP-unscaled: use fp32/bf16.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

import torch

from sparsity_core.discovery import Patterns, as_patterns
from sparsity_core.program import Host, Program, attached
from sparsity_core.registry import PROGRAMS
from sparsity_core.sync import LocalSync
from sparsity_core.validation import check_int, check_nonnegative, check_positive, check_range

from .budget import ChannelCost
from .groups import ChannelGroups, discover_channel_groups
from .participation import ParticipationGates, consumer_slices, marginal_utility, participation_step, redundancy
from .record import PruningRecord
from .removal import remove_channels


@PROGRAMS.register("game")
class EquilibriumPruning(Program):
    """Args:
        lr: η, the players' step size.  cost: λ.  alpha: α.  gamma: γ (0: no competition).
        init: the initial participation of every unit, in (0, 1].
        absorbing: a unit that reaches 0 stays pruned.  min_keep: units a group keeps at removal.
        exclude: regular expressions of module names never pruned (classifier heads never are).
        finalize: fold the participations and remove collapsed units at the end of fit.
    """

    name = "game"

    def __init__(self, lr: float = 0.05, cost: float = 0.01, alpha: float = 0.0, gamma: float = 0.01,
                 init: float = 1.0, absorbing: bool = True, min_keep: int = 1, exclude: Patterns = None,
                 finalize: bool = True, name: Optional[str] = None) -> None:
        self.lr = check_positive(lr, "game lr")
        self.cost = check_nonnegative(cost, "game cost")
        self.alpha = check_nonnegative(alpha, "game alpha")
        self.gamma = check_nonnegative(gamma, "game gamma")
        self.init = check_range(init, "game init", low_open=True)
        self.absorbing = bool(absorbing)
        self.min_keep = check_int(min_keep, "game min_keep", minimum=1)
        as_patterns(exclude, "exclude")
        self.exclude = tuple([exclude] if isinstance(exclude, str) else (exclude or ()))
        self.finalize_at_end = bool(finalize)
        if name is not None:
            self.name = name
        self.groups: Optional[ChannelGroups] = None
        self.participation: Dict[str, torch.Tensor] = {}
        self.out: Dict[str, torch.Tensor] = {}  # absorbed (collapsed for good) units
        self.gates: Optional[ParticipationGates] = None
        self.record: Optional[PruningRecord] = None
        self.steps = 0
        self.optimizers: List[torch.optim.Optimizer] = []
        self.sync = LocalSync()  # the host's at bind: every rank plays the same game

    def state_id(self) -> str:
        return f"{self.name}(exclude={list(self.exclude)!r})"

    # -- set-up ---------------------------------------------------------------------------
    def attach(self, host: Host) -> None:
        if host.example_input is None:
            raise ValueError("the game program needs pl_module.example_input_array to trace the channel groups")
        groups = discover_channel_groups(host.model, host.example_input, ignore=self.exclude)
        readers = {t.name: consumer_slices(t, host.model) for t in groups.targets}
        groups.targets = [t for t in groups.targets if readers[t.name]]
        if not groups.targets:
            raise ValueError("no channel group is read by a convolution or linear layer: nothing to gate")
        self.groups = groups
        self.participation = {t.name: torch.full((t.num_units,), self.init, requires_grad=True)
                              for t in groups.targets}
        self.out = {t.name: torch.zeros(t.num_units, dtype=torch.bool) for t in groups.targets}
        self.gates = ParticipationGates(host.model, {t.name: readers[t.name] for t in groups.targets},
                                        self.participation)
        self.gates.install()
        self.cost_model = ChannelCost(groups)

    def bind(self, host: Host) -> None:
        self.optimizers, self.sync = list(host.optimizers), host.sync

    def detach(self) -> None:
        if self.gates is not None:
            self.gates.remove()

    def masked_tensors(self) -> Dict[int, str]:
        if self.groups is None:
            return {}
        return {id(t.tensor(s)): s.tensor for t in self.groups.targets for s in t.slices if s.is_param}

    # -- the game -------------------------------------------------------------------------
    def before_optimizer_step(self, optimizer: Any) -> None:
        """One step of every player, from the gradients of this optimizer step (once per step)."""
        groups = attached(self.groups, "the game program")
        if self.finalized or all(s.grad is None for s in self.participation.values()):
            return
        for t in groups.targets:
            s = self.participation[t.name]
            grad = torch.zeros_like(s) if s.grad is None else self.sync.all_reduce_mean(s.grad.detach())
            rho = redundancy(t) if self.gamma else None
            g = marginal_utility(s.detach(), grad, rho, self.cost, self.alpha, self.gamma)
            new = participation_step(s.detach(), g, self.lr)
            if self.absorbing:
                self.out[t.name] |= new <= 0
                new = new.masked_fill(self.out[t.name], 0.0)
            with torch.no_grad():
                s.copy_(new)
            s.grad = None
        self.steps += 1

    def masks(self) -> Dict[str, torch.Tensor]:
        """Kept units: participation > 0; a group with fewer than ``min_keep`` keeps its
        ``min_keep`` highest-participation units (lowest index first on ties)."""
        out = {}
        for name, s in self.participation.items():
            keep = s.detach() > 0
            k = min(self.min_keep, s.numel())
            if int(keep.sum()) < k:
                keep = torch.zeros_like(keep)
                keep[torch.argsort(-s.detach(), stable=True)[:k]] = True
            out[name] = keep
        return out

    def report(self) -> Dict[str, float]:
        if self.groups is None:
            return {}
        masks = self.masks()
        units = sum(m.numel() for m in masks.values())
        out = {"collapsed_units": 1.0 - sum(int(m.sum()) for m in masks.values()) / units,
               "participation": float(torch.cat([s.detach() for s in self.participation.values()]).mean())}
        if not self.finalized:
            out["macs_removed"] = 1.0 - self.cost_model.cost_of_masks(masks)["macs"] / self.cost_model.dense["macs"]
        return out

    # -- the end --------------------------------------------------------------------------
    @property
    def finalized(self) -> bool:
        return self.record is not None

    def finalize(self) -> None:
        """Fold the participations into the consumers and remove the collapsed units."""
        groups = attached(self.groups, "the game program")
        if self.finalized:
            return
        masks = self.masks()
        saved = self.gates.fold()
        self.gates.remove()
        try:
            self.record = remove_channels(groups, masks, self.optimizers)
        except BaseException:  # the model is back in place: unfold and gate again
            self.gates.unfold(saved)
            self.gates.install()
            raise

    # -- state ----------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        return {"participation": {k: v.detach().clone() for k, v in self.participation.items()},
                "out": {k: v.clone() for k, v in self.out.items()}, "steps": self.steps}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        part, out = state.get("participation", {}), state.get("out", {})
        if set(part) != set(self.participation) or set(out) != set(self.participation):
            raise ValueError(f"game state was saved for groups {sorted(part)}, this model has "
                             f"{sorted(self.participation)}")
        for k, v in part.items():
            if tuple(v.shape) != tuple(self.participation[k].shape) or tuple(out[k].shape) != tuple(v.shape):
                raise ValueError(f"game state for {k!r} has shape {tuple(v.shape)}, expected "
                                 f"{tuple(self.participation[k].shape)}")
            if bool(((v < 0) | (v > 1)).any()):
                raise ValueError(f"game state for {k!r} holds participations outside [0, 1]")
        with torch.no_grad():
            for k, v in part.items():
                self.participation[k].copy_(v)
                self.out[k] = out[k].bool().clone()
        self.steps = int(state.get("steps", 0))

    def __repr__(self) -> str:
        return (f"EquilibriumPruning(lr={self.lr}, cost={self.cost}, alpha={self.alpha}, gamma={self.gamma}, "
                f"init={self.init}, absorbing={self.absorbing}, min_keep={self.min_keep}, exclude={self.exclude!r}, "
                f"name={self.name!r})")
