"""Sparse execution of masked layers for inference, chosen per layer by measurement.

A model trained to 90 % unstructured or 2:4 sparsity still multiplies its zeros: the masks
are made permanent (``finalize``) but the weights stay dense tensors. :func:`export_sparse`
moves each masked ``nn.Linear`` (and pointwise ``nn.Conv2d``: 1×1, stride 1, no padding,
one group) whose weight is at least ``min_sparsity`` zeros to a sparse execution path *where
that is faster on the device the model is on*, and leaves it dense where not:

    y = W x + b   with W stored as  CSR (torch.sparse with int32 indices: MKL on x86 CPUs;
                                    a matrix-vector product for one row),
                                    CSR in SciPy (``scipy.sparse``, single-threaded; CPU,
                                    when SciPy is installed; float32/float64),
                                    BSR with b×b blocks (CPU; offered when at least half the
                                    blocks are all zero, i.e. for block-structured masks),
                                    2:4 semi-structured (CUDA, fp16/bf16, 2:4 masks only).

For every candidate layer the export captures the layer's real input from one forward pass
of the example input, checks each format's output against the dense layer (relative error
``max|y − y_dense| / max|y_dense| ≤ rtol``), times dense and each format interleaved (warm-up,
median of ``repeats``, in the current thread setting), and replaces the layer only when the
fastest format beats dense by ``min_speedup``. The report says per layer what it chose and
why. The whole model's output is checked the same way at the end; if it differs, every
layer is put back and a ``ValueError`` says so (nothing is left half-exported). Last, the
whole model is timed with the chosen layers against the same model with its dense layers
(interleaved, same repeats): per-layer wins that do not add up end to end (a margin that was
noise, a cache the dense neighbours now share) put every layer back, with the measured
times in the report, so the export is never slower than the dense model as measured here
(``min_model_speedup``, default 1.0; ``None`` skips the check).

CPU sparse kernels pay off only at high sparsity and mostly at batch 1 (memory-bound matrix-
vector products); at 2:4 (50 %) the CPU has no kernel that beats dense, so such layers stay
dense with the measured reason. The exported modules are for inference (no gradients through
the sparse weights); keep the dense model for training and checkpoints.
"""
from __future__ import annotations

import importlib
import importlib.util
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils._pytree import tree_leaves

from .validation import check_int, check_positive, check_range

BSR_BLOCKS = (4, 8, 16)


class SparseLinear(nn.Module):
    """``y = W x + b`` over the last dimension of ``x`` with ``W`` (``out × in``) stored sparse
    (``fmt``: ``"csr"``, ``"scipy-csr"``, ``"bsr<b>"`` or ``"2:4"``); ``bias`` dense or ``None``.
    Inference only: a call that needs gradients is an error."""

    def __init__(self, weight: Tensor, bias: Optional[Tensor], fmt: str) -> None:
        super().__init__()
        self.fmt = fmt
        self.out_features, self.in_features = int(weight.shape[0]), int(weight.shape[1])
        self.weight = weight  # a sparse tensor: not a Parameter, not in the state dict
        self.bias = None if bias is None else bias.detach().clone()

    def forward(self, x: Tensor) -> Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            raise RuntimeError("sparse-exported layers are for inference: run them under torch.no_grad() "
                               "(train the dense model)")
        if self.fmt == "2:4":
            return F.linear(x, self.weight, self.bias)
        rows = x.reshape(-1, self.in_features)
        if self.fmt == "scipy-csr":  # (W · Xᵀ)ᵀ in SciPy on the CPU
            y = torch.from_numpy(self.weight @ rows.numpy().T).t()
        elif rows.shape[0] == 1 and self.fmt == "csr":  # one row: a sparse matrix-vector product
            y = torch.mv(self.weight, rows[0]).unsqueeze(0)
        else:  # a contiguous right-hand side: the strided transpose takes a slower path (~3x at 4096²)
            y = torch.sparse.mm(self.weight, rows.t().contiguous()).t()
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features)

    def _apply(self, fn, recurse=True):  # .to(device) moves the sparse weight and the bias too
        if self.fmt == "scipy-csr":
            probe = torch.zeros(1, dtype=torch.float32)
            moved = fn(probe)
            if moved.device != probe.device or moved.dtype != probe.dtype:
                raise RuntimeError("a SciPy sparse weight stays on the CPU in its dtype: move the dense model, "
                                   "then export again")
            return super()._apply(fn, recurse)
        self.weight = fn(self.weight)
        if self.bias is not None:
            self.bias = fn(self.bias)
        return super()._apply(fn, recurse)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, format={self.fmt}"


class SparseConv1x1(nn.Module):
    """A pointwise convolution (``N×C×H×W``) run as :class:`SparseLinear` over the channels."""

    def __init__(self, linear: SparseLinear) -> None:
        super().__init__()
        self.linear = linear

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


@dataclass
class LayerChoice:
    """What the export decided for one layer (times in milliseconds, median)."""

    name: str
    shape: Tuple[int, int]
    sparsity: float
    chosen: str
    dense_ms: float
    times_ms: Dict[str, float] = field(default_factory=dict)
    reason: str = ""


@dataclass
class SparseExport:
    """The per-layer report of :func:`export_sparse`."""

    layers: List[LayerChoice]
    threads: int
    #: end-to-end medians of the whole model, ``{"dense": ms, "sparse": ms}`` (empty when not timed)
    model_ms: Dict[str, float] = field(default_factory=dict)

    @property
    def replaced(self) -> List[LayerChoice]:
        return [c for c in self.layers if c.chosen != "dense"]

    def table(self) -> str:
        lines = [f"sparse export ({self.threads} threads): {len(self.replaced)} of {len(self.layers)} layers sparse"]
        if self.model_ms:
            lines.append(f"  end to end: dense {self.model_ms['dense']:.3f} ms, sparse layers "
                         f"{self.model_ms['sparse']:.3f} ms")
        for c in self.layers:
            lines.append(f"  {c.name} {c.shape[0]}x{c.shape[1]} {c.sparsity:.0%} zeros -> {c.chosen}: {c.reason}")
        return "\n".join(lines)


def _pointwise(m: nn.Module) -> bool:
    return (isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.stride == (1, 1) and m.padding == (0, 0)
            and m.dilation == (1, 1) and m.groups == 1 and m.padding_mode == "zeros")


def _matrix(m: nn.Module) -> Tensor:
    return m.weight.detach().reshape(m.weight.shape[0], -1)


def _is_2to4(w: Tensor) -> bool:
    return w.shape[1] % 4 == 0 and bool(((w.reshape(-1, 4) != 0).sum(1) <= 2).all())


def _csr32(w: Tensor) -> Tensor:
    """CSR with int32 indices: torch hands those to MKL's sparse BLAS on x86 CPUs (int64
    indices take torch's own kernel, measured 2-5x slower at 4096² and 95 %)."""
    c = w.to_sparse_csr()
    if c.values().numel() >= 2 ** 31 or max(w.shape) >= 2 ** 31:
        return c
    return torch.sparse_csr_tensor(c.crow_indices().to(torch.int32), c.col_indices().to(torch.int32), c.values(),
                                   size=tuple(w.shape))


def _formats(w: Tensor) -> Dict[str, Callable[[], Tensor]]:
    """The sparse storages worth trying for ``w`` on its device, each as a builder."""
    out: Dict[str, Callable[[], Tensor]] = {}
    if w.device.type == "cuda":
        if w.dtype in (torch.float16, torch.bfloat16) and _is_2to4(w):
            out["2:4"] = lambda: torch.sparse.to_sparse_semi_structured(w)
        out["csr"] = lambda: _csr32(w)
        return out
    out["csr"] = lambda: _csr32(w)
    if w.dtype in (torch.float32, torch.float64) and importlib.util.find_spec("scipy") is not None:
        out["scipy-csr"] = lambda: importlib.import_module("scipy.sparse").csr_matrix(w.numpy())
    for b in BSR_BLOCKS:
        if w.shape[0] % b or w.shape[1] % b:
            continue
        blocks = w.reshape(w.shape[0] // b, b, w.shape[1] // b, b).ne(0).any(3).any(1)
        if float(blocks.float().mean()) <= 0.5:
            out[f"bsr{b}"] = lambda b=b: w.to_sparse_bsr((b, b))
    return out


def relative_error(y: Tensor, ref: Tensor) -> float:
    """``max|y − ref| / max|ref|`` (the absolute error when ``ref`` is all zeros)."""
    scale = float(ref.abs().max()) if ref.numel() else 0.0
    return float((y - ref).abs().max()) / scale if scale > 0 else float((y - ref).abs().max())


def _time(calls: Dict[str, Callable[[], object]], repeats: int, warmup: int) -> Dict[str, float]:
    """Median milliseconds of each call, interleaved (repeat r runs them rotated by r)."""
    names = list(calls)
    for name in names:
        for _ in range(warmup):
            calls[name]()
    times: Dict[str, List[float]] = {n: [] for n in names}
    for r in range(repeats):
        for i in range(len(names)):
            name = names[(i + r) % len(names)]
            t0 = time.perf_counter()
            calls[name]()
            times[name].append(time.perf_counter() - t0)
    return {n: 1e3 * statistics.median(v) for n, v in times.items()}


def _capture_inputs(model: nn.Module, layers: Dict[str, nn.Module], args: tuple, kwargs: dict):
    seen: Dict[str, Tensor] = {}

    def keep_first(name: str):
        def hook(module: nn.Module, inputs: tuple, output) -> None:
            seen.setdefault(name, inputs[0].detach())
        return hook

    hooks = [m.register_forward_hook(keep_first(name)) for name, m in layers.items()]
    try:
        output = model(*args, **kwargs)
    finally:
        for h in hooks:
            h.remove()
    return seen, output


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


@torch.no_grad()
def export_sparse(model: nn.Module, *args, min_sparsity: float = 0.5, min_speedup: float = 1.1, repeats: int = 15,
                  warmup: int = 3, rtol: float = 1e-5, include: Optional[Sequence[str]] = None,
                  min_model_speedup: Optional[float] = 1.0, **kwargs) -> SparseExport:
    """Replace masked linear / pointwise layers of ``model`` by sparse ones where measured
    faster on ``model(*args, **kwargs)`` (see the module); returns the per-layer report.
    ``include``: only layers whose qualified name is in it (default: every candidate).
    ``min_model_speedup``: the whole model with its sparse layers must run at least this much
    faster than with its dense ones, or every layer goes back (``None``: not timed)."""
    check_range(min_sparsity, "min_sparsity")
    check_positive(min_speedup, "min_speedup")
    if min_model_speedup is not None:
        check_positive(min_model_speedup, "min_model_speedup")
    check_int(repeats, "repeats", 1)
    check_int(warmup, "warmup", 0)
    check_positive(rtol, "rtol")
    named = dict(model.named_modules())
    if include is not None:
        unknown = sorted(set(include) - set(named))
        if unknown:
            raise ValueError(f"include names modules the model does not have: {unknown[:5]}")
    if isinstance(model, nn.Linear) or _pointwise(model):
        raise ValueError(f"export_sparse replaces layers inside a model in place; the model itself is a "
                         f"{type(model).__name__}: wrap it (nn.Sequential(layer)) and export that")
    layers = {}
    for name, m in named.items():
        if (include is None or name in include) and (isinstance(m, nn.Linear) or _pointwise(m)):
            w = _matrix(m)
            if w.numel() and float((w == 0).float().mean()) >= min_sparsity:
                layers[name] = m
    inputs, reference = _capture_inputs(model, layers, args, kwargs)
    report = SparseExport([], torch.get_num_threads())
    swapped: List[Tuple[str, nn.Module]] = []
    for name, m in layers.items():
        if name not in inputs:
            continue  # not run by this input
        choice, module = _choose(name, m, inputs[name], min_speedup, repeats, warmup, rtol)
        report.layers.append(choice)
        if module is not None:
            _set(model, name, module)
            swapped.append((name, m))
    if swapped:
        output = model(*args, **kwargs)
        errors = [relative_error(a, b) for a, b in zip(tree_leaves(output), tree_leaves(reference))
                  if isinstance(a, Tensor)]
        if max(errors, default=0.0) > rtol:
            for name, m in swapped:
                _set(model, name, m)
            raise ValueError(f"the sparse export changed the model's output by {max(errors):.2e} (relative) > rtol "
                             f"{rtol:g}; every layer was put back")
        if min_model_speedup is not None:
            report.model_ms = _model_times(model, swapped, args, kwargs, repeats, warmup)
            speedup = report.model_ms["dense"] / report.model_ms["sparse"]
            if speedup < min_model_speedup:
                for name, m in swapped:
                    _set(model, name, m)
                why = (f"; put back: end to end the model ran {speedup:.2f}x of dense (sparse "
                       f"{report.model_ms['sparse']:.3f} ms, dense {report.model_ms['dense']:.3f} ms; "
                       f"< {min_model_speedup:g}x)")
                for c in report.replaced:
                    c.chosen, c.reason = "dense", c.reason + why
    return report


def _model_times(model: nn.Module, swapped: List[Tuple[str, nn.Module]], args: tuple, kwargs: dict,
                 repeats: int, warmup: int) -> Dict[str, float]:
    """Medians of the whole model with its dense layers (``swapped``) and with the sparse ones
    now in place, interleaved; the sparse layers are in place afterwards."""
    sparse = [(name, model.get_submodule(name)) for name, _ in swapped]

    def run(layers: List[Tuple[str, nn.Module]]) -> Callable[[], object]:
        def call() -> object:
            for name, m in layers:
                _set(model, name, m)
            return model(*args, **kwargs)
        return call

    try:
        return _time({"dense": run(swapped), "sparse": run(sparse)}, repeats, warmup)
    finally:
        for name, m in sparse:
            _set(model, name, m)


def _choose(name: str, m: nn.Module, x: Tensor, min_speedup: float, repeats: int, warmup: int,
            rtol: float) -> Tuple[LayerChoice, Optional[nn.Module]]:
    w = _matrix(m)
    sparsity = float((w == 0).float().mean())
    dense_y = m(x)
    modules: Dict[str, nn.Module] = {}
    rejected = []
    for fmt, build in _formats(w).items():
        try:
            linear = SparseLinear(build(), m.bias, fmt)
        except (RuntimeError, ValueError) as err:  # e.g. a 2:4 shape the kernel does not take
            rejected.append(f"{fmt} unavailable ({str(err).splitlines()[0][:60]})")
            continue
        module = SparseConv1x1(linear) if isinstance(m, nn.Conv2d) else linear
        err = relative_error(module(x), dense_y)
        if err > rtol:
            rejected.append(f"{fmt} differs by {err:.1e}")
            continue
        modules[fmt] = module
    times = _time({"dense": lambda: m(x), **{f: (lambda mod=mod: mod(x)) for f, mod in modules.items()}},
                  repeats, warmup)
    dense_ms = times.pop("dense")
    shape = (int(w.shape[0]), int(w.shape[1]))
    if not times:
        return LayerChoice(name, shape, sparsity, "dense", dense_ms, {}, "; ".join(rejected) or "no format"), None
    best = min(times, key=times.get)
    speedup = dense_ms / times[best]
    measured = ", ".join(f"{f} {t:.3f} ms" for f, t in times.items())
    if speedup >= min_speedup:
        reason = f"{best} {speedup:.2f}x faster than dense {dense_ms:.3f} ms ({measured})"
        return LayerChoice(name, shape, sparsity, best, dense_ms, times, reason), modules[best]
    reason = f"best {best} only {speedup:.2f}x of dense {dense_ms:.3f} ms (< {min_speedup:g}x; {measured})"
    return LayerChoice(name, shape, sparsity, "dense", dense_ms, times, reason), None
