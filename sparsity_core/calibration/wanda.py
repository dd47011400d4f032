"""Wanda-style calibration pruning: ``|W|·‖X‖₂`` compared within each output row, unstructured
or N:M (Sun et al., 2023, "A Simple and Effective Pruning Approach for Large Language Models",
https://arxiv.org/abs/2306.11695).

Weight ``W_ij`` (output row ``i``, input feature ``j``) scores

    S_ij = |W_ij| · ‖X_j‖₂,     ‖X_j‖₂ = (Σ_r X_rj²)^½ over every calibration row (token) r,

the core's ``"wanda"`` criterion over the core's
:class:`~sparsity_core.observe.ActivationObserver` statistics. What the core did not have is
the paper's comparison group, *per output row*: :class:`~.rowwise.PerRowElements`
(``"per_row"``) keeps the same number of weights in every row of a layer; ``pattern="2:4"``
uses the core's ``NM`` layout instead (the ``n`` best of every ``m`` consecutive inputs of a
row). How much each layer keeps is the allocator's: ``"uniform"`` (the paper) or ``"owl"``
(the core's OWL, layer sparsities from outlier ratios; ignored under N:M, whose pattern fixes
every layer's density). ``refine=DSnoT()`` adds DSnoT's prune-and-grow per layer.

    result = wanda_prune(model, calibration_batches, 0.5)                 # unstructured, per row
    result = wanda_prune(model, calibration_batches, 0.5, pattern="2:4")   # N:M
"""
from __future__ import annotations

from typing import Any, Iterable, List, Optional, Union

from torch import nn

from ..allocators.base import Allocator
from ..discovery import Patterns, discover_targets
from ..layouts import NM, UnitLayout, parse_layout
from ..observe import Forward
from ..targets import Target
from .driver import CalibrationResult, calibrate_prune
from .rowwise import PerRowElements

GROUPS = ("row", "layer")


def wanda_layout(pattern: Optional[Union[str, UnitLayout]] = None, group: str = "row") -> UnitLayout:
    """The layout of Wanda's comparison group: ``PerRowElements()`` (``group="row"``),
    ``Elements`` (``"layer"``: the whole layer competes) or the N:M ``pattern`` (``"2:4"``)."""
    if group not in GROUPS:
        raise ValueError(f"comparison group must be one of {GROUPS}, got {group!r}")
    if pattern is not None:
        layout = parse_layout(pattern)
        if not isinstance(layout, NM):
            raise ValueError(f"pattern must be an N:M pattern such as '2:4', got {pattern!r}")
        return layout
    return PerRowElements() if group == "row" else parse_layout("element")


def wanda_targets(model: nn.Module, pattern: Optional[Union[str, UnitLayout]] = None, group: str = "row",
                  include: Patterns = None, exclude: Patterns = None, skip_head: bool = True) -> List[Target]:
    """The model's prunable weights (core discovery: Linear/Conv weights; norms, embeddings
    and, with ``skip_head``, the classifier head left dense) with Wanda's comparison group
    as their layout."""
    return discover_targets(model, include=include, exclude=exclude, layout=wanda_layout(pattern, group),
                            skip_head=skip_head)


def wanda_prune(model: nn.Module, batches: Optional[Iterable], sparsity: float,
                pattern: Optional[Union[str, UnitLayout]] = None, group: str = "row",
                allocator: Union[str, Allocator] = "uniform", refine: Any = None, sequential: bool = False,
                targets: Optional[List[Target]] = None, include: Patterns = None, exclude: Patterns = None,
                skip_head: bool = True, forward: Optional[Forward] = None, min_samples: int = 16) -> CalibrationResult:
    """Wanda one-shot pruning (see the module doc); ``sparsity`` is ignored under N:M (the
    pattern fixes it, ``1 − n/m``). ``targets`` overrides discovery (their layouts are used)."""
    if targets is None:
        targets = wanda_targets(model, pattern, group, include, exclude, skip_head)
    patterns = {t.layout for t in targets}
    if len(patterns) == 1 and isinstance(next(iter(patterns)), NM):  # the pattern fixes the sparsity
        nm = next(iter(patterns))
        sparsity = 1.0 - nm.n / nm.m
    return calibrate_prune(model, targets, batches, sparsity, criterion="wanda", allocator=allocator,
                           forward=forward, refine=refine, sequential=sequential, min_samples=min_samples)
