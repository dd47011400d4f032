"""Per-task probes of a multi-task model, and their evaluation under channel-group masks.

A *task probe* is a zero-argument callable returning the calibration loss of every task of
the model **with its current weights**: ``{task: loss}`` (a float or a scalar tensor each).
It is the multi-task form of the core's probe
(:mod:`~sparsity_core.allocators.probes`), which returns one loss; a probe that returns a
single number is read as one task named ``"loss"``.

    probe = task_loss_probe(model, batches, lambda m, b: {t: F.cross_entropy(m(b[0])[t], b[1][t]) for t in tasks})
    evaluate = group_task_evaluator(groups.targets, probe)
    evaluate({"backbone.4:out": mask})      # {task: loss} with the masked channels zeroed

:func:`group_task_evaluator` zeroes every tensor slice of the pruned units of each masked
channel group (:class:`~sparsity_core.targets.SliceTarget`), calls the probe and puts the
tensors back bit-exactly (also when the probe raises). For convolutions followed by
BatchNorm the zeroed network computes exactly what the physically pruned one will; a
LayerNorm over a masked group still normalises over every channel during the probe.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, Iterable, Mapping, Sequence

import torch
from torch import nn

from sparsity_core.targets import SliceTarget

TaskProbe = Callable[[], Any]
TaskEvaluate = Callable[[Mapping[str, torch.Tensor]], Dict[str, float]]


def task_loss_probe(model: nn.Module, batches: Iterable,
                    loss_fn: Callable[[nn.Module, Any], Mapping[str, torch.Tensor]]) -> TaskProbe:
    """``probe() -> {task: mean of loss_fn(model, batch)[task] over batches}`` in eval mode under
    ``torch.no_grad()``; the model's train/eval mode is restored. ``batches`` must be
    re-iterable (a list or a DataLoader)."""
    if not callable(loss_fn):
        raise ValueError(f"loss_fn must be callable loss_fn(model, batch) -> {{task: loss}}, got {loss_fn!r}")
    if iter(batches) is batches:
        raise ValueError("a task probe runs the batches many times: pass a re-iterable (a list or a DataLoader), "
                         "not an iterator")

    def probe() -> Dict[str, float]:
        was_training = model.training
        model.eval()
        totals: Dict[str, float] = {}
        count = 0
        try:
            with torch.no_grad():
                for batch in batches:
                    for task, value in read_losses(loss_fn(model, batch), "loss_fn").items():
                        totals[task] = totals.get(task, 0.0) + value
                    count += 1
        finally:
            model.train(was_training)
        if count == 0:
            raise ValueError("the task probe got no calibration batches")
        return {t: v / count for t, v in totals.items()}

    return probe


def read_losses(value: Any, what: str) -> Dict[str, float]:
    """``{task: float}`` from a mapping of scalars, or ``{"loss": float}`` from one scalar;
    every loss finite and non-negative (relative thresholds divide by them)."""
    items = value.items() if isinstance(value, Mapping) else [("loss", value)]
    out: Dict[str, float] = {}
    for task, loss in items:
        try:
            loss = float(loss)
        except (TypeError, ValueError):
            raise ValueError(f"{what} must return a number or a {{task: number}} mapping, got "
                             f"{type(loss).__name__} for {task!r}") from None
        if not math.isfinite(loss) or loss < 0:
            raise ValueError(f"{what} returned loss {loss} for task {task!r}; losses must be finite and >= 0")
        out[str(task)] = loss
    if not out:
        raise ValueError(f"{what} returned no task loss")
    return out


def check_slice_targets(targets: Sequence[Any], what: str) -> None:
    """Raise ``ValueError`` unless every target is a sliced target (a channel group)."""
    bad = [getattr(t, "name", repr(t)) for t in targets if not isinstance(t, SliceTarget)]
    if bad:
        raise ValueError(f"{what} zeroes the tensor slices of channel groups; {bad[:3]} are not channel groups "
                         "(discover them with sparsity_plugins.vision.discover_channel_groups)")


def group_task_evaluator(targets: Sequence[SliceTarget], probe: TaskProbe) -> TaskEvaluate:
    """``evaluate(masks) -> {task: loss}`` with the pruned units of every masked group zeroed
    in all their slices; tensors restored afterwards (targets missing from ``masks`` stay dense)."""
    check_slice_targets(targets, "a masked task evaluation")
    if not callable(probe):
        raise ValueError(f"the task probe must be a callable probe() -> {{task: loss}}, got {probe!r}")
    by_name = {t.name: t for t in targets}

    def evaluate(masks: Mapping[str, torch.Tensor]) -> Dict[str, float]:
        unknown = sorted(set(masks) - set(by_name))
        if unknown:
            raise ValueError(f"masks name unknown groups {unknown[:3]}")
        tensors = {s.tensor: by_name[n].tensor(s) for n in masks for s in by_name[n].slices}
        saved = {name: t.detach().clone() for name, t in tensors.items()}
        try:
            with torch.no_grad():
                for name, mask in masks.items():
                    t = by_name[name]
                    for s in t.slices:
                        pos = t.unit_positions(s, mask)
                        if pos.numel():
                            tensor = tensors[s.tensor]
                            tensor.index_fill_(s.dim, pos.to(tensor.device), 0)
            return read_losses(probe(), "the task probe")
        finally:
            with torch.no_grad():
                for name, value in saved.items():
                    tensors[name].copy_(value)

    return evaluate
