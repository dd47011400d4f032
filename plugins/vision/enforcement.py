"""Masks on coupled channel groups: how they act during training.

A group mask ``m ∈ {0,1}^U`` acts on every tensor slice of the group: position ``i`` of a
slice is multiplied by ``m[unit(i)]``. All masks of all groups are folded into one 0/1 vector
per (tensor, dim), so applying them costs one multiplication per sliced tensor.

- :class:`GroupMask` (``"group"``): pruned slices are zero, their gradients and optimizer
  moments too; LayerNorms of masked groups normalise over kept channels only, so the masked
  network computes exactly what the physically pruned one will.
- :class:`MaskSparsity` (``"mask_sparsity"``): pruning-aware sparse regularisation (Jiang
  et al., 2022, "Pruning-aware Sparse Regularization for Network Pruning"): no zeroing
  during training; the L1 penalty λ·Σ|γ_c| acts only on the BatchNorm scales γ of the
  channels the mask marks for removal (on all their weights where a group has no
  BatchNorm), gradient ``+ λ·sign(γ)·(1 − m)``; the channels are removed at finalize.
- :class:`GroupEnvelope` (``"group_envelope"``): the weighted group sparse envelope
  function, WGSEF (k-level structured sparsity). With ``T_k`` the ``k`` groups of largest
  weighted norm, the penalty is ``λ/2·Σ_{g∉T_k} ω_g‖w_g‖²`` and its proximal step after each
  optimizer step with learning rate η is ``w_g ← w_g / (1 + ηλω_g)`` for ``g ∉ T_k``, so the
  groups outside the top-k decay geometrically and the target sparsity is reached at
  convergence; ``ω_g = sqrt(size of g)`` (group-lasso weighting).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from sparsity_core.enforcement.base import Enforcement
from sparsity_core.masks import MaskSet
from sparsity_core.registry import ENFORCEMENTS
from sparsity_core.validation import check_positive

from .groups import ChannelGroup


def _groups(ctrl) -> List[ChannelGroup]:
    return [t for t in ctrl.targets if isinstance(t, ChannelGroup) and t.name in ctrl.masks]


def resolve_tensor(model: nn.Module, name: str) -> torch.Tensor:
    try:
        return model.get_parameter(name)
    except AttributeError:
        return model.get_buffer(name)


def masked_layer_norm(x: torch.Tensor, keep: torch.Tensor, weight, bias, eps: float, dim: int) -> torch.Tensor:
    """LayerNorm over the kept channels only (``keep`` is 0/1 along ``dim``).

    μ = Σ m·x / Σ m, σ² = Σ m·(x − μ)² / Σ m, y = m·(x − μ)/√(σ² + ε)·γ + β; equal to the
    LayerNorm of the physically pruned tensor on kept channels, and 0 on pruned ones
    (their γ and β are zero).
    """
    view = [1] * x.dim()
    view[dim] = -1
    m = keep.to(x.dtype).reshape(view)
    k = m.sum()
    mean = (x * m).sum(dim, keepdim=True) / k
    xc = (x - mean) * m
    var = (xc * xc).sum(dim, keepdim=True) / k
    y = xc * torch.rsqrt(var + eps)
    if weight is not None:
        y = y * weight.reshape(view)
    if bias is not None:
        y = y + bias.reshape(view)
    return y


@ENFORCEMENTS.register("group")
class GroupMask(Enforcement):
    """Hard soft-masks on channel groups (see the module docstring)."""

    name = "group"
    zero_during_training = True

    def __init__(self) -> None:
        super().__init__()
        self._tensors: Dict[str, torch.Tensor] = {}
        self._keep: Dict[Tuple[str, int], torch.Tensor] = {}  # (tensor, dim) -> 0/1 vector
        self._hooks: List = []

    # -- set-up ---------------------------------------------------------------------------
    def attach(self, ctrl) -> None:
        if ctrl.model is None:
            raise ValueError(f"{type(self).__name__} needs the controller's model= to reach the group tensors")
        bad = [t.name for t in ctrl.targets if not isinstance(t, ChannelGroup)]
        if bad:
            raise ValueError(f"{type(self).__name__} acts on channel groups only; got other targets {bad[:3]}")
        self.bind(ctrl)

    def bind(self, ctrl) -> None:
        if ctrl.finalized:  # the channels are gone: the slices no longer describe the tensors
            self.remove_hooks()
            self._keep = {}
            return
        self._tensors = {}
        for t in ctrl.targets:
            for s in t.slices:
                if s.tensor not in self._tensors:
                    self._tensors[s.tensor] = resolve_tensor(ctrl.model, s.tensor)
        if ctrl.masks:
            self._rebuild(ctrl)

    def _rebuild(self, ctrl) -> None:
        keep: Dict[Tuple[str, int], torch.Tensor] = {}
        for t in _groups(ctrl):
            mask = ctrl.masks[t.name]
            for s in t.slices:
                tensor = self._tensors[s.tensor]
                key = (s.tensor, s.dim)
                if key not in keep:
                    keep[key] = torch.ones(tensor.shape[s.dim], dtype=tensor.dtype, device=tensor.device)
                keep[key][t.unit_positions(s, mask).to(tensor.device)] = 0
        self._keep = {k: v for k, v in keep.items() if not bool(v.all())}
        if self.zero_during_training:  # otherwise LayerNorms see every channel until finalize
            self._install_norm_hooks(ctrl)

    def _view(self, key: Tuple[str, int], like: torch.Tensor) -> torch.Tensor:
        view = [1] * like.dim()
        view[key[1]] = -1
        return self._keep[key].to(like.dtype).reshape(view)

    def _install_norm_hooks(self, ctrl) -> None:
        self.remove_hooks()
        for t in _groups(ctrl):
            for module_name, dim in t.norms:
                key = (f"{module_name}.weight" if module_name else "weight", 0)
                if key not in self._keep:
                    continue
                module = ctrl.model.get_submodule(module_name)
                self._hooks.append(module.register_forward_hook(self._norm_hook(key, dim)))

    def _norm_hook(self, key, dim):
        def hook(module, inputs, output):
            keep = self._keep.get(key)
            if keep is None:
                return output
            return masked_layer_norm(inputs[0], keep, module.weight, module.bias, module.eps, dim)
        return hook

    def remove_hooks(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []

    # -- the enforcement interface ----------------------------------------------------------
    @torch.no_grad()
    def apply_masks(self, ctrl, previous: Optional[MaskSet]) -> None:
        self._rebuild(ctrl)
        if self.zero_during_training:
            self.zero_pruned(ctrl, optimizer_state=True)

    @torch.no_grad()
    def zero_pruned(self, ctrl, optimizer_state: bool = False) -> None:
        for key in self._keep:
            tensor = self._tensors[key[0]]
            f = self._view(key, tensor)
            tensor.data.mul_(f)
            if optimizer_state:
                for opt in ctrl.optimizers:
                    for value in opt.state.get(tensor, {}).values():
                        if isinstance(value, torch.Tensor) and value.shape == tensor.shape:
                            value.mul_(f)

    @torch.no_grad()
    def before_optimizer_step(self, ctrl, optimizer) -> None:
        if not self.zero_during_training:
            return
        for key in self._keep:
            tensor = self._tensors[key[0]]
            if tensor.grad is not None:
                tensor.grad.mul_(self._view(key, tensor.grad))

    @torch.no_grad()
    def after_optimizer_step(self, ctrl) -> None:
        if self.zero_during_training:
            self.zero_pruned(ctrl)

    @torch.no_grad()
    def finalize(self, ctrl) -> None:
        """Zero every pruned slice; masked LayerNorm hooks act from now on (until physical
        removal) so the zeroed network computes what the pruned one will."""
        self._install_norm_hooks(ctrl)
        self.zero_pruned(ctrl, optimizer_state=True)

    def __getstate__(self):  # hooks are re-installed by bind(); handles do not pickle
        state = dict(self.__dict__)
        state["_hooks"] = []
        return state



@ENFORCEMENTS.register("mask_sparsity")
class MaskSparsity(GroupMask):
    """Pruning-aware L1 on the BatchNorm scales of the channels marked for removal."""

    name = "mask_sparsity"
    zero_during_training = False

    def __init__(self, strength: float = 1e-4) -> None:
        super().__init__()
        self.strength = check_positive(strength, "MaskSparsity strength")

    @torch.no_grad()
    def before_optimizer_step(self, ctrl, optimizer) -> None:
        owned = {id(p) for g in optimizer.param_groups for p in g["params"]}
        for t in _groups(ctrl):
            scales = [s for s in t.slices if s.tag == "norm_scale"]
            for s in scales or [s for s in t.slices if s.is_param]:
                tensor = self._tensors[s.tensor]
                if tensor.grad is None or id(tensor) not in owned:
                    continue
                pos = t.unit_positions(s, ctrl.masks[t.name]).to(tensor.device)
                if pos.numel():
                    sel = tensor.data.index_select(s.dim, pos)
                    tensor.grad.index_add_(s.dim, pos, self.strength * torch.sign(sel))

    def __repr__(self) -> str:
        return f"MaskSparsity(strength={self.strength})"


@ENFORCEMENTS.register("group_envelope")
class GroupEnvelope(GroupMask):
    """Proximal steps of the weighted group sparse envelope function (WGSEF)."""

    name = "group_envelope"
    zero_during_training = False

    def __init__(self, strength: float = 1e-2, weighting: str = "sqrt_size") -> None:
        super().__init__()
        strength = check_positive(strength, "GroupEnvelope strength")
        if weighting not in ("sqrt_size", "none"):
            raise ValueError(f"weighting must be 'sqrt_size' or 'none', got {weighting!r}")
        self.strength = float(strength)
        self.weighting = weighting

    def _omega(self, t: ChannelGroup) -> float:
        return float(t.params_per_unit) ** 0.5 if self.weighting == "sqrt_size" else 1.0

    @torch.no_grad()
    def after_optimizer_step(self, ctrl) -> None:
        lr = {}
        for opt in ctrl.optimizers:
            for g in opt.param_groups:
                for p in g["params"]:
                    lr[id(p)] = float(g.get("lr", 0.0))
        for t in _groups(ctrl):
            mask = ctrl.masks[t.name]
            if bool(mask.all()):
                continue
            for s in t.slices:
                tensor = self._tensors[s.tensor]
                if not s.is_param or id(tensor) not in lr:
                    continue
                shrink = 1.0 / (1.0 + lr[id(tensor)] * self.strength * self._omega(t))
                pos = t.unit_positions(s, mask).to(tensor.device)
                tensor.data.index_copy_(s.dim, pos, tensor.data.index_select(s.dim, pos) * shrink)

    def __repr__(self) -> str:
        return f"GroupEnvelope(strength={self.strength}, weighting={self.weighting!r})"
