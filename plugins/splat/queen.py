"""Learned gating of per-frame Gaussian residuals for dynamic scenes (QUEEN; Girish et al.,
2024, "QUEEN: QUantized Efficient ENcoding of Dynamic Gaussians for Streaming
Free-viewpoint Videos").

Frame ``t`` reuses frame ``t−1``'s Gaussians and learns a residual per attribute,
``x_t = x_{t−1} + z ⊙ Δ``, with a gate ``z_i ∈ [0, 1]`` per Gaussian: only the Gaussians
whose gate stays open store a residual (most of a scene does not move between frames). The
gates are hard-concrete variables (Louizos et al., 2018, "Learning Sparse Neural Networks
through L0 Regularization"): with ``u ~ U(0, 1)``, temperature ``β`` and stretch ``(γ, ζ) =
(−0.1, 1.1)``,

    s = σ((log u − log(1 − u) + log α) / β),   z = clamp(s·(ζ − γ) + γ, 0, 1),

whose probability of being non-zero, ``P(z ≠ 0) = σ(log α − β·log(−γ/ζ))``, is
differentiable: its mean over Gaussians is the expected density ``ρ``. The budget is a
target density ``ρ*`` (fraction of Gaussians allowed to move), enforced by a Lagrange
multiplier updated by dual ascent, ``λ ← max(0, λ + η (ρ − ρ*))``, with penalty ``λ·ρ``
in the loss. At :meth:`ResidualGate.finalize` exactly ``⌊ρ*·N⌋`` gates stay open, those with
the largest expected residual ``P(z_i ≠ 0)·‖Δ_i‖`` (a gate left open on a Gaussian whose
residual is ~0 is worth nothing), and the residual is stored sparsely (indices + values).

The gate's ``state_dict`` holds everything a resume needs: residual, ``log α``, ``λ``, the kept
indices and (as the module's extra state) the ``finalized`` flag, so a finalized gate
reloads finalized (kept rows, gates fixed, ``log α`` frozen) and a gate saved mid-training
continues as if never interrupted. Loading checks the whole incoming state first: anything
missing or inconsistent raises ``ValueError`` and leaves the gate as it was.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Tuple

import torch
from torch import Tensor, nn

from sparsity_core.targets import Target

GAMMA, ZETA = -0.1, 1.1


class ResidualGate(nn.Module):
    """Gated residual of one attribute (``[N, D]``, e.g. positions) between two frames.

    Args:
        num_gaussians, dim: shape of the attribute.
        density: target fraction ``ρ*`` of Gaussians with a residual, in (0, 1].
        beta: hard-concrete temperature.
        dual_lr: step ``η`` of the dual ascent on ``λ``.
        init_open: initial P(gate open).
    """

    def __init__(self, num_gaussians: int, dim: int = 3, density: float = 0.1, beta: float = 2.0 / 3.0,
                 dual_lr: float = 0.05, init_open: float = 0.9) -> None:
        super().__init__()
        if num_gaussians < 1 or dim < 1:
            raise ValueError(f"need num_gaussians >= 1 and dim >= 1, got {num_gaussians}, {dim}")
        if not 0.0 < density <= 1.0:
            raise ValueError(f"density must be in (0, 1], got {density!r}")
        if not 0.0 < init_open < 1.0 or beta <= 0 or dual_lr < 0:
            raise ValueError("need 0 < init_open < 1, beta > 0, dual_lr >= 0")
        self.density, self.beta, self.dual_lr = float(density), float(beta), float(dual_lr)
        self.residual = nn.Parameter(torch.zeros(num_gaussians, dim))
        shift = self.beta * math.log(-GAMMA / ZETA)  # so that P(open) = init_open at the start
        self.log_alpha = nn.Parameter(torch.full((num_gaussians,), math.log(init_open / (1 - init_open)) + shift))
        self.register_buffer("lam", torch.zeros(()))
        self.register_buffer("kept", torch.empty(0, dtype=torch.long))
        self.finalized = False

    # -- state: ``finalized`` travels with the tensors ----------------------------------
    def get_extra_state(self) -> Dict[str, Any]:
        return {"finalized": self.finalized}

    def set_extra_state(self, state: Dict[str, Any]) -> None:
        self._check_extra(state)
        self.finalized = state["finalized"]
        self.log_alpha.requires_grad_(not self.finalized)  # as finalize() leaves it

    @staticmethod
    def _check_extra(state: Any) -> None:
        if not isinstance(state, dict) or not isinstance(state.get("finalized"), bool):
            raise ValueError(f"a ResidualGate's extra state is {{'finalized': bool}}, got {state!r}")

    def _load_from_state_dict(self, state_dict: Dict[str, Any], prefix: str, local_metadata, strict: bool,
                              missing_keys: List[str], unexpected_keys: List[str], error_msgs: List[str]) -> None:
        """Validate the whole incoming state (all keys, shapes, ``kept`` consistent with
        ``finalized``) before anything is assigned, then resize ``kept`` to the saved one
        and let ``nn.Module`` copy the values in. A gate is loaded whole or not at all, so a
        missing key raises ``ValueError`` (naming it) even with ``strict=False``."""
        names = ["residual", "log_alpha", "lam", "kept", "_extra_state"]
        for name in names:
            if prefix + name not in state_dict:
                raise ValueError(f"the ResidualGate state lacks {prefix + name!r}")
        get = {name: state_dict[prefix + name] for name in names}
        for name in ("residual", "log_alpha", "lam", "kept"):
            if not isinstance(get[name], Tensor):
                raise ValueError(f"{prefix + name!r} must be a tensor, got {type(get[name]).__name__}")
        for name, shape in (("residual", self.residual.shape), ("log_alpha", self.log_alpha.shape), ("lam", ())):
            if get[name].shape != shape:
                raise ValueError(f"{prefix + name!r} has shape {list(get[name].shape)}, this gate {list(shape)}")
        self._check_extra(get["_extra_state"])
        kept, finalized = get["kept"], get["_extra_state"]["finalized"]
        if kept.dim() != 1 or kept.dtype != torch.long:
            raise ValueError(f"{prefix + 'kept'!r} must be a 1-D long tensor, got {kept.dtype} {list(kept.shape)}")
        if finalized != (kept.numel() > 0):
            raise ValueError(f"{prefix + 'kept'!r} holds {kept.numel()} indices for a gate with finalized={finalized}"
                             " (kept is empty exactly until finalize)")
        if kept.numel() and (int(kept.min()) < 0 or int(kept.max()) >= self.num_gaussians
                             or not bool((kept[1:] > kept[:-1]).all())):
            raise ValueError(f"{prefix + 'kept'!r} must be sorted distinct indices in [0, {self.num_gaussians})")
        self.kept = torch.empty_like(kept, device=self.kept.device)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    @property
    def num_gaussians(self) -> int:
        return self.log_alpha.numel()

    def target(self, name: str = "queen.gates") -> Target:
        """The gates as a core target (units = Gaussians, no parameter behind them)."""
        return Target(name=name, shape=(self.num_gaussians,), params_per_unit=float(self.residual.shape[1]))

    def open_probability(self) -> Tensor:
        """P(z_i ≠ 0) for every Gaussian (differentiable)."""
        return torch.sigmoid(self.log_alpha - self.beta * math.log(-GAMMA / ZETA))

    def expected_density(self) -> Tensor:
        return self.open_probability().mean()

    def gates(self) -> Tensor:
        """A hard-concrete sample in training; in eval the deterministic gate
        ``clamp(σ(log α)(ζ − γ) + γ, 0, 1)``; after finalize exact 0/1."""
        if self.finalized:
            z = torch.zeros(self.num_gaussians, device=self.log_alpha.device)
            z[self.kept] = 1.0
            return z
        if self.training:
            u = torch.rand_like(self.log_alpha).clamp(1e-6, 1 - 1e-6)
            s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + self.log_alpha) / self.beta)
        else:
            s = torch.sigmoid(self.log_alpha)
        return (s * (ZETA - GAMMA) + GAMMA).clamp(0.0, 1.0)

    def forward(self, previous: Tensor) -> Tensor:
        """``previous + z ⊙ Δ`` (``previous`` is the last frame's attribute, not trained)."""
        if previous.shape != self.residual.shape:
            raise ValueError(f"previous has shape {list(previous.shape)}, the gate {list(self.residual.shape)}")
        return previous.detach() + self.gates().unsqueeze(-1) * self.residual

    def penalty(self) -> Tensor:
        """``λ·ρ`` to add to the loss (λ from the dual ascent, not differentiated)."""
        if self.finalized:
            return self.residual.new_zeros(())
        return self.lam.detach() * self.expected_density()

    @torch.no_grad()
    def dual_step(self) -> float:
        """``λ ← max(0, λ + η (ρ − ρ*))``; call once per optimizer step. Returns ρ."""
        rho = float(self.expected_density())
        self.lam.add_(self.dual_lr * (rho - self.density)).clamp_(min=0.0)
        return rho

    @torch.no_grad()
    def finalize(self) -> Tuple[Tensor, Tensor]:
        """Keep the ``⌊ρ*·N⌋`` gates (at least one) with the largest ``P(open)·‖Δ‖``, fold their
        eval-mode gate into the residual, and return the sparse residual
        ``(indices [K], values [K, D])``. The output is continuous at the switch; the kept
        rows can then be fine-tuned with the gates fixed at 1 (the others are multiplied by 0
        and are not stored)."""
        if self.finalized:
            return self.kept, self.residual.detach()[self.kept]
        k = max(1, int(math.floor(self.density * self.num_gaussians + 1e-9)))
        self.eval()
        z = self.gates()
        expected = self.open_probability() * self.residual.norm(dim=-1)
        kept = torch.topk(expected, k).indices.sort().values
        values = self.residual[kept] * z[kept].unsqueeze(-1)  # the eval-mode output, unchanged
        self.residual.zero_()
        self.residual[kept] = values
        self.kept = kept
        self.finalized = True
        self.log_alpha.requires_grad_(False)  # the kept residual rows may still be fine-tuned
        return kept, values

    def stored_parameters(self) -> int:
        """Numbers stored for this frame's residual: all of it before finalize; indices +
        values of the kept rows after."""
        if not self.finalized:
            return self.residual.numel()
        return self.kept.numel() * (1 + self.residual.shape[1])
