"""Calibration pruning driver: one-shot pruning from calibration statistics, optionally
layer by layer and refined per layer (DSnoT), built on :func:`~sparsity_core.oneshot.one_shot_prune`.

    result = calibrate_prune(model, targets, batches, 0.6, criterion="wanda", allocator="uniform",
                             refine=DSnoT())

Two ways to run (both observe the inputs with the core's
:class:`~sparsity_core.observe.ActivationObserver`):

- ``sequential=False`` (default): one calibration pass over the dense model with every
  observed module hooked; the statistics of all layers come from the dense model (what
  ``one_shot_prune(..., criterion="wanda")`` does). All masks are computed, refined and
  checked first and applied at the end, so an error leaves the model untouched.
- ``sequential=True``: the layer-by-layer procedure of Wanda's and DSnoT's reference code.
  The allocator first splits the budget over every target from one pass over the dense
  model (OWL, global... need all layers at once; the kept count of each target is then
  fixed); then, module after module in the order of ``targets``, the module's inputs are
  observed *from the model whose earlier layers are already pruned*
  (:meth:`ActivationObserver.layers`, one pass per module, only that module's statistics
  held), its masks are chosen by ``one_shot_prune`` with the fixed counts, refined and
  applied before the next module is observed. Weights are restored if anything fails.

The comparison group is the targets' layout: ``"per_row"``
(:class:`~sparsity_core.calibration.rowwise.PerRowElements`, Wanda's per-output-row group),
``"element"`` (the whole layer), or ``NM(n, m)`` (N:M, whose count the pattern fixes).
A refiner (``refine=``) is any object with ``refine(target, mask, stats) -> (mask, info)``
and a ``needs_means`` flag; it sees the dense weights (masks are applied after it).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Union

import torch
from torch import nn

from ..allocators.base import Allocator
from ..criteria.base import Criterion
from ..masks import MaskSet, apply_mask_
from ..observe import ActivationObserver, Forward
from ..oneshot import one_shot_prune
from ..registry import ALLOCATORS, CRITERIA
from ..selection import build_component
from ..targets import Target
from ..validation import check_int, check_sparsity
from .data import calibration_batches, checked_forward

WHAT = "calibrate_prune"


@dataclass
class CalibrationResult:
    """``masks`` (True = kept); ``report`` (``"global"`` and per-target sparsity, as
    :class:`~sparsity_core.oneshot.OneShotResult`); ``activations``: the statistics used (the
    dense pass; ``None`` when nothing was observed); ``refinement``: the refiner's info per
    target; ``seconds``: ``"calibration"`` (observation passes), ``"select"`` (scoring,
    allocation and selection) and ``"refine"`` totals, and ``"per_layer"``: (select +
    refine) / targets, the pruning cost of one layer beside the passes."""

    masks: MaskSet
    report: Dict[str, float]
    activations: Optional[Mapping[str, Any]] = None
    refinement: Dict[str, Dict[str, float]] = field(default_factory=dict)
    seconds: Dict[str, float] = field(default_factory=dict)


class FixedKeep(Allocator):
    """Kept units decided beforehand (``{target name: count}``): the layer-by-layer driver
    fixes each target's count from the allocation over all targets, then selects one module
    at a time."""

    follows_budget = False

    def __init__(self, keep: Mapping[str, int]) -> None:
        super().__init__(min_keep_units=0)
        self.keep = {str(k): check_int(v, f"kept units of {k!r}", 0) for k, v in keep.items()}

    def distribute(self, targets, scores, keep_cost, measure, floors) -> Dict[str, int]:
        missing = [t.name for t in targets if t.name not in self.keep]
        if missing:
            raise ValueError(f"FixedKeep has no kept count for {missing[:5]}")
        return {t.name: self.keep[t.name] for t in targets}

    def __repr__(self) -> str:
        return f"FixedKeep({len(self.keep)} targets)"


def _check_refiner(refine: Any) -> None:
    if refine is not None and not callable(getattr(refine, "refine", None)):
        raise ValueError(f"refine must have a refine(target, mask, stats) method (e.g. DSnoT()), got {refine!r}")


def _needs_stats(crit: Criterion, alloc: Allocator, refine: Any) -> bool:
    return (crit.observes in ("calibration", "forward") or refine is not None
            or (getattr(alloc, "uses_activations", False) and getattr(alloc, "activations", None) is None))


def _refine(refine: Any, targets: Sequence[Target], masks: MaskSet, stats: Mapping[str, Any],
            info: Dict[str, Dict[str, float]]) -> None:
    for t in targets:
        if t.name not in stats:
            raise ValueError(f"{WHAT}: no input statistics for target {t.name!r} to refine its mask")
        new, details = refine.refine(t, masks[t.name], stats[t.name])
        if new.shape != masks[t.name].shape or new.dtype != torch.bool:
            raise ValueError(f"refiner {refine!r} returned a mask of shape {tuple(new.shape)} for {t.name!r}, "
                             f"expected a bool mask of shape {tuple(masks[t.name].shape)}")
        masks[t.name] = new
        info[t.name] = dict(details)


def calibrate_prune(
    model: nn.Module,
    targets: Sequence[Target],
    batches: Optional[Iterable],
    sparsity: float,
    criterion: Union[str, Criterion] = "wanda",
    allocator: Union[str, Allocator] = "uniform",
    measure: str = "units",
    forward: Optional[Forward] = None,
    refine: Any = None,
    sequential: bool = False,
    min_samples: int = 16,
    activations: Optional[Mapping[str, Any]] = None,
) -> CalibrationResult:
    """Prune ``targets`` to ``sparsity`` from calibration statistics; see the module doc.

    Args:
        batches: calibration batches (an iterator is read into a list); ``None`` only with
            ``activations``.
        criterion, allocator, measure: as :func:`~sparsity_core.oneshot.one_shot_prune`
            (default: Wanda's ``|W|·‖X‖₂`` and the same fraction per layer).
        forward: ``forward(model, batch)``; default ``model(*batch)`` for a tuple,
            ``model(**batch)`` for a mapping (a tokenizer's output), else ``model(batch)``.
        refine: a per-layer mask refiner (:class:`~sparsity_core.calibration.dsnot.DSnoT`).
        sequential: layer by layer, each layer observed after the earlier ones are pruned.
        min_samples: the fewest calibration samples (first dimension of each batch) accepted.
        activations: statistics already observed (an ``ActivationObserver``; with per-feature
            sums, ``means=True``, when the refiner needs means); skips the dense pass.
    """
    targets = list(targets)
    if not targets:
        raise ValueError(f"{WHAT} needs at least one target")
    sparsity = check_sparsity(sparsity)
    crit = build_component(CRITERIA, criterion, Criterion, "criterion")
    alloc = build_component(ALLOCATORS, allocator, Allocator, "allocator")
    _check_refiner(refine)
    if not isinstance(sequential, bool):
        raise ValueError(f"sequential must be True or False, got {sequential!r}")
    check_int(min_samples, f"{WHAT} min_samples", 1)
    needs_means = bool(getattr(refine, "needs_means", False))
    owned = {id(p) for p in model.parameters()}
    for t in targets:
        if t.param is None or id(t.param) not in owned:
            raise ValueError(f"target {t.name!r} has no parameter of the model to prune")
    if activations is not None:
        if sequential:
            raise ValueError("sequential=True observes every layer itself: do not pass activations")
        if needs_means and any(getattr(activations.get(t.name), "sum", None) is None for t in targets):
            raise ValueError(f"refiner {refine!r} needs per-feature input means: observe with means=True")
    elif _needs_stats(crit, alloc, refine) or sequential:
        batches = calibration_batches(batches, WHAT, min_samples)
    fwd = checked_forward(forward, WHAT)
    seconds = {"calibration": 0.0, "select": 0.0, "refine": 0.0}
    info: Dict[str, Dict[str, float]] = {}

    stats = activations
    if stats is None and _needs_stats(crit, alloc, refine):
        began = time.perf_counter()
        stats = ActivationObserver(model, targets, means=needs_means and not sequential)
        stats.calibrate(batches, fwd)
        seconds["calibration"] += time.perf_counter() - began
    began = time.perf_counter()
    first = one_shot_prune(model, targets, None, sparsity, criterion=crit, allocator=alloc, measure=measure,
                           activations=stats, apply=False)
    seconds["select"] += time.perf_counter() - began
    masks = first.masks

    if not sequential:
        if refine is not None:
            began = time.perf_counter()
            _refine(refine, targets, masks, stats, info)
            seconds["refine"] += time.perf_counter() - began
        with torch.no_grad():
            for t in targets:
                apply_mask_(t.param, t, masks[t.name])
    else:
        keep = FixedKeep({t.name: int(masks[t.name].sum()) for t in targets})
        by_module: Dict[str, List[Target]] = {}
        for t in targets:
            by_module.setdefault(t.module_name, []).append(t)
        saved = {t.name: t.param.detach().clone() for t in targets}
        masks = MaskSet()
        try:
            observer = ActivationObserver(model, targets, means=needs_means)
            layers = observer.layers(batches, fwd, keep=False)
            while True:
                began = time.perf_counter()
                step = next(layers, None)
                seconds["calibration"] += time.perf_counter() - began
                if step is None:
                    break
                module_name, module_stats = step
                group = by_module[module_name]
                local = {t.name: module_stats for t in group}
                began = time.perf_counter()
                part = one_shot_prune(model, group, None, sparsity, criterion=crit, allocator=keep, measure=measure,
                                      activations=local, apply=False).masks
                seconds["select"] += time.perf_counter() - began
                if refine is not None:
                    began = time.perf_counter()
                    _refine(refine, group, part, local, info)
                    seconds["refine"] += time.perf_counter() - began
                with torch.no_grad():
                    for t in group:
                        apply_mask_(t.param, t, part[t.name])
                        masks[t.name] = part[t.name]
        except BaseException:
            with torch.no_grad():
                for t in targets:
                    t.param.copy_(saved[t.name])
            raise
    seconds["per_layer"] = (seconds["select"] + seconds["refine"]) / len(targets)
    report = {"global": masks.weighted_sparsity(targets, measure)}
    report.update({t.name: masks.sparsity(t.name) for t in targets})
    return CalibrationResult(masks=masks, report=report, activations=stats, refinement=info, seconds=seconds)
