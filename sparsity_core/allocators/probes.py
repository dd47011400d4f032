"""Forward-only probes for the allocators that measure the model (ECoFLaP, the searches).

A *probe* is a zero-argument callable returning the calibration loss of the model **with
its current weights** (a float or a scalar tensor). Allocators that need one change the
weights of the targets' parameters in place for the duration of a probe (a perturbation,
a trial mask) and restore them bit-exactly afterwards, also when the probe raises.

    probe = loss_probe(model, calibration_batches, lambda m, b: F.cross_entropy(m(b[0]), b[1]))
    one_shot_prune(model, targets, calibration_batches, 0.7, criterion="wanda",
                   allocator=ECoFLaP(probe=probe))

:func:`masked_evaluator` turns a probe into ``evaluate(masks) -> float`` (the loss with the
masks applied), what :class:`~sparsity_core.allocators.tyr.Search` and
:class:`~sparsity_core.allocators.random_search.RandomSearch` compare candidates by.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import torch
from torch import nn

from ..targets import Target

Probe = Callable[[], Any]
Evaluate = Callable[[Mapping[str, torch.Tensor]], Any]


def loss_probe(model: nn.Module, batches: Iterable, loss_fn: Callable[[nn.Module, Any], torch.Tensor]) -> Probe:
    """The mean of ``loss_fn(model, batch)`` (``one_shot_prune``'s ``loss_fn``) over ``batches``
    (re-iterable: a list or a DataLoader), in eval mode under ``torch.no_grad()``; the model's
    train/eval mode is restored."""
    if not callable(loss_fn):
        raise ValueError(f"loss_fn must be callable loss_fn(model, batch), got {loss_fn!r}")
    if iter(batches) is batches:
        raise ValueError("a probe runs the batches many times: pass a re-iterable (a list or a DataLoader), "
                         "not an iterator")

    def probe() -> float:
        was_training = model.training
        model.eval()
        total, count = 0.0, 0
        try:
            with torch.no_grad():
                for batch in batches:
                    total += float(loss_fn(model, batch))
                    count += 1
        finally:
            model.train(was_training)
        if count == 0:
            raise ValueError("the probe got no calibration batches")
        return total / count

    return probe


def call_probe(probe: Probe, what: str) -> float:
    """``float(probe())``, checked finite."""
    value = probe()
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must return a number (a float or a scalar tensor), got {type(value).__name__}") \
            from None
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"{what} returned {value}; nothing allocated, weights restored")
    return value


def weight_targets(targets: Sequence[Target], what: str) -> None:
    """Raise ``ValueError`` unless every target has a parameter to change for a probe."""
    for t in targets:
        if t.param is None:
            raise ValueError(f"{what} changes weights for its probes, but target {t.name!r} has no parameter; "
                             "give it a target list of weights (or an evaluate= callable for the searches)")


@contextlib.contextmanager
def restored(targets: Sequence[Target]) -> Iterator[None]:
    """Save the targets' parameters and put them back bit-exactly when the block ends."""
    saved = [(t.param, t.param.detach().clone()) for t in targets if t.param is not None]
    try:
        yield
    finally:
        with torch.no_grad():
            for p, value in saved:
                p.copy_(value)


def masked_evaluator(targets: Sequence[Target], probe: Probe) -> Evaluate:
    """``evaluate(masks)``: the probe's loss with the targets' pruned units zeroed (weights
    restored afterwards; targets missing from ``masks`` stay dense)."""
    weight_targets(targets, "a masked evaluation")
    by_name = {t.name: t for t in targets}

    def evaluate(masks: Mapping[str, torch.Tensor]) -> float:
        with restored(targets), torch.no_grad():
            for name, mask in masks.items():
                t = by_name[name]
                t.param.mul_(t.expand_mask(mask.to(t.param.device)).to(t.param.dtype))
            return call_probe(probe, "the probe")

    return evaluate
