"""Calibration data: the checks every calibration method applies before it changes anything.

A calibration set is an iterable of batches (a list, a ``DataLoader``; a one-shot iterator is
read into a list by :func:`calibration_batches`, as methods run it more than once). A batch is a tensor (its first dimension counts the
samples), a tuple/list of tensors (the first tensor counts) or a mapping of tensors such as a
tokenizer's output (``input_ids`` counts, else the first tensor). :func:`check_calibration`
counts the samples and raises ``ValueError`` naming the method, the count and the minimum
when there are too few; :func:`checked_forward` turns a forward that fails on a batch (a
shape that does not fit the model) into a ``ValueError`` naming the batch and its shapes.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Iterable, List, Optional

import torch
from torch import nn

from ..observe import Forward, default_forward
from ..validation import check_int


def batch_tensors(batch: Any) -> List[torch.Tensor]:
    """The tensors of one batch, in order (``input_ids`` first for a mapping)."""
    if isinstance(batch, torch.Tensor):
        return [batch]
    if isinstance(batch, Mapping):
        values = list(batch.values())
        if isinstance(batch.get("input_ids"), torch.Tensor):
            values = [batch["input_ids"]] + [v for k, v in batch.items() if k != "input_ids"]
        return [v for v in values if isinstance(v, torch.Tensor)]
    if isinstance(batch, (tuple, list)):
        return [v for v in batch if isinstance(v, torch.Tensor)]
    return []


def describe_batch(batch: Any) -> str:
    shapes = [tuple(t.shape) for t in batch_tensors(batch)]
    return ", ".join(str(s) for s in shapes) if shapes else type(batch).__name__


def batch_samples(batch: Any, index: int, what: str) -> int:
    """Samples in one batch: the first dimension of its first tensor."""
    tensors = batch_tensors(batch)
    if not tensors or tensors[0].dim() == 0:
        raise ValueError(f"{what}: calibration batch {index} has no tensor with a sample dimension "
                         f"(got {describe_batch(batch)}); pass tensors, tuples of tensors or a tokenizer's output")
    return int(tensors[0].shape[0])


def check_calibration(batches: Optional[Iterable], what: str, min_samples: int = 1, reiterable: bool = True) -> int:
    """Count the samples of ``batches``; ``ValueError`` when there are none, fewer than
    ``min_samples``, or ``batches`` is a one-shot iterator where ``reiterable`` is needed."""
    check_int(min_samples, f"{what} min_samples", 1)
    if batches is None:
        raise ValueError(f"{what} needs calibration batches, got None")
    if reiterable and iter(batches) is batches:
        raise ValueError(f"{what} runs the calibration batches more than once: pass a re-iterable "
                         "(a list or a DataLoader), not an iterator")
    samples = 0
    count = 0
    for i, batch in enumerate(batches):
        samples += batch_samples(batch, i, what)
        count += 1
    if count == 0:
        raise ValueError(f"{what}: the calibration data has no batches")
    if samples < min_samples:
        raise ValueError(f"{what}: the calibration data has {samples} samples in {count} batches; at least "
                         f"{min_samples} are needed (min_samples)")
    return samples


def calibration_batches(batches: Optional[Iterable], what: str, min_samples: int = 1) -> Iterable:
    """``batches`` checked by :func:`check_calibration` and re-iterable: a one-shot iterator
    (a generator) is read once into a list (calibration sets are small: a few hundred samples)."""
    if batches is not None and iter(batches) is batches:
        batches = list(batches)
    check_calibration(batches, what, min_samples)
    return batches


class CalibrationStop(Exception):
    """Raised by a hook to end a calibration forward early (the rest of the model is not run)."""


def checked_forward(forward: Optional[Forward], what: str) -> Forward:
    """``forward`` (default: :func:`~sparsity_core.observe.default_forward`, or ``model(**batch)``
    for a mapping) with shape errors re-raised as ``ValueError`` naming the batch."""
    base = forward

    def run(model: nn.Module, batch: Any) -> Any:
        try:
            if base is not None:
                return base(model, batch)
            if isinstance(batch, Mapping):
                return model(**batch)
            return default_forward(model, batch)
        except (RuntimeError, IndexError, TypeError, AssertionError) as err:  # timm asserts input sizes
            raise ValueError(f"{what}: a calibration batch (shapes {describe_batch(batch)}) does not fit "
                             f"the model: {err}") from err

    return run
