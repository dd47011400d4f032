"""Participation gates on channel groups, and the game's update (see :mod:`~.game`).

A group's participation vector ``s ∈ [0, 1]^U`` scales what every *consumer* of the group
reads: the input columns (dim 1) of each convolution or linear in the group's slices are fed
``x_c · s_{unit(c)}``. That equals scaling those weight columns by ``s``, so at the end the
participations fold into the weights (:meth:`ParticipationGates.fold`) and a unit with
``s_u = 0`` contributes nothing: removing it leaves the network's function unchanged.

Pure functions, exact on tiny inputs:

- :func:`redundancy`: ``ρ_uv = |cos(θ_u, θ_v)|`` over every parameter entry the units own
  (the sums of a unit's rows in each slice), ``ρ_uu = 0``;
- :func:`marginal_utility`: ``g_u = −∂L/∂s_u − λ − α·s_u − γ·mean_{v≠u} ρ_uv·s_v``;
- :func:`participation_step`: ``s ← Π_[0,1](s + η·g)``.
"""
from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Tuple

import torch
from torch import nn

from sparsity_core.targets import TensorSlice

from .groups import ChannelGroup


def redundancy(group: ChannelGroup) -> torch.Tensor:
    """``ρ`` (``U×U``, float64): |cosine| between units' parameter vectors, zero diagonal
    (and zero for a unit whose entries are all zero)."""
    u = group.num_units
    gram = torch.zeros(u, u, dtype=torch.float64)
    for s in group.slices:
        if not s.is_param:
            continue
        t = group.tensor(s).detach().double().cpu()
        rows = t.movedim(s.dim, 0).reshape(t.shape[s.dim], -1)[s.index]
        per_unit = torch.zeros(u, rows.shape[1], dtype=torch.float64).index_add_(0, s.unit.cpu(), rows)
        gram += per_unit @ per_unit.T
    norm = gram.diagonal().clamp_min(0).sqrt()
    rho = (gram / (norm[:, None] * norm[None, :]).clamp_min(1e-300)).abs()
    rho[(norm == 0)[:, None] | (norm == 0)[None, :]] = 0.0
    rho.fill_diagonal_(0.0)
    return rho


def marginal_utility(s: torch.Tensor, grad: torch.Tensor, rho: Optional[torch.Tensor], cost: float, alpha: float,
                     gamma: float) -> torch.Tensor:
    """``g_u = ∂U_u/∂s_u = −∂L/∂s_u − λ − α·s_u − γ·mean_{v≠u} ρ_uv·s_v`` (float64)."""
    s, grad = s.double(), grad.double()
    g = -grad - cost - alpha * s
    if gamma and rho is not None and s.numel() > 1:
        g = g - gamma * (rho.double() @ s) / (s.numel() - 1)
    return g


def participation_step(s: torch.Tensor, g: torch.Tensor, lr: float) -> torch.Tensor:
    """``Π_[0,1](s + η·g)``: projected gradient ascent of every player on its own utility."""
    return (s.double() + lr * g).clamp(0.0, 1.0).to(s.dtype)


def consumer_slices(group: ChannelGroup, model: nn.Module) -> List[Tuple[str, TensorSlice]]:
    """``(module name, slice)`` of the group's consumer inputs: dim 1 of the weight of a
    ``Linear`` or of an ungrouped, not transposed convolution."""
    out = []
    for s in group.slices:
        if not (s.is_param and s.dim == 1 and s.tensor.endswith("weight")):
            continue
        name = s.tensor[: -len("weight")].rstrip(".")
        module = model.get_submodule(name)
        conv = isinstance(module, nn.modules.conv._ConvNd) and module.groups == 1 and not module.transposed
        if conv or isinstance(module, nn.Linear):
            out.append((name, s))
    return out


class ParticipationGates:
    """Forward pre-hooks that feed every consumer ``x_c · s_{unit(c)}`` (see the module)."""

    def __init__(self, model: nn.Module, readers: Mapping[str, List[Tuple[str, TensorSlice]]],
                 participation: Mapping[str, torch.Tensor]) -> None:
        self.model, self.participation = model, participation
        self.by_module: Dict[str, List[Tuple[str, TensorSlice]]] = {}
        for group, pairs in readers.items():
            for module, s in pairs:
                self.by_module.setdefault(module, []).append((group, s))
        self.handles: List = []

    def install(self) -> None:
        self.remove()
        for name in self.by_module:
            module = self.model.get_submodule(name)
            self.handles.append(module.register_forward_pre_hook(self._hook(name, module)))

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []

    def gate(self, name: str, width: int, like: torch.Tensor) -> torch.Tensor:
        """The input scale vector of module ``name`` (length ``width``), differentiable in ``s``."""
        g = torch.ones(width, dtype=like.dtype, device=like.device)
        for group, s in self.by_module[name]:
            part = self.participation[group].to(device=like.device, dtype=like.dtype)
            factor = torch.ones(width, dtype=like.dtype, device=like.device)
            factor = factor.index_copy(0, s.index.to(like.device), part[s.unit.to(like.device)])
            g = g * factor
        return g

    def _hook(self, name: str, module: nn.Module):
        linear = isinstance(module, nn.Linear)

        def hook(mod, inputs):
            x = inputs[0]
            dim = -1 if linear else 1
            g = self.gate(name, x.shape[dim], x)
            view = [1] * x.dim()
            view[dim] = -1
            return (x * g.reshape(view),) + tuple(inputs[1:])
        return hook

    @torch.no_grad()
    def fold(self) -> Dict[str, torch.Tensor]:
        """Multiply every consumer's weight columns by its gate; returns the old weights."""
        saved = {}
        for name in self.by_module:
            w = self.model.get_submodule(name).weight
            saved[name] = w.detach().clone()
            g = self.gate(name, w.shape[1], w.detach())
            view = [1] * w.dim()
            view[1] = -1
            w.mul_(g.reshape(view))
        return saved

    @torch.no_grad()
    def unfold(self, saved: Mapping[str, torch.Tensor]) -> None:
        for name, value in saved.items():
            self.model.get_submodule(name).weight.copy_(value)
