"""CFSP: coarse-to-fine structured pruning of FFN channels from one calibration pass (Wang et
al., 2025, "CFSP: An Efficient Structured Pruning Framework for LLMs with Coarse-to-Fine
Activation Information", COLING).

Units: the intermediate channels of every block's feed-forward network (BERT's
``intermediate.dense`` rows and ``output.dense`` columns; timm's ``mlp.fc1`` rows and
``mlp.fc2`` columns), one :class:`~sparsity_core.targets.SliceTarget` per block. One forward
pass over the calibration batches records, per block ``b``, the angular distance between its
input and output hidden states, and per channel ``j`` the input statistic ``‖X_j‖₂`` of the
output projection (the core's :class:`~sparsity_core.observe.ActivationObserver`).

Coarse (across blocks): block importance ``I_b = mean over tokens of arccos(cos(h_in,
h_out))/π`` (a block that barely turns the residual stream matters less); keep ratios

    r_b = clip(α·σ(a·z_b), lo_b, 1),   z = (I − mean I)/std I,   Σ_b n_b·r_b = (1 − s)·Σ_b n_b

(:class:`CFSPBlocks`, a core allocator: the sigmoid of the centred importance as in the
paper, our standardisation in place of its fixed scale, ``α`` solved and rounded by the core's
``fit_ratios`` / ``integer_keep`` so the kept channels spend the budget exactly).

Fine (within a block): the relative importance of every weight a channel owns, times its
activation,

    S_j = Σ_{w ∈ W_in[j,:] ∪ W_out[:,j]} ( |w|/Σ_row|w| + |w|/Σ_col|w| ) · ‖X_j‖₂^c

(``c = 0.5``: the paper's exponent on the activation term), and each block keeps its
``k_b`` best channels (the core's ``top_k_mask``). The pruned channels are then removed:
the projections are sliced in place (same modules, smaller parameters), so parameters and
MACs shrink and the model runs with its own code.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence

import torch
from torch import nn

from ..allocators.budget import Budget
from ..allocators.ratios import fit_ratios, spans
from ..allocators.softmax import Softmax, standardize
from ..observe import ActivationObserver, Forward
from ..registry import ALLOCATORS
from ..selection import select_masks
from ..targets import SliceTarget, Target, TensorSlice
from ..validation import check_positive, check_sparsity
from .data import calibration_batches, checked_forward

WHAT = "cfsp_prune"


@ALLOCATORS.register("cfsp_blocks")
class CFSPBlocks(Softmax):
    """Keep ratios ``∝ σ(a·z_b)`` of the standardised block importances ``importance``
    (``{target name: I_b}``), ``a`` = ``sharpness`` (see the module)."""

    def __init__(self, importance: Mapping[str, float], sharpness: float = 1.0, **kwargs: Any) -> None:
        super().__init__(temperature=1.0, importance=importance, **kwargs)
        self.sharpness = check_positive(sharpness, "sharpness")

    def shares(self, targets: Sequence[Target], scores: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return torch.sigmoid(self.sharpness * standardize(self.layer_importance(targets, scores)))

    def ratios(self, targets, scores, keep_cost, measure, floors) -> torch.Tensor:
        p = self.shares(targets, scores)
        self.last_shares = {t.name: float(v) for t, v in zip(targets, p)}
        return fit_ratios(p, spans(targets, measure, floors), keep_cost, mode="scale")


@dataclass
class FFN:
    """One block's feed-forward network: the block, its input and output projections."""

    block_name: str
    block: nn.Module
    inp_name: str
    inp: nn.Linear
    out_name: str
    out: nn.Linear


def find_ffns(model: nn.Module) -> List[FFN]:
    """BERT-style layers (``intermediate.dense`` + ``output.dense``) and timm blocks
    (``mlp.fc1`` + ``mlp.fc2``), in module order."""
    found = []
    for name, m in model.named_modules():
        pre = f"{name}." if name else ""
        inter, output = getattr(getattr(m, "intermediate", None), "dense", None), getattr(getattr(m, "output", None), "dense", None)
        fc1, fc2 = getattr(getattr(m, "mlp", None), "fc1", None), getattr(getattr(m, "mlp", None), "fc2", None)
        for a, b, an, bn in ((inter, output, "intermediate.dense", "output.dense"), (fc1, fc2, "mlp.fc1", "mlp.fc2")):
            if isinstance(a, nn.Linear) and isinstance(b, nn.Linear) and a.out_features == b.in_features:
                found.append(FFN(name, m, pre + an, a, pre + bn, b))
    return found


def channel_target(ffn: FFN) -> SliceTarget:
    """The block's intermediate channels as units (rows of the input projection, its bias,
    columns of the output projection)."""
    n = ffn.inp.out_features
    units = torch.arange(n)
    slices = [TensorSlice(f"{ffn.inp_name}.weight", 0, units, units), TensorSlice(f"{ffn.out_name}.weight", 1, units, units)]
    tensors = {f"{ffn.inp_name}.weight": ffn.inp.weight, f"{ffn.out_name}.weight": ffn.out.weight}
    if ffn.inp.bias is not None:
        slices.insert(1, TensorSlice(f"{ffn.inp_name}.bias", 0, units, units))
        tensors[f"{ffn.inp_name}.bias"] = ffn.inp.bias
    per_unit = ffn.inp.in_features + ffn.out.out_features + (ffn.inp.bias is not None)
    return SliceTarget(f"{ffn.block_name}.ffn", shape=(n,), module_name=ffn.block_name, slices=tuple(slices),
                       tensors=tensors, params_per_unit=float(per_unit),
                       macs_per_unit=float(ffn.inp.in_features + ffn.out.out_features))


def relative_importance(w: torch.Tensor) -> torch.Tensor:
    """``|w|/Σ_row|w| + |w|/Σ_col|w|`` per entry."""
    a = w.detach().abs().double()
    return a / a.sum(1, keepdim=True).clamp_min(1e-30) + a / a.sum(0, keepdim=True).clamp_min(1e-30)


def fine_scores(ffn: FFN, act_norm: torch.Tensor, exponent: float = 0.5) -> torch.Tensor:
    """``S_j`` of every channel of ``ffn`` (see the module) from ``‖X_j‖₂`` (``act_norm``)."""
    weights = relative_importance(ffn.inp.weight).sum(1) + relative_importance(ffn.out.weight).sum(0)
    return (weights * act_norm.double().to(weights.device).clamp_min(0) ** exponent).float()


def angular_distance(h_in: torch.Tensor, h_out: torch.Tensor) -> torch.Tensor:
    """``arccos(cos(h_in, h_out))/π`` per token (last dimension: features)."""
    cos = torch.nn.functional.cosine_similarity(h_in.double(), h_out.double(), dim=-1).clamp(-1.0, 1.0)
    return torch.arccos(cos) / math.pi


def _hidden(x: Any) -> Optional[torch.Tensor]:
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, (tuple, list)) and x and isinstance(x[0], torch.Tensor):
        return x[0]
    return getattr(x, "last_hidden_state", None)


@dataclass
class CFSPResult:
    """``keep`` (kept channels per block target), ``masks`` (True = kept), ``importance``
    (``I_b``), ``removed_params``, ``seconds``."""

    keep: Dict[str, int]
    masks: Dict[str, torch.Tensor]
    importance: Dict[str, float]
    removed_params: int
    seconds: float
    report: Dict[str, float] = field(default_factory=dict)


@torch.no_grad()
def remove_channels(ffn: FFN, keep: torch.Tensor) -> None:
    """Slice the projections to the kept channels (in place: same modules, new parameters)."""
    idx = keep.nonzero().squeeze(1).to(ffn.inp.weight.device)
    ffn.inp.weight = nn.Parameter(ffn.inp.weight[idx].clone(), requires_grad=ffn.inp.weight.requires_grad)
    if ffn.inp.bias is not None:
        ffn.inp.bias = nn.Parameter(ffn.inp.bias[idx].clone(), requires_grad=ffn.inp.bias.requires_grad)
    ffn.out.weight = nn.Parameter(ffn.out.weight[:, idx].clone(), requires_grad=ffn.out.weight.requires_grad)
    ffn.inp.out_features = ffn.out.in_features = int(idx.numel())


def cfsp_prune(model: nn.Module, batches: Iterable, sparsity: float, forward: Optional[Forward] = None,
               sharpness: float = 1.0, exponent: float = 0.5, min_keep_fraction: float = 0.05,
               remove: bool = True) -> CFSPResult:
    """Prune ``sparsity`` of the FFN channels of ``model`` (see the module) after one pass over
    ``batches``; ``remove=False`` returns the masks and leaves the model as it was. Errors
    (no FFN found, bad sparsity, no or failing calibration data, NaN statistics) come before
    any change."""
    sparsity = check_sparsity(sparsity)
    check_positive(exponent, "exponent")
    ffns = find_ffns(model)
    if not ffns:
        raise ValueError(f"{WHAT}: no feed-forward network found (BERT-style intermediate.dense + output.dense, or "
                         "timm mlp.fc1 + mlp.fc2)")
    batches = calibration_batches(batches, WHAT)
    fwd = checked_forward(forward, WHAT)
    began = time.perf_counter()
    targets = [channel_target(f) for f in ffns]
    observed = [Target(f"{f.out_name}.weight", param=f.out.weight, module_name=f.out_name) for f in ffns]
    observer = ActivationObserver(model, observed)
    angles = {t.name: [0.0, 0] for t in targets}

    def hook(name: str):
        def record(module, args, kwargs, output) -> None:
            h_in, h_out = _hidden(args) if args else kwargs.get("hidden_states", kwargs.get("x")), _hidden(output)
            if h_in is not None and h_out is not None and h_in.shape == h_out.shape:
                d = angular_distance(h_in, h_out)
                angles[name][0] += float(d.sum())
                angles[name][1] += d.numel()
        return record

    handles = [f.block.register_forward_hook(hook(t.name), with_kwargs=True) for f, t in zip(ffns, targets)]
    was_training = model.training
    model.eval()
    try:
        observer.calibrate(batches, fwd)
    finally:
        for h in handles:
            h.remove()
        observer.remove()
        model.train(was_training)
    missing = [n for n, (_, count) in angles.items() if count == 0]
    if missing:
        raise ValueError(f"{WHAT}: the blocks {missing[:4]} saw no hidden states of matching shape in the calibration pass")
    importance = {n: s / count for n, (s, count) in angles.items()}
    scores = {}
    for f, t, o in zip(ffns, targets, observed):
        stats = observer[o.name]
        scores[t.name] = fine_scores(f, stats.norms(), exponent)
    bad = [n for n, s in scores.items() if not torch.isfinite(s).all()] + \
          [n for n, v in importance.items() if not math.isfinite(v)]
    if bad:
        raise ValueError(f"{WHAT}: NaN/Inf statistics for {bad[:4]}; the model is unchanged")
    allocator = CFSPBlocks(importance, sharpness=sharpness, min_keep_fraction=min_keep_fraction)
    masks = select_masks(allocator, targets, scores, Budget(sparsity=sparsity, measure="units"))
    keep = {t.name: masks.kept(t.name) for t in targets}
    removed = int(sum((t.num_units - keep[t.name]) * t.params_per_unit for t in targets))
    if remove:
        for f, t in zip(ffns, targets):
            remove_channels(f, masks[t.name])
    total = sum(t.num_units for t in targets)
    report = {"channel_sparsity": 1.0 - sum(keep.values()) / total}
    return CFSPResult(keep=keep, masks={t.name: masks[t.name].clone() for t in targets}, importance=importance,
                      removed_params=removed, seconds=time.perf_counter() - began, report=report)
