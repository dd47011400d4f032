"""Sparse-IFT "Sparse Wide": wider, sparser layers at the FLOPs of the dense network.

Thangarasa et al., 2023, "Sparse-IFT: Sparse Iso-FLOP Transformations for Maximizing
Training Efficiency" (arXiv:2303.11525) replace a dense layer by a sparse one that costs
the same FLOPs but has more capacity. The *Sparse Wide* transformation widens every hidden
width of a network by

    k = 1 / sqrt(1 - s)

for a sparsity ``s`` in [0, 1). A Linear or Conv layer whose input *and* output widths are
both hidden gets ``k**2`` times the dense weights; trained at sparsity ``s`` it keeps
``k**2 · (1 - s) = 1`` times the dense number of nonzero weights, hence the same FLOPs
(every nonzero weight costs the same multiply-accumulates per output position).

The network input (image channels, input features) and the classifier output (classes)
keep their widths, so the first and the last layer are widened on one side only. Those
layers keep the dense number of nonzeros with their own sparsity::

    s_layer = 1 - 1 / k       one side widened       (= 0.5  at s = 0.75, k = 2)
    s_layer = 1 - 1 / k**2    both sides widened     (= s)

In general the per-layer sparsity is the one that makes the wide layer's nonzeros equal to
the dense layer's weights, ``1 - numel(dense) / numel(wide)`` (:func:`iso_flop_sparsity`);
computing it from the actual shapes keeps FLOPs equal even when widths are rounded.

Usage with the core controller::

    model, layer_sparsity = sparse_wide_mlp([784, 256, 256, 10], sparsity=0.75)
    targets = discover_targets(model, skip_head=False)
    ctrl = SparsityController(targets, schedule=Constant(sparsity=0.75),
                              allocator=IsoFlopAllocator(layer_sparsity), model=model)

:class:`IsoFlopAllocator` (registered as ``"iso_flop"``) keeps, per target, the fraction
of units its explicit sparsity allows, whatever the schedule's global sparsity is.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from sparsity_core.allocators.base import Allocator
from sparsity_core.registry import ALLOCATORS
from sparsity_core.targets import Target
from sparsity_core.validation import check_int, check_sparsity

__all__ = [
    "IsoFlopAllocator",
    "SparseWide",
    "dense_nonzero_budget",
    "iso_flop_sparsity",
    "nonzero_weights",
    "sparse_wide",
    "sparse_wide_mlp",
    "sparse_wide_widths",
    "widen_factor",
    "widen_width",
]

_LAYERS = (nn.Linear, nn.modules.conv._ConvNd)


# -- validation -------------------------------------------------------------------------
def _check_shape(shape: Sequence[int], what: str) -> Tuple[int, ...]:
    shape = tuple(shape)
    if not shape:
        raise ValueError(f"{what} must be a non-empty shape, got {shape!r}")
    for d in shape:
        check_int(d, f"every dimension of {what}", 1)
    return shape


# -- widths -----------------------------------------------------------------------------
def widen_factor(sparsity: float) -> float:
    """Sparse Wide width multiplier ``k = 1 / sqrt(1 - s)`` (Thangarasa et al., 2023).

    A layer widened on both sides by ``k`` has ``k**2 = 1 / (1 - s)`` times the weights, so
    at sparsity ``s`` it keeps the dense number of nonzeros.
    """
    return 1.0 / math.sqrt(1.0 - check_sparsity(sparsity))


def widen_width(width: int, sparsity: float, multiple_of: int = 1) -> int:
    """Hidden width after the Sparse Wide transformation: ``round(width · k)``.

    ``k = 1 / sqrt(1 - sparsity)``; with ``multiple_of > 1`` the result is rounded to the
    nearest multiple of it (at least ``multiple_of``). Halves round up.

    >>> widen_width(16, 0.75)
    32
    """
    check_int(width, "width", 1)
    check_int(multiple_of, "multiple_of", 1)
    wide = width * widen_factor(sparsity)
    wide = int(math.floor(wide / multiple_of + 0.5 + 1e-9)) * multiple_of
    return max(multiple_of, wide)


def sparse_wide_widths(widths: Sequence[int], sparsity: float, multiple_of: int = 1) -> List[int]:
    """Widen the hidden widths of a chain of layers; the first and last stay unchanged.

    ``widths`` lists the network input width (input features or image channels), every
    hidden width (features or channels of each block) and the output width (classes).
    Hidden widths are widened by ``k = 1 / sqrt(1 - sparsity)`` (:func:`widen_width`).

    >>> sparse_wide_widths([3, 16, 32, 10], 0.75)
    [3, 32, 64, 10]
    """
    widths = list(widths)
    if len(widths) < 2:
        raise ValueError(f"widths needs at least an input and an output width, got {widths!r}")
    for w in widths:
        check_int(w, "every width", 1)
    check_sparsity(sparsity)
    hidden = [widen_width(w, sparsity, multiple_of) for w in widths[1:-1]]
    return [widths[0], *hidden, widths[-1]]


def iso_flop_sparsity(dense_shape: Sequence[int], wide_shape: Sequence[int]) -> float:
    """Sparsity at which a wide layer keeps as many nonzeros as the dense layer has weights.

    ``s = 1 - numel(dense_shape) / numel(wide_shape)``. For a layer widened by ``k`` on one
    side this is ``1 - 1/k``, on both sides ``1 - 1/k**2``; 0 for an unchanged layer. Since
    FLOPs of a Linear/Conv layer are proportional to its nonzero weights (at equal output
    resolution), the sparse wide layer costs the dense layer's FLOPs (Thangarasa et al., 2023).

    Raises:
        ValueError: empty or non-positive shapes, or a wide layer smaller than the dense one.
    """
    dense = _check_shape(dense_shape, "dense_shape")
    wide = _check_shape(wide_shape, "wide_shape")
    n_dense, n_wide = math.prod(dense), math.prod(wide)
    if n_wide < n_dense:
        raise ValueError(
            f"wide shape {wide} has fewer weights ({n_wide}) than dense shape {dense} ({n_dense}); "
            "Sparse Wide only grows layers"
        )
    return 1.0 - n_dense / n_wide


# -- models -----------------------------------------------------------------------------
def sparse_wide_mlp(
    dims: Sequence[int],
    sparsity: float,
    activation: Optional[Callable[[], nn.Module]] = nn.ReLU,
    bias: bool = True,
    multiple_of: int = 1,
) -> Tuple[nn.Sequential, Dict[str, float]]:
    """A Sparse Wide MLP for the dense layer widths ``dims`` and its per-layer sparsities.

    ``dims = [in, h1, ..., out]`` describes the dense MLP ``Linear(in, h1) - act - ... -
    Linear(h_last, out)``; the hidden widths are widened (:func:`sparse_wide_widths`) and
    each Linear gets :func:`iso_flop_sparsity` of its dense and wide weight shapes, so its
    nonzeros equal the dense layer's weights. ``activation`` is a zero-argument factory (a
    module class) placed between Linear layers, or ``None`` for none.

    Returns:
        ``(model, layer_sparsity)``: an ``nn.Sequential`` and ``{module_name: sparsity}``
        for its Linear layers (the names ``"0"``, ``"2"``, ... of the Sequential), ready for
        :class:`IsoFlopAllocator`.

    >>> model, s = sparse_wide_mlp([8, 16, 16, 4], 0.75)
    >>> s
    {'0': 0.5, '2': 0.75, '4': 0.5}
    """
    dims = list(dims)
    if not dims:
        raise ValueError("dims must not be empty")
    wide = sparse_wide_widths(dims, sparsity, multiple_of)
    layers: List[nn.Module] = []
    layer_sparsity: Dict[str, float] = {}
    for i in range(len(dims) - 1):
        if i > 0 and activation is not None:
            layers.append(activation())
        layer_sparsity[str(len(layers))] = iso_flop_sparsity((dims[i + 1], dims[i]), (wide[i + 1], wide[i]))
        layers.append(nn.Linear(wide[i], wide[i + 1], bias=bias))
    return nn.Sequential(*layers), layer_sparsity


def _weighted_layers(model: nn.Module) -> Dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if isinstance(m, _LAYERS) and m.weight is not None}


def sparse_wide(
    model_fn: Callable[[float], nn.Module],
    sparsity: float,
) -> Tuple[nn.Module, Dict[str, float]]:
    """Sparse Wide version of any model built by ``model_fn(width_multiplier)``.

    ``model_fn(1.0)`` must build the dense model and ``model_fn(k)`` the same architecture
    with every hidden width multiplied by ``k`` (input channels and classes unchanged), as
    width-multiplier arguments of common CNNs do; ``k = 1 / sqrt(1 - sparsity)``. Each
    Linear/Conv layer of the wide model gets :func:`iso_flop_sparsity` of its weight shape
    against the dense layer of the same name, which handles one- and two-sided widening,
    grouped/depthwise convolutions and any rounding of widths done by ``model_fn``.

    Returns:
        ``(wide_model, {module_name: sparsity})`` for every Linear/Conv layer.

    Raises:
        ValueError: bad sparsity, or the two models' Linear/Conv layers differ by name.
    """
    k = widen_factor(sparsity)
    dense_layers = _weighted_layers(model_fn(1.0))
    wide_model = model_fn(k)
    wide_layers = _weighted_layers(wide_model)
    if list(dense_layers) != list(wide_layers):
        missing = sorted(set(dense_layers) ^ set(wide_layers))
        raise ValueError(
            "model_fn(1.0) and model_fn(k) must have the same Linear/Conv layers; "
            f"they differ in {missing[:5] or 'order'}"
        )
    layer_sparsity = {
        name: iso_flop_sparsity(tuple(dense_layers[name].weight.shape), tuple(m.weight.shape))
        for name, m in wide_layers.items()
    }
    return wide_model, layer_sparsity


@dataclass(frozen=True)
class SparseWide:
    """The Sparse Wide transformation at one sparsity (Thangarasa et al., 2023).

    ``SparseWide(0.75).factor == 2.0``; :meth:`width`, :meth:`widths`, :meth:`mlp` and
    :meth:`model` apply :func:`widen_width`, :func:`sparse_wide_widths`,
    :func:`sparse_wide_mlp` and :func:`sparse_wide` with this sparsity.
    """

    sparsity: float
    multiple_of: int = 1

    def __post_init__(self) -> None:
        check_sparsity(self.sparsity)
        check_int(self.multiple_of, "multiple_of", 1)

    @property
    def factor(self) -> float:
        return widen_factor(self.sparsity)

    def width(self, width: int) -> int:
        return widen_width(width, self.sparsity, self.multiple_of)

    def widths(self, widths: Sequence[int]) -> List[int]:
        return sparse_wide_widths(widths, self.sparsity, self.multiple_of)

    def mlp(self, dims: Sequence[int], activation: Optional[Callable[[], nn.Module]] = nn.ReLU,
            bias: bool = True) -> Tuple[nn.Sequential, Dict[str, float]]:
        return sparse_wide_mlp(dims, self.sparsity, activation, bias, self.multiple_of)

    def model(self, model_fn: Callable[[float], nn.Module]) -> Tuple[nn.Module, Dict[str, float]]:
        return sparse_wide(model_fn, self.sparsity)


# -- counting ---------------------------------------------------------------------------
def dense_nonzero_budget(model: nn.Module) -> int:
    """Number of weights of the Linear/Conv layers of ``model`` (biases excluded).

    For the dense model this is the nonzero budget its Sparse Wide version must meet.
    """
    return sum(m.weight.numel() for m in _weighted_layers(model).values())


@torch.no_grad()
def nonzero_weights(model: nn.Module) -> int:
    """Number of nonzero weights of the Linear/Conv layers of ``model`` (biases excluded)."""
    return sum(int(torch.count_nonzero(m.weight)) for m in _weighted_layers(model).values())


# -- allocator --------------------------------------------------------------------------
@ALLOCATORS.register("iso_flop")
class IsoFlopAllocator(Allocator):
    """Keeps an explicit fraction of every target: ``keep_t = round((1 - s_t) · n_t)``.

    ``sparsities`` maps a target name (``"0.weight"``) or its module name (``"0"``) to the
    target's sparsity ``s_t`` in [0, 1), e.g. the per-layer sparsities of
    :func:`sparse_wide_mlp` / :func:`sparse_wide` (Sparse-IFT, Thangarasa et al., 2023); a
    target name takes precedence over its module name. The schedule's global budget is
    ignored: the per-layer sparsities already fix the FLOPs. Floors (``min_keep_fraction``,
    ``min_keep_units``), ``round_to`` and layouts that fix the kept count (N:M) apply as in
    every allocator. Halves round up.

    Raises:
        ValueError: a target has no entry (the message names it) or an entry is not in [0, 1).
    """

    def __init__(self, sparsities: Optional[Mapping[str, float]] = None, min_keep_fraction: float = 0.0,
                 min_keep_units: int = 1, round_to: int = 1) -> None:
        super().__init__(min_keep_fraction=min_keep_fraction, min_keep_units=min_keep_units, round_to=round_to)
        self.sparsities: Dict[str, float] = {
            str(name): check_sparsity(s, f"sparsity of {name!r}") for name, s in dict(sparsities or {}).items()
        }

    def sparsity_of(self, target: Target) -> float:
        """The sparsity given for ``target`` (by target name, else by module name)."""
        for key in (target.name, target.module_name):
            if key and key in self.sparsities:
                return self.sparsities[key]
        raise ValueError(
            f"iso_flop allocator has no sparsity for target {target.name!r} (module {target.module_name!r}); "
            f"known: {sorted(self.sparsities)[:10]}"
        )

    follows_budget = False  # the per-layer sparsities already fix the FLOPs

    def check_targets(self, targets: Sequence[Target]) -> None:
        for t in targets:  # every target needs an entry, fixed-layout ones included
            self.sparsity_of(t)

    def distribute(self, targets: Sequence[Target], scores: Mapping[str, torch.Tensor], keep_cost: float,
                   measure: str, floors: Mapping[str, int]) -> Dict[str, int]:
        out = {}
        for t in targets:
            kept = int(math.floor((1.0 - self.sparsity_of(t)) * t.num_units + 0.5 + 1e-9))
            out[t.name] = max(floors.get(t.name, 0), min(kept, t.num_units))
        return out

    def __repr__(self) -> str:
        return (
            f"IsoFlopAllocator(targets={len(self.sparsities)}, min_keep_fraction={self.min_keep_fraction}, "
            f"min_keep_units={self.min_keep_units}, round_to={self.round_to})"
        )
