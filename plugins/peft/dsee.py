"""DSEE (Chen et al., 2023, "DSEE: Dually Sparsity-embedded Efficient Tuning of Pre-trained
Language Models", ACL).

Step 1, the update: ``W_eff = W + ΔW`` with

    ΔW = (α/r)·U V + S₂,   supp(S₂) = Ω = the N largest-magnitude entries of S,  W ≈ L + S

where ``W ≈ L + S`` is a low-rank plus sparse decomposition of the pretrained weight
(:func:`~.decompose.godec`, a few alternating iterations). ``U ∈ ℝ^{out×r}`` starts at 0,
``V`` Kaiming-uniform, the ``N`` values of ``S₂`` at 0, so training starts from the base
model; only ``U, V`` and the ``N`` values train. ``Ω`` is a fixed buffer of ``N`` flat indices
(DSEE's support is chosen once, from the pretrained weight, unlike SNELL's).

Step 2, optional: :func:`prune_merged` merges ``W + ΔW`` into the layers and prunes by
magnitude, unstructured or whole attention heads, with the core's one-shot pruning
(``one_shot_prune``, criterion ``magnitude``, allocator of your choice); the pruned model is
then re-tuned with the masks held fixed (:func:`retune_program`).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from sparsity_core.allocators.base import Allocator
from sparsity_core.criteria import GivenScores
from sparsity_core.mask_program import WeightSparsity
from sparsity_core.oneshot import OneShotResult, one_shot_prune
from sparsity_core.targets import Target
from sparsity_core.validation import check_int, check_positive

from .base import METHODS, Adapter
from .decompose import godec
from .heads import head_targets, head_weight_masks, zero_heads
from .selection import keep_top, magnitude_scores


@METHODS.register("dsee")
class DSEE(Adapter):
    """Args: ``r`` (rank of ``U V``), ``alpha`` (default ``r``), ``n_sparse`` (``N``, entries of
    ``S₂``), ``decomposition_rank`` (rank of ``L``, default ``r``), ``card`` (nonzeros of ``S``
    in the decomposition, default ``N``), ``iterations`` (of the decomposition)."""

    method = "dsee"

    def __init__(self, weight: torch.Tensor, r: int = 16, alpha: Optional[float] = None, n_sparse: int = 64,
                 decomposition_rank: Optional[int] = None, card: Optional[int] = None, iterations: int = 3,
                 init: bool = True) -> None:
        super().__init__(weight)
        n = self.out_features * self.in_features
        self.r = check_int(r, "r", 1)
        self.alpha = float(self.r if alpha is None else check_positive(alpha, "alpha"))
        self.scaling = self.alpha / self.r
        self.n_sparse = check_int(n_sparse, "n_sparse", 0, n)
        self.decomposition_rank = check_int(self.r if decomposition_rank is None else decomposition_rank,
                                            "decomposition_rank", 0, min(self.out_features, self.in_features))
        self.card = check_int(self.n_sparse if card is None else card, "card", self.n_sparse, n)
        self.iterations = check_int(iterations, "iterations", 1)
        kw = dict(dtype=weight.dtype, device=weight.device)
        self.U = nn.Parameter(torch.zeros(self.out_features, self.r, **kw))
        self.V = nn.Parameter(torch.zeros(self.r, self.in_features, **kw))
        self.values = nn.Parameter(torch.zeros(self.n_sparse, **kw))
        self.register_buffer("support", torch.zeros(self.n_sparse, dtype=torch.long, device=weight.device))
        if init:
            nn.init.kaiming_uniform_(self.V, a=math.sqrt(5))
            self.support.copy_(self.find_support(weight))

    def find_support(self, weight: torch.Tensor) -> torch.Tensor:
        """Flat indices (ascending) of the ``N`` largest ``|S|`` of ``W ≈ L + S``: core magnitude
        scores of the target ``S``, ``Elements.select`` with ``keep=N``."""
        if self.n_sparse == 0:
            return torch.zeros(0, dtype=torch.long, device=weight.device)
        sparse = godec(weight, self.decomposition_rank, self.card, self.iterations).sparse
        target = Target("S", shape=tuple(sparse.shape))  # the decomposition's sparse part, scored by the core
        kept = keep_top(target, magnitude_scores(target, sparse), keep=self.n_sparse)
        return kept.reshape(-1).nonzero().squeeze(1).to(weight.device)

    def config(self) -> Dict[str, Any]:
        return {"r": self.r, "alpha": self.alpha, "n_sparse": self.n_sparse,
                "decomposition_rank": self.decomposition_rank, "card": self.card, "iterations": self.iterations}

    def sparse_update(self) -> torch.Tensor:
        """``S₂``: ``values`` at the flat indices ``support``, zero elsewhere."""
        flat = torch.zeros(self.out_features * self.in_features, dtype=self.values.dtype, device=self.values.device)
        return flat.index_add(0, self.support, self.values).reshape(self.out_features, self.in_features)

    def delta(self) -> torch.Tensor:
        return (self.U @ self.V) * self.scaling + self.sparse_update()

    def forward_linear(self, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        """``W x + (α/r)·U (V x) + S₂ x``: the low-rank part through its factors, ``S₂`` as a sparse
        product, so training never forms the dense ``out×in`` update nor its gradient (the
        values' gradient is sampled at the support: ``N·tokens`` products, not ``out·in·tokens``)."""
        out = F.linear(x, weight, bias) + F.linear(F.linear(x, self.V), self.U) * self.scaling
        if self.n_sparse == 0:
            return out
        rows = torch.div(self.support, self.in_features, rounding_mode="floor")
        indices = torch.stack([rows, self.support - rows * self.in_features])  # ascending, unique: coalesced
        sparse = torch.sparse_coo_tensor(indices, self.values, (self.out_features, self.in_features),
                                         is_coalesced=True, check_invariants=False)
        flat = x.reshape(-1, self.in_features)
        return out + torch.sparse.mm(sparse, flat.t()).t().reshape(*x.shape[:-1], self.out_features)

    def targets(self) -> List[Target]:
        return [Target(f"{self.name}.delta", shape=(self.out_features, self.in_features), compute=self.delta,
                       module_name=self.name)]


@dataclass
class MergedPruning(OneShotResult):
    """:class:`OneShotResult` plus ``weight_masks``: element masks (``True`` = kept) of every
    pruned tensor, keyed by its name in the model, for :func:`retune_program`."""

    weight_masks: Dict[str, torch.Tensor] = field(default_factory=dict)


def prune_merged(adapters, sparsity: float, allocator: Union[str, Allocator] = "global",
                 structure: str = "elements") -> MergedPruning:
    """DSEE's second step: merge every adapter into its layer for good (the adapters are
    removed, :meth:`AdapterSet.merge_and_unload`) and prune by magnitude with the core's
    :func:`~sparsity_core.oneshot.one_shot_prune`: ``structure="elements"`` prunes the merged
    weights unstructured (masks keyed ``<layer>.weight``), ``"heads"`` removes whole attention
    heads of the model (:mod:`.heads`: masks keyed ``<attention>.heads``; every entry a pruned
    head owns is zeroed). ``sparsity`` is the fraction of weights, or of heads, removed.
    The result's ``weight_masks`` are the element masks for re-tuning (:func:`retune_program`)."""
    from sparsity_core.validation import check_sparsity

    check_sparsity(sparsity)
    if structure not in ("elements", "heads"):
        raise ValueError(f"structure must be 'elements' or 'heads', got {structure!r}")
    model = adapters.model
    if structure == "heads":
        targets = head_targets(model)  # raises before the merge when there is no attention
        adapters.merge_and_unload()
        result = one_shot_prune(model, targets, None, sparsity, criterion="magnitude", allocator=allocator,
                                apply=False)
        for t in targets:
            zero_heads(t, result.masks[t.name])
        return MergedPruning(result.masks, result.report, weight_masks=head_weight_masks(targets, result.masks))
    layers = {name: adapter.layer for name, adapter in adapters.adapters.items()}
    adapters.merge_and_unload()
    targets = [Target(f"{name}.weight", param=layer.weight, module_name=name) for name, layer in layers.items()]
    result = one_shot_prune(model, targets, None, sparsity, criterion="magnitude", allocator=allocator)
    return MergedPruning(result.masks, result.report,
                         weight_masks={t.name: result.masks[t.name].reshape(t.shape) for t in targets})


def retune_program(weight_masks: Mapping[str, torch.Tensor], prefix: str = "", name: str = "retune") -> WeightSparsity:
    """A core program that keeps ``weight_masks`` (tensor name -> element mask, ``True`` =
    kept) fixed while the pruned model is re-tuned: ``WeightSparsity`` with those masks as
    given scores, hard enforcement (pruned entries and their optimizer state stay zero).
    ``prefix`` is prepended to the names (e.g. ``"model."`` when the pruned model is the
    LightningModule's attribute ``model``)."""
    masks = {f"{prefix}{k}": v for k, v in weight_masks.items() if k.endswith(".weight")}
    if not masks:
        raise ValueError("no weight masks to keep")
    kept = sum(int(m.sum()) for m in masks.values())
    total = sum(m.numel() for m in masks.values())
    modules = [re.escape(k[: -len(".weight")]) + "$" for k in masks]
    return WeightSparsity(schedule=1.0 - kept / total, criterion=GivenScores({k: m.float() for k, m in masks.items()}),
                          allocator="global", enforcement="hard", include=modules, skip_head=False, name=name)
