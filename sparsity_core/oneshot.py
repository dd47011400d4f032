"""One-shot pruning without training: observe, score, allocate, select, apply.

    result = one_shot_prune(model, discover_targets(model), calibration_batches, 0.5, criterion="wanda")
    result.masks, result.report

1. What the criterion observes (:attr:`Criterion.observes`) decides the pass over ``batches``:
   ``"calibration"``/``"forward"``: an :class:`~sparsity_core.observe.ActivationObserver`
   collects input statistics (``criterion.observe`` is called after each batch);
   ``"step"`` (Taylor, movement): ``loss_fn(model, batch).backward()`` per batch, then
   ``criterion.observe`` with the gradients; gradients held before are restored;
   ``"never"`` (magnitude): no pass, ``batches`` may be ``None``. Passes run in eval mode.
2. Every target is scored (one finite score per unit, else ``ValueError``).
3. The allocator splits ``Budget(sparsity, measure)`` into kept units per target, and
   ``target.layout.select`` picks the best units.
4. Unless ``apply=False``, pruned weights are set to zero (``masks.apply_mask_``).

Bad input raises ``ValueError`` before any weight changes, and the model is left in its
train/eval mode. :func:`build_component`, :func:`score_targets` and :func:`select_masks`
are the steps the training-time controller performs too.
"""
from __future__ import annotations

import copy

from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, Mapping, Optional, Sequence, Union

import torch
from torch import nn

from .allocators.base import Allocator
from .allocators.budget import Budget
from .allocators.probes import loss_probe
from .criteria.base import Criterion, ScoreContext
from .masks import MaskSet, apply_mask_
from .observe import ActivationObserver, Forward
from .registry import ALLOCATORS, CRITERIA
from .selection import build_component, score_targets, select_masks
from .targets import Target
from .validation import check_sparsity

LossFn = Callable[[nn.Module, Any], torch.Tensor]


@dataclass
class OneShotResult:
    """``masks`` (True = kept), ``report`` (``"global"``: fraction of ``measure`` pruned; per
    target: fraction of units pruned) and the ``activations`` observed (or ``None``)."""

    masks: MaskSet
    report: Dict[str, float]
    activations: Optional[Mapping[str, Any]] = None


def _check(model: nn.Module, targets: Sequence[Target], criterion: Criterion, batches: Any,
           forward: Optional[Forward], loss_fn: Optional[LossFn], apply: bool, have_stats: bool) -> None:
    if not targets:
        raise ValueError("one_shot_prune needs at least one target")
    names = [t.name for t in targets]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate target names: {sorted({n for n in names if names.count(n) > 1})}")
    if apply:
        owned = {id(p) for p in model.parameters()}
        for t in targets:
            if t.param is None or id(t.param) not in owned:
                raise ValueError(f"target {t.name!r} has no parameter of the model to zero; pass apply=False "
                                 "to compute masks only")
    if forward is not None and not callable(forward):
        raise ValueError(f"forward must be callable forward(model, batch), got {forward!r}")
    mode = criterion.observes
    if mode == "step" and not callable(loss_fn):
        raise ValueError(f"criterion {criterion!r} scores from gradients: one_shot_prune needs loss_fn(model, batch) "
                         "returning a scalar loss")
    needs_batches = mode == "step" or (mode in ("calibration", "forward") and not have_stats)
    if needs_batches and batches is None:
        raise ValueError(f"criterion {criterion!r} observes {mode!r}: one_shot_prune needs calibration batches")


def gradient_pass(model: nn.Module, targets: Sequence[Target], criterion: Criterion, batches: Iterable,
                  loss_fn: LossFn) -> int:
    """``loss_fn(model, batch).backward()`` then ``criterion.observe`` per batch (gradient
    criteria without training: Taylor, Fisher sensitivity); the gradients the model held are
    restored and weights are not changed. Returns the number of batches."""
    params = [p for p in model.parameters() if p.requires_grad]
    saved = [p.grad for p in params]
    n = 0
    try:
        for batch in batches:
            for p in params:
                p.grad = None
            with torch.enable_grad():  # also under a caller's no_grad()
                loss = loss_fn(model, batch)
                if not (isinstance(loss, torch.Tensor) and loss.numel() == 1):
                    raise ValueError(f"loss_fn must return a scalar tensor, got {type(loss).__name__}")
                loss.backward()
            context = ScoreContext(step=n, batch=batch)
            for t in targets:
                criterion.observe(t, context)
            n += 1
    finally:
        for p, g in zip(params, saved):
            p.grad = g
    if n == 0:
        raise ValueError("the gradient pass got no batches")
    return n


def _wants_activations(alloc: Allocator) -> bool:
    """An allocator that reads input statistics (``uses_activations``: OWL, knapsack) and was
    built without them."""
    return getattr(alloc, "uses_activations", False) and getattr(alloc, "activations", None) is None


def _bind_allocator(alloc: Allocator, model: nn.Module, batches: Optional[Iterable], loss_fn: Optional[LossFn],
                    activations: Optional[Mapping[str, Any]]) -> Allocator:
    """A copy of ``alloc`` (the caller's object is not changed) given what it measures with
    and was built without: the calibration statistics (``uses_activations``: OWL, knapsack)
    and a probe over the calibration batches and ``loss_fn`` (``needs_probe``: ECoFLaP,
    search)."""
    probe = (getattr(alloc, "needs_probe", False) and loss_fn is not None and batches is not None
             and getattr(alloc, "probe", None) is None and getattr(alloc, "evaluate", None) is None)
    stats = _wants_activations(alloc) and activations is not None
    if not (probe or stats):
        return alloc
    alloc = copy.copy(alloc)
    if probe:
        alloc.probe = loss_probe(model, batches, loss_fn)
    if stats:
        alloc.activations = activations
    return alloc


def one_shot_prune(
    model: nn.Module,
    targets: Sequence[Target],
    batches: Optional[Iterable],
    sparsity: float,
    criterion: Union[str, Criterion] = "magnitude",
    allocator: Union[str, Allocator] = "global",
    measure: str = "units",
    forward: Optional[Forward] = None,
    layer_by_layer: bool = False,
    loss_fn: Optional[LossFn] = None,
    gram: bool = False,
    activations: Optional[Mapping[str, Any]] = None,
    apply: bool = True,
) -> OneShotResult:
    """Prune ``targets`` of ``model`` to ``sparsity`` (of ``measure``) without training.

    Args:
        batches: calibration batches (re-iterable for ``layer_by_layer``); ``None`` is fine
            for criteria that observe nothing.
        forward: ``forward(model, batch)`` for calibration; default ``model(*batch)`` for a
            tuple, else ``model(batch)``.
        layer_by_layer: observe one module at a time (one pass over ``batches`` per module).
        loss_fn: ``loss_fn(model, batch) -> scalar`` for gradient criteria (``observes="step"``);
            allocators that measure the model (``"ecoflap"``, ``"search"``, ``"random_search"``)
            built without a probe get one from it over ``batches``; allocators that read input
            statistics (``"owl"``, ``"knapsack"``) get the calibration pass's.
        gram: also accumulate ``XᵀX`` per module (float64).
        activations: precomputed input statistics (an ``ActivationObserver``); skips the pass.
        apply: zero the pruned weights (default); ``False`` only computes the masks.
    """
    targets = list(targets)
    crit = build_component(CRITERIA, criterion, Criterion, "criterion")
    alloc = build_component(ALLOCATORS, allocator, Allocator, "allocator")
    budget = Budget(sparsity=check_sparsity(sparsity), measure=measure)
    _check(model, targets, crit, batches, forward, loss_fn, apply, activations is not None)
    was_training = model.training
    try:
        observe = crit.observes in ("calibration", "forward") or (_wants_activations(alloc) and batches is not None)
        if observe and activations is None:
            activations = ActivationObserver(model, targets, gram=gram)

            def observe_batch(batch: Any) -> None:
                context = ScoreContext(batch=batch, activations=activations)
                for t in targets:
                    crit.observe(t, context)

            activations.calibrate(batches, forward, layer_by_layer=layer_by_layer, on_batch=observe_batch)
        elif crit.observes == "step":
            model.eval()
            gradient_pass(model, targets, crit, batches, loss_fn)
        scores = score_targets(crit, targets, ScoreContext(activations=activations))
        masks = select_masks(_bind_allocator(alloc, model, batches, loss_fn, activations), targets, scores, budget)
    finally:
        model.train(was_training)
    if apply:
        for t in targets:
            apply_mask_(t.param, t, masks[t.name])
    report = {"global": masks.weighted_sparsity(targets, measure)}
    report.update({t.name: masks.sparsity(t.name) for t in targets})
    return OneShotResult(masks=masks, report=report, activations=activations)
