"""PST (Li et al., 2022, "Parameter-Efficient Sparsity for Large Language Models Fine-Tuning", IJCAI).

Sparse-aware fine-tuning with a frozen ``W`` and six small trainable tensors:

    W′ = W + β·U V                                    U ∈ ℝ^{out×r} (0), V ∈ ℝ^{r×in}
    S  = |W′| + α₁·A B + α₂·(R 1ᵀ + 1 Cᵀ)             A ∈ ℝ^{out×r_s} (0), B ∈ ℝ^{r_s×in}, R ∈ ℝ^{out} (0), C ∈ ℝ^{in} (0)
    M  = TopK_k(S),  k = ⌊(1 − s)·n⌋
    W_eff = (M + S − sg(S)) ⊙ W′                       (straight-through estimator)

``|W′|`` is the data-free importance; ``A B`` (low rank) and ``R 1ᵀ + 1 Cᵀ`` (row and column
structure) replace movement pruning's dense learned score matrix. The forward value of
``M + S − sg(S)`` is ``M`` exactly; its gradient w.r.t. ``S`` is the identity, so
``∂L/∂S = ∂L/∂W_eff ⊙ W′`` (movement pruning's estimator) reaches ``A, B, R, C``. The zero
initialisations make ``W′ = W`` and ``S = |W|`` at the start: PST begins as magnitude pruning.

In the core's vocabulary (:mod:`.selection`): ``W′`` is a ``Target`` over a computed tensor;
its data-free score is the core ``Magnitude`` criterion evaluated on the live ``W′`` (so the
estimator's gradient flows through it too); the learned terms are added to that score; the
kept count is ``kept_count(n, s)`` and ``Elements.select`` picks the top-``k`` of ``S``. The
sparsity may follow a core schedule (the paper's cubic ramp) through the
:class:`~sparsity_plugins.peft.program.SparseAdapters` program. Merging writes ``M ⊙ W′``.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional

import torch
from torch import nn

from sparsity_core.targets import Target
from sparsity_core.validation import check_int, check_nonnegative

from .base import METHODS, Adapter
from .selection import keep_top, magnitude_scores


@METHODS.register("pst")
class PST(Adapter):
    """Args: ``r`` (rank of ``U V``), ``r_score`` (rank of ``A B``), ``sparsity`` (fraction of
    ``W′`` pruned), ``beta``, ``alpha1``, ``alpha2`` (the weights above)."""

    method = "pst"
    masks_base = True
    has_sparsity = True

    def __init__(self, weight: torch.Tensor, r: int = 8, r_score: int = 8, sparsity: float = 0.5, beta: float = 1.0,
                 alpha1: float = 1.0, alpha2: float = 1.0, init: bool = True) -> None:
        super().__init__(weight)
        self.r, self.r_score = check_int(r, "r", 1), check_int(r_score, "r_score", 1)
        self.beta = check_nonnegative(beta, "beta")
        self.alpha1, self.alpha2 = check_nonnegative(alpha1, "alpha1"), check_nonnegative(alpha2, "alpha2")
        self.sparsity = sparsity
        kw = dict(dtype=weight.dtype, device=weight.device)
        o, i = self.out_features, self.in_features
        self.U, self.V = nn.Parameter(torch.zeros(o, self.r, **kw)), nn.Parameter(torch.zeros(self.r, i, **kw))
        self.A = nn.Parameter(torch.zeros(o, self.r_score, **kw))
        self.B = nn.Parameter(torch.zeros(self.r_score, i, **kw))
        self.R, self.C = nn.Parameter(torch.zeros(o, **kw)), nn.Parameter(torch.zeros(i, **kw))
        self.target = Target("weight", shape=(o, i), compute=self._updated_weight_detached)
        if init:
            nn.init.kaiming_uniform_(self.V, a=math.sqrt(5))
            nn.init.kaiming_uniform_(self.B, a=math.sqrt(5))

    def bind(self, layer, name: str) -> None:
        super().bind(layer, name)
        self.target.name, self.target.module_name = f"{name}.weight", name

    def config(self) -> Dict[str, Any]:
        return {"r": self.r, "r_score": self.r_score, "sparsity": self.sparsity, "beta": self.beta,
                "alpha1": self.alpha1, "alpha2": self.alpha2}

    # -- the method ----------------------------------------------------------------------
    def updated_weight(self, weight: torch.Tensor) -> torch.Tensor:
        """``W′ = W + β·U V``."""
        return weight + (self.U @ self.V) * self.beta

    def _updated_weight_detached(self) -> torch.Tensor:
        return self.updated_weight(self.layer.weight).detach()

    def importance(self, updated: torch.Tensor) -> torch.Tensor:
        """``S = |W′| + α₁·A B + α₂·(R 1ᵀ + 1 Cᵀ)`` (differentiable)."""
        data_free = magnitude_scores(self.target, updated).reshape(updated.shape).to(updated.dtype)
        structured = self.R[:, None] + self.C[None, :]
        return data_free + (self.A @ self.B) * self.alpha1 + structured * self.alpha2

    def mask(self, weight: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``M = TopK_k(S)`` as a boolean ``[out, in]`` mask (for ``weight``, default the layer's)."""
        with torch.no_grad():
            w = self.layer.weight if weight is None else weight
            return keep_top(self.target, self.importance(self.updated_weight(w)), self.sparsity)

    def effective_weight(self, weight: torch.Tensor) -> torch.Tensor:
        updated = self.updated_weight(weight)
        score = self.importance(updated)
        kept = keep_top(self.target, score, self.sparsity).to(score.dtype)
        return (kept + (score - score.detach())) * updated

    @torch.no_grad()
    def merged_weight(self, weight: torch.Tensor) -> torch.Tensor:
        """``M ⊙ W′`` with ``W′`` summed in float64 and ``M`` the forward's mask."""
        updated = weight.double() + (self.U.double() @ self.V.double()) * self.beta
        return torch.where(self.mask(weight), updated, torch.zeros_like(updated)).to(weight.dtype)

    def delta(self) -> torch.Tensor:
        """``W_eff − W`` (PST is not additive; this is what merging adds)."""
        w = self.layer.weight
        return self.effective_weight(w) - w

    def targets(self) -> List[Target]:
        return [self.target]
