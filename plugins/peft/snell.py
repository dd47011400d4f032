"""SNELL (Shen et al., 2024, "Expanding Sparse Tuning for Low Memory Usage", NeurIPS).

``W_eff = W + ΔW̃`` with the base ``W`` frozen and

    ΔW = Σ_h c_h·κ(B_h, A_h)                                   (kernelized LoRA, :mod:`.kernels`)
    ΔW̃ = ΔW ⊙ sg(|ΔW|) ⊙ M,   M = TopK_k(|ΔW|),  k = ⌊(1 − s)·n⌋

Competition-based sparsification: the entries of one matrix compete by magnitude, the
winners are kept and scaled by their own (stop-gradient) magnitude, as the released code's
``ΔW · threshold(|ΔW|.detach(), τ_s, 0)``. ``M`` is recomputed in every forward from the
current factors, so no indices are stored and the optimizer holds only ``A`` and ``B``.
At ``s = 0`` the update is the dense ``ΔW`` (the released code switches to plain kernel
LoRA there), so linear-kernel SNELL at ``s = 0`` is LoRA exactly.

In the core's vocabulary (:mod:`.selection`): ``ΔW`` is a ``Target`` over a computed tensor
(``compute=dense_delta``); ``|ΔW|`` is the core ``Magnitude`` criterion's score of it; the
kept count is the core rounding rule ``kept_count(n, s)`` (the paper's quantile threshold
``|ΔW| > τ_s`` keeps the same entries up to ties and interpolation; ``kept_count`` makes the
count exact); ``Elements.select`` (``top_k_mask``) picks them. The mask acts where the
adapter computes ``ΔW``, the rule the core states for computed targets.

``checkpoint=True`` recomputes ``ΔW̃`` in the backward pass (``torch.utils.checkpoint``), so
the dense ``out×in`` update is not held between forward and backward (the paper trains
with this to bound memory).
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint as _checkpoint

from sparsity_core.targets import Target
from sparsity_core.validation import check_int, check_positive

from .base import METHODS, Adapter
from .kernels import KERNELS, kernel_delta
from .selection import keep_top, magnitude_scores


@METHODS.register("snell")
class SNELL(Adapter):
    """Args:
        r: total rank of the factor sets (``distance``: two sets of ``r/2``; ``linear``: one set of ``r``).
        sparsity: fraction ``s`` of ``ΔW``'s entries removed in every forward, in ``[0, 1)``.
        kernel: ``"distance"`` (the paper's) or ``"linear"`` (LoRA as a special case).
        alpha: linear kernel's scaling numerator (``c = α/r``, default ``r``).
        scale: distance kernel's coefficient magnitude (``c = (+scale, −scale)``, 0.1 as released).
        checkpoint: recompute ``ΔW̃`` in the backward pass instead of storing it.
    """

    method = "snell"
    has_sparsity = True

    def __init__(self, weight: torch.Tensor, r: int = 8, sparsity: float = 0.0, kernel: str = "distance",
                 alpha: Optional[float] = None, scale: float = 0.1, checkpoint: bool = False,
                 init: bool = True) -> None:
        super().__init__(weight)
        if kernel not in KERNELS:
            raise ValueError(f"SNELL kernel must be one of {sorted(KERNELS)}, got {kernel!r}")
        self.r = check_int(r, "r", 1)
        if kernel == "distance" and self.r % 2:
            raise ValueError(f"the distance kernel splits r over two factor sets: r must be even, got {r}")
        self.kernel = kernel
        self.alpha = float(self.r if alpha is None else check_positive(alpha, "alpha"))
        self.scale = check_positive(scale, "scale")
        self.checkpoint = bool(checkpoint)
        self.sparsity = sparsity
        sets, rank = (1, self.r) if kernel == "linear" else (2, self.r // 2)
        self.coeffs = (self.alpha / self.r,) if kernel == "linear" else (self.scale, -self.scale)
        kw = dict(dtype=weight.dtype, device=weight.device)
        self.A = nn.Parameter(torch.zeros(sets, rank, self.in_features, **kw))
        self.B = nn.Parameter(torch.zeros(sets, self.out_features, rank, **kw))
        self.target = Target("delta", shape=(self.out_features, self.in_features), compute=self.dense_delta)
        if init:
            self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Linear kernel: LoRA's (``A`` Kaiming-uniform, ``B = 0``). Distance kernel: the released
        code's, both factor sets uniform in ``±1/√(fan_in)`` with ``fan_in = features·r_h``
        (so ``ΔW ≠ 0`` at the start, a small difference of two distance kernels)."""
        if self.kernel == "linear":
            nn.init.kaiming_uniform_(self.A[0], a=math.sqrt(5))
            self.B.zero_()
            return
        rank = self.A.shape[1]
        self.A.uniform_(-1.0 / math.sqrt(self.in_features * rank), 1.0 / math.sqrt(self.in_features * rank))
        self.B.uniform_(-1.0 / math.sqrt(self.out_features * rank), 1.0 / math.sqrt(self.out_features * rank))

    def bind(self, layer, name: str) -> None:
        super().bind(layer, name)
        self.target.name, self.target.module_name = f"{name}.delta", name

    # -- the update ----------------------------------------------------------------------
    def config(self) -> Dict[str, Any]:
        return {"r": self.r, "sparsity": self.sparsity, "kernel": self.kernel, "alpha": self.alpha,
                "scale": self.scale, "checkpoint": self.checkpoint}

    def dense_delta(self) -> torch.Tensor:
        """``ΔW = Σ_h c_h κ(B_h, A_h)`` before sparsification."""
        return kernel_delta(self.kernel, self.A, self.B, self.coeffs)

    def keep_mask(self, dense: torch.Tensor) -> torch.Tensor:
        """``M``: the ``kept_count(n, s)`` entries of largest ``|ΔW|`` (core magnitude + select)."""
        return keep_top(self.target, magnitude_scores(self.target, dense.detach()), self.sparsity)

    def sparsify(self, dense: torch.Tensor) -> torch.Tensor:
        """``ΔW̃ = ΔW ⊙ sg(|ΔW|) ⊙ M`` (``ΔW`` itself at sparsity 0)."""
        if self.sparsity == 0.0:
            return dense
        magnitude = dense.detach().abs()
        return dense * torch.where(self.keep_mask(dense), magnitude, torch.zeros_like(magnitude))

    def delta(self) -> torch.Tensor:
        return self.sparsify(self.dense_delta())

    def _update(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.delta())

    def forward_linear(self, x, weight, bias):
        if self.checkpoint and torch.is_grad_enabled():  # the dense update is not held for backward
            return F.linear(x, weight, bias) + _checkpoint(self._update, x, use_reentrant=False)
        return F.linear(x, weight + self.delta(), bias)  # one product with W + ΔW̃ (3 matmuls with backward, not 5)

    # -- reports -------------------------------------------------------------------------
    def targets(self) -> List[Target]:
        return [self.target]
