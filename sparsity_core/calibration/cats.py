"""CATS: contextually-aware thresholding for activation sparsity (Lee et al., 2024, "CATS:
Contextually-Aware Thresholding for Sparsity in Large Language Models",
https://arxiv.org/abs/2404.08763).

The MLP activation ``a = σ(x W₁)`` (SiLU of the gate in the paper's gated MLPs; GELU in
BERT) is replaced by

    CATS(a)_j = a_j  if |a_j| > t,   0 otherwise,

with one threshold ``t`` per wrapped activation, calibrated so that a target fraction ``k`` of
its entries is zeroed: ``t`` is the ``k``-quantile of ``|a|`` over the calibration tokens (the
paper's empirical CDF, per layer). Entries that are zero need not be multiplied by the next
linear (the rows of ``W₂``); the wrapper only produces the zeros.

:class:`CATS` wraps an activation module or function (drop-in: replace the attribute, e.g.
``layer.intermediate.intermediate_act_fn`` of BERT or ``mlp.act`` of a timm block);
:func:`calibrate_cats` wraps the named activations, estimates each threshold from the
calibration batches (all values if they fit in ``max_samples`` per activation, else a uniform
random subsample of every batch) and sets it. ``track=True`` counts zeros, so the activation
sparsity on any data is measured by running it (:func:`measure_activation_sparsity`).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Union

import torch
from torch import nn

from ..observe import Forward
from ..validation import check_int, check_sparsity
from .data import calibration_batches, checked_forward

WHAT = "calibrate_cats"


class CATS(nn.Module):
    """``act`` followed by zeroing every entry with ``|a| ≤ threshold`` (a buffer; negative:
    nothing is zeroed). With ``track`` the zeros and entries seen are counted
    (``zeros``/``seen``; :meth:`sparsity`)."""

    def __init__(self, act: Union[nn.Module, Callable[[torch.Tensor], torch.Tensor]], threshold: float = -1.0,
                 track: bool = False) -> None:
        super().__init__()
        if not callable(act):
            raise ValueError(f"CATS wraps a callable activation, got {act!r}")
        self.act = act
        self.register_buffer("threshold", torch.tensor(float(threshold)))
        self.track = bool(track)
        self._record: Optional[Callable[[torch.Tensor], None]] = None
        self.zeros = 0
        self.seen = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.act(x)
        if self._record is not None:
            self._record(a)
        out = torch.where(a.abs() > self.threshold.to(a.dtype), a, torch.zeros((), dtype=a.dtype, device=a.device))
        if self.track:
            self.zeros += int((out == 0).sum())
            self.seen += out.numel()
        return out

    def reset_counts(self) -> None:
        self.zeros = self.seen = 0

    def sparsity(self) -> float:
        """Fraction of zero outputs counted since the last reset."""
        return self.zeros / self.seen if self.seen else 0.0

    def extra_repr(self) -> str:
        return f"threshold={float(self.threshold):.6g}"


@dataclass
class CATSResult:
    """``thresholds`` per wrapped activation, the target ``sparsity``, the calibration
    ``samples`` per activation used for the quantile, and the wall ``seconds``."""

    thresholds: Dict[str, float]
    sparsity: float
    samples: Dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


def _resolve(model: nn.Module, name: str):
    owner: Any = model
    parts = name.split(".")
    for p in parts[:-1]:
        owner = getattr(owner, p, None)
        if owner is None:
            raise ValueError(f"{WHAT}: {name!r} does not exist in the model")
    if not hasattr(owner, parts[-1]):
        raise ValueError(f"{WHAT}: {name!r} does not exist in the model")
    return owner, parts[-1], getattr(owner, parts[-1])


def _assign(owner: Any, attr: str, value: Any) -> None:
    """``setattr`` that also puts a plain function back where a module was registered."""
    if isinstance(owner, nn.Module) and attr in owner._modules and not isinstance(value, nn.Module):
        del owner._modules[attr]
    setattr(owner, attr, value)


def remove_cats(model: nn.Module, names: Sequence[str]) -> None:
    """Put the wrapped activations back (undo :func:`calibrate_cats`)."""
    for name in names:
        owner, attr, value = _resolve(model, name)
        if isinstance(value, CATS):
            _assign(owner, attr, value.act)


def calibrate_cats(model: nn.Module, names: Sequence[str], batches: Iterable, sparsity: float,
                   forward: Optional[Forward] = None, max_samples: int = 1 << 21, min_samples: int = 8,
                   seed: int = 0, track: bool = True) -> CATSResult:
    """Wrap the activations ``names`` (dotted attribute names) in :class:`CATS` and set each
    threshold to the ``sparsity``-quantile of ``|a|`` on ``batches`` (``min_samples`` batch
    samples at least). An activation already wrapped is re-calibrated. On any error the
    activations are left as they were."""
    sparsity = check_sparsity(sparsity)
    check_int(max_samples, "max_samples", 1)
    check_int(seed, "seed", 0)
    names = list(names)
    if not names:
        raise ValueError(f"{WHAT} needs at least one activation name")
    if len(set(names)) != len(names):
        raise ValueError(f"{WHAT}: activation names repeat: {names}")
    resolved = [_resolve(model, n) for n in names]
    for n, (_, _, value) in zip(names, resolved):
        if not callable(value):
            raise ValueError(f"{WHAT}: {n!r} is not a callable activation, got {value!r}")
    batches = calibration_batches(batches, WHAT, min_samples)
    fwd = checked_forward(forward, WHAT)
    began = time.perf_counter()
    batches_count = len(batches) if hasattr(batches, "__len__") else 0
    per_batch = max(1, max_samples // batches_count) if batches_count else max_samples
    gen = torch.Generator().manual_seed(int(seed))
    wrappers: List[CATS] = []
    previous = []
    for (owner, attr, value) in resolved:
        previous.append((owner, attr, value))
        wrapper = value if isinstance(value, CATS) else CATS(value, track=track)
        wrapper.threshold.fill_(-1.0)
        wrappers.append(wrapper)
    values: Dict[int, List[torch.Tensor]] = {i: [] for i in range(len(wrappers))}

    def recorder(i: int) -> Callable[[torch.Tensor], None]:
        def record(a: torch.Tensor) -> None:
            flat = a.detach().abs().reshape(-1).float().cpu()
            if flat.numel() > per_batch:
                flat = flat[torch.randint(flat.numel(), (per_batch,), generator=gen)]
            values[i].append(flat)
        return record

    was_training = model.training
    try:
        for (owner, attr, _), w in zip(resolved, wrappers):
            setattr(owner, attr, w)
        for i, w in enumerate(wrappers):
            w._record = recorder(i)
        model.eval()
        with torch.no_grad():
            for batch in batches:
                fwd(model, batch)
        thresholds: Dict[str, float] = {}
        samples: Dict[str, int] = {}
        for i, (name, w) in enumerate(zip(names, wrappers)):
            if not values[i]:
                raise ValueError(f"{WHAT}: activation {name!r} was not called by the forward")
            allv = torch.cat(values[i])
            if not torch.isfinite(allv).all():
                raise ValueError(f"{WHAT}: activation {name!r} produced NaN/Inf on the calibration data")
            k = int(round(sparsity * allv.numel()))
            thresholds[name] = float(torch.kthvalue(allv, k).values) if k > 0 else -1.0
            samples[name] = int(allv.numel())
        for name, w in zip(names, wrappers):
            w.threshold.fill_(thresholds[name])
            w.reset_counts()
    except BaseException:
        for owner, attr, value in previous:
            _assign(owner, attr, value)
        raise
    finally:
        for w in wrappers:
            w._record = None
        model.train(was_training)
    return CATSResult(thresholds, sparsity, samples, time.perf_counter() - began)


def measure_activation_sparsity(model: nn.Module, names: Sequence[str], batches: Iterable,
                                forward: Optional[Forward] = None) -> Dict[str, float]:
    """Fraction of zeros each :class:`CATS` wrapper ``names`` outputs on ``batches`` (and
    ``"mean"`` over them, weighted by entries)."""
    wrappers = []
    for n in names:
        value = _resolve(model, n)[2]
        if not isinstance(value, CATS):
            raise ValueError(f"{n!r} is not a CATS wrapper; calibrate_cats first")
        wrappers.append(value)
    fwd = checked_forward(forward, "measure_activation_sparsity")
    saved = [(w.track, w.zeros, w.seen) for w in wrappers]
    for w in wrappers:
        w.track = True
        w.reset_counts()
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in batches:
                fwd(model, batch)
        out = {n: w.sparsity() for n, w in zip(names, wrappers)}
        seen = sum(w.seen for w in wrappers)
        out["mean"] = sum(w.zeros for w in wrappers) / seen if seen else 0.0
    finally:
        model.train(was_training)
        for w, (track, zeros, seen_) in zip(wrappers, saved):
            w.track, w.zeros, w.seen = track, zeros, seen_
    return out
