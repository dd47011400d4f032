"""Activation observer: per-target input statistics over calibration batches.

Forward pre-hooks on the module that owns each target (``target.module_name``) read the
module's input ``X`` and accumulate, per module:

- ``sq_sum[j] = Σ_r X_rj²``: the squared column norm ‖X_j‖₂² of input feature ``j`` over
  every row ``r`` seen (Wanda's statistic; Sun et al., 2023, "A Simple and Effective
  Pruning Approach for Large Language Models", https://arxiv.org/abs/2306.11695);
- ``rows``: the number of rows seen;
- optionally ``gram = XᵀX`` (float64), the Hessian proxy of OBS/SparseGPT-style methods;
- optionally ``sum[j] = Σ_r X_rj`` (``means=True``): per-feature means and variances
  (:meth:`InputStats.means`, :meth:`InputStats.variances`; DSnoT's ``E[X_j]``, ``Var[X_j]``).

A *row* is one input vector of the layer: for ``nn.Linear`` (and any module that is not a
convolution) the last dimension is the feature and every other index is a row (batch ×
tokens). For ``nn.Conv1d/2d/3d`` the feature is the input channel (dim 1, dim 0 when
unbatched) and a row is one (sample, spatial position): ``sq_sum[c]`` sums ``x²`` over the
batch and all input positions. That is the im2col column norm of every kernel offset of
channel ``c`` except at padded borders and positions a stride skips; likewise ``gram`` of a
convolution is the channel Gram matrix, not the im2col one. Sums are float64 on the
activations' device.

Two ways to run the batches (:meth:`ActivationObserver.calibrate`): one pass with every hook
installed (default), or ``layer_by_layer=True``: one pass over all batches *per observed
module* with only that module's hook installed (costs ``num_modules`` times the forwards;
``batches`` must be re-iterable). :meth:`ActivationObserver.layers` yields each module's
statistics as soon as its pass ends and can drop them afterwards (``keep=False``), so only
one layer's Gram matrix is ever held; a consumer that changes the module's weights before
resuming the generator (sequential pruning) gets the next layer's inputs from the changed
model. Hooks are always removed, also when a forward raises. Calibration runs under
``torch.no_grad()`` with the model in eval mode; its train/eval mode is restored.
"""
from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import nn

from .targets import Target

Forward = Callable[[nn.Module, Any], Any]


def default_forward(model: nn.Module, batch: Any) -> Any:
    """``model(*batch)`` for a tuple, else ``model(batch)``."""
    return model(*batch) if isinstance(batch, tuple) else model(batch)


@dataclass
class InputStats:
    """Raw sums of one module's inputs: ``sq_sum`` (Σx² per feature), ``rows``, ``gram`` (XᵀX),
    ``sum`` (Σx per feature, when tracked)."""

    sq_sum: torch.Tensor
    rows: int = 0
    gram: Optional[torch.Tensor] = None
    sum: Optional[torch.Tensor] = None

    def norms(self, mean: bool = False) -> torch.Tensor:
        """‖X_j‖₂ per feature; with ``mean`` the root mean square ``(Σx²/rows)^½``."""
        return (self.sq_sum / max(self.rows, 1)).sqrt() if mean else self.sq_sum.sqrt()

    def means(self) -> torch.Tensor:
        """``E[X_j] = Σx/rows`` per feature (needs ``sum``: observe with ``means=True``)."""
        if self.sum is None:
            raise ValueError("these input statistics have no per-feature sums: observe with means=True")
        return self.sum / max(self.rows, 1)

    def variances(self) -> torch.Tensor:
        """Population variance ``E[X_j²] − E[X_j]²`` per feature (clamped at 0)."""
        mean = self.means()
        return (self.sq_sum / max(self.rows, 1) - mean * mean).clamp_min(0.0)

    def add(self, rows: torch.Tensor) -> None:
        """Accumulate a ``[rows, features]`` block."""
        if rows.shape[1] != self.sq_sum.numel():
            raise ValueError(f"input has {rows.shape[1]} features, earlier inputs had {self.sq_sum.numel()}")
        x = rows.detach().to(torch.float64)
        self.sq_sum += (x * x).sum(dim=0)
        self.rows += x.shape[0]
        if self.gram is not None:
            self.gram += x.T @ x
        if self.sum is not None:
            self.sum += x.sum(dim=0)

    def state_dict(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"sq_sum": self.sq_sum.cpu().clone(), "rows": self.rows}
        if self.gram is not None:
            out["gram"] = self.gram.cpu().clone()
        if self.sum is not None:
            out["sum"] = self.sum.cpu().clone()
        return out

    @classmethod
    def from_state(cls, state: Mapping) -> "InputStats":
        gram, total = state.get("gram"), state.get("sum")
        return cls(state["sq_sum"].to(torch.float64).clone(), int(state["rows"]),
                   None if gram is None else gram.to(torch.float64).clone(),
                   None if total is None else total.to(torch.float64).clone())


def _feature_rows(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The input as ``[rows, features]`` (see the module doc for the convention)."""
    if isinstance(module, nn.modules.conv._ConvNd):
        channel_dim = 1 if x.dim() == len(module.kernel_size) + 2 else 0
        return x.movedim(channel_dim, -1).reshape(-1, x.shape[channel_dim])
    return x.reshape(-1, x.shape[-1])


def _first_tensor(args: tuple, kwargs: dict) -> Optional[torch.Tensor]:
    for value in list(args) + list(kwargs.values()):
        if isinstance(value, torch.Tensor):
            return value
    return None


class ActivationObserver(Mapping):
    """Input statistics of the modules owning ``targets``, readable by target name.

    ``observer[target.name]`` is the :class:`InputStats` of the target's module (targets of
    one module share it); only modules that have seen an input are present.
    """

    def __init__(self, model: nn.Module, targets: Sequence[Target], gram: bool = False, means: bool = False) -> None:
        modules = dict(model.named_modules())
        self.model = model
        self.gram = bool(gram)
        self.means = bool(means)
        self.module_of: Dict[str, str] = {}
        for t in targets:
            owner = modules.get(t.module_name)
            # "" (the model itself) only when the model holds the target's parameter: a bare Linear
            is_root_param = t.param is not None and any(p is t.param for p in model.parameters(recurse=False))
            if owner is None or not (t.module_name or is_root_param):
                raise ValueError(f"cannot observe the inputs of target {t.name!r}: module {t.module_name!r} "
                                 "is not a submodule of the model (targets need module_name=)")
            self.module_of[t.name] = t.module_name
        if not self.module_of:
            raise ValueError("ActivationObserver needs at least one target")
        self.modules: Dict[str, nn.Module] = {n: modules[n] for n in dict.fromkeys(self.module_of.values())}
        self.stats: Dict[str, InputStats] = {}  # by module name

    # -- Mapping over target names --------------------------------------------------------
    def __getitem__(self, target_name: str) -> InputStats:
        return self.stats[self.module_of[target_name]]

    def __iter__(self) -> Iterator[str]:
        return (t for t, m in self.module_of.items() if m in self.stats)

    def __len__(self) -> int:
        return sum(1 for _ in self)

    # -- hooks ---------------------------------------------------------------------------
    def _hook(self, name: str, training_only: bool = False) -> Callable:
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            if training_only and not module.training:
                return
            x = _first_tensor(args, kwargs)
            if x is None or not x.is_floating_point():
                raise ValueError(f"cannot observe module {name!r}: its input is not a floating-point tensor")
            rows = _feature_rows(module, x)
            if name not in self.stats:
                n = rows.shape[1]
                gram = torch.zeros(n, n, dtype=torch.float64, device=x.device) if self.gram else None
                total = torch.zeros(n, dtype=torch.float64, device=x.device) if self.means else None
                self.stats[name] = InputStats(torch.zeros(n, dtype=torch.float64, device=x.device), 0, gram, total)
            try:
                self.stats[name].add(rows)
            except ValueError as err:
                raise ValueError(f"module {name!r}: {err}") from None
        return hook

    @contextlib.contextmanager
    def hooks(self, modules: Optional[Iterable[str]] = None) -> Iterator[None]:
        """Install the pre-hooks of ``modules`` (default: all) for the ``with`` block."""
        handles = []
        try:
            for name in (self.modules if modules is None else modules):
                handles.append(self.modules[name].register_forward_pre_hook(self._hook(name), with_kwargs=True))
            yield
        finally:
            for h in handles:
                h.remove()

    def install(self) -> None:
        """Observe the inputs of every training forward from now on (until :meth:`remove`):
        a program scoring with activations during training (``wanda`` inside ``fit``)."""
        self.remove()
        self._installed = [self.modules[name].register_forward_pre_hook(self._hook(name, training_only=True),
                                                                         with_kwargs=True) for name in self.modules]

    def remove(self) -> None:
        for h in getattr(self, "_installed", []):
            h.remove()
        self._installed = []

    # -- running batches -----------------------------------------------------------------
    @contextlib.contextmanager
    def _calibration_mode(self) -> Iterator[None]:
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                yield
        finally:
            self.model.train(was_training)

    def _run(self, batches: Iterable, forward: Forward, modules: Sequence[str],
             on_batch: Optional[Callable[[Any], None]]) -> int:
        n = 0
        with self.hooks(modules), self._calibration_mode():
            for batch in batches:
                forward(self.model, batch)
                n += 1
                if on_batch is not None:
                    on_batch(batch)
        return n

    def layers(self, batches: Iterable, forward: Optional[Forward] = None, keep: bool = True,
               on_batch: Optional[Callable[[Any], None]] = None) -> Iterator[Tuple[str, InputStats]]:
        """One pass over ``batches`` per module with only its hook installed; yields
        ``(module_name, stats)`` after each pass (no hook is installed while the consumer
        runs). Statistics add to those already held, as in one pass; ``keep=False`` drops
        each module's statistics when the generator resumes.
        ``on_batch(batch)`` is called after each batch of the first pass only."""
        if iter(batches) is batches:
            raise ValueError("layer-by-layer observation runs the batches once per module: pass a re-iterable "
                             "(a list or a DataLoader), not an iterator")
        forward = forward or default_forward
        expected: Optional[int] = None
        for i, name in enumerate(self.modules):
            rows_before = self.stats[name].rows if name in self.stats else 0
            n = self._run(batches, forward, [name], on_batch if i == 0 else None)
            if n == 0:
                raise ValueError("activation observation got no batches")
            if expected is not None and n != expected:
                raise ValueError(f"batches gave {n} batches for module {name!r} but {expected} before: "
                                 "layer-by-layer observation needs the same batches on every pass")
            expected = n
            if name not in self.stats or self.stats[name].rows == rows_before:
                raise ValueError(f"module {name!r} was not called by the forward: no input statistics")
            yield name, self.stats[name]
            if not keep:
                del self.stats[name]

    def calibrate(self, batches: Iterable, forward: Optional[Forward] = None, layer_by_layer: bool = False,
                  on_batch: Optional[Callable[[Any], None]] = None) -> int:
        """Accumulate statistics over ``batches``; returns the number of batches.

        ``forward(model, batch)`` defaults to :func:`default_forward`. ``on_batch(batch)``
        is called after each batch (once per distinct batch in layer-by-layer mode).
        """
        if layer_by_layer:
            count = [0]

            def counted(batch: Any) -> None:
                count[0] += 1
                if on_batch is not None:
                    on_batch(batch)

            for _ in self.layers(batches, forward, keep=True, on_batch=counted):
                pass
            return count[0]
        n = self._run(batches, forward or default_forward, list(self.modules), on_batch)
        if n == 0:
            raise ValueError("activation observation got no batches")
        return n

    # -- state and synchronisation -------------------------------------------------------
    def reset(self) -> None:
        self.stats.clear()

    def state_dict(self) -> Dict[str, Any]:
        return {"gram": self.gram, "stats": {m: s.state_dict() for m, s in self.stats.items()}}

    def load_state_dict(self, state: Mapping) -> None:
        unknown = sorted(set(state["stats"]) - set(self.modules))
        if unknown:
            raise ValueError(f"observer state has statistics of modules this observer does not watch: {unknown[:5]}")
        self.gram = bool(state.get("gram", False))
        self.stats = {m: InputStats.from_state(s) for m, s in state["stats"].items()}
        self.means = any(s.sum is not None for s in self.stats.values())

    def reduce(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Replace every raw sum by ``fn(sums)``, called once on one flat float64 vector.

        Pass a cross-rank SUM all-reduce (e.g. ``lambda t: sync.all_reduce_mean(t) * world``)
        to get the statistics of all ranks' batches; every rank must have observed the same
        modules with the same ``gram`` and ``means`` settings.
        """
        names = sorted(self.stats)
        parts: List[torch.Tensor] = []
        for m in names:
            s = self.stats[m]
            parts += [s.sq_sum.reshape(-1), torch.tensor([float(s.rows)], dtype=torch.float64, device=s.sq_sum.device)]
            if s.gram is not None:
                parts.append(s.gram.reshape(-1))
            if s.sum is not None:
                parts.append(s.sum.reshape(-1))
        if not parts:
            return
        flat = fn(torch.cat(parts))
        offset = 0
        for m in names:
            s = self.stats[m]
            k = s.sq_sum.numel()
            s.sq_sum = flat[offset: offset + k].clone()
            s.rows = int(round(float(flat[offset + k])))
            offset += k + 1
            if s.gram is not None:
                s.gram = flat[offset: offset + k * k].reshape(k, k).clone()
                offset += k * k
            if s.sum is not None:
                s.sum = flat[offset: offset + k].clone()
                offset += k


def observe(model: nn.Module, targets: Sequence[Target], batches: Iterable, forward: Optional[Forward] = None,
            gram: bool = False, layer_by_layer: bool = False, means: bool = False) -> ActivationObserver:
    """An :class:`ActivationObserver` filled from ``batches`` (``means``: also Σx per feature)."""
    observer = ActivationObserver(model, targets, gram=gram, means=means)
    observer.calibrate(batches, forward, layer_by_layer=layer_by_layer)
    return observer
