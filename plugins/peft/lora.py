"""LoRA (Hu et al., 2022, "LoRA: Low-Rank Adaptation of Large Language Models").

``ΔW = (α / r)·B A`` with ``A ∈ ℝ^{r×in}`` (Kaiming-uniform, as peft) and ``B ∈ ℝ^{out×r}``
(zeros, so the adapted model starts as the base model); the forward computes
``x Wᵀ + b + (α/r)·(drop(x) Aᵀ) Bᵀ`` without forming ``ΔW``.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from sparsity_core.targets import Target
from sparsity_core.validation import check_int, check_positive, check_range

from .base import METHODS, Adapter


def lora_delta(A: torch.Tensor, B: torch.Tensor, scaling: float) -> torch.Tensor:
    """``ΔW = scaling·B A`` (the one expression LoRA and linear-kernel SNELL share)."""
    return (B @ A) * scaling


@METHODS.register("lora")
class LoRA(Adapter):
    """Args: ``r`` (rank), ``alpha`` (default ``r``: scaling 1), ``dropout`` on the adapter's input."""

    method = "lora"

    def __init__(self, weight: torch.Tensor, r: int = 8, alpha: Optional[float] = None, dropout: float = 0.0,
                 init: bool = True) -> None:
        super().__init__(weight)
        self.r = check_int(r, "r", 1)
        self.alpha = float(self.r if alpha is None else check_positive(alpha, "alpha"))
        self.dropout = check_range(dropout, "dropout", 0.0, 1.0, high_open=True)
        self.scaling = self.alpha / self.r
        kw = dict(dtype=weight.dtype, device=weight.device)
        self.A = nn.Parameter(torch.zeros(self.r, self.in_features, **kw))
        self.B = nn.Parameter(torch.zeros(self.out_features, self.r, **kw))
        self.drop = nn.Dropout(self.dropout) if self.dropout else nn.Identity()
        if init:
            nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))

    def config(self) -> Dict[str, Any]:
        return {"r": self.r, "alpha": self.alpha, "dropout": self.dropout}

    def delta(self) -> torch.Tensor:
        return lora_delta(self.A, self.B, self.scaling)

    def forward_linear(self, x, weight, bias):
        return F.linear(x, weight, bias) + F.linear(F.linear(self.drop(x), self.A), self.B) * self.scaling

    def targets(self) -> List[Target]:
        return [Target(f"{self.name}.delta", shape=(self.out_features, self.in_features), compute=self.delta,
                       module_name=self.name)]
