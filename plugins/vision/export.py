"""Inference export of a pruned model: BatchNorm folding, memory format, files that reload
without this library.

- :func:`fold_batchnorm`: every BatchNorm whose only input is a convolution that feeds
  nothing else is folded into it (eval statistics):
  ``W' = W·γ/√(σ²+ε)``, ``b' = (b − μ)·γ/√(σ²+ε) + β``; the BatchNorm becomes ``Identity``
  (a timm ``BatchNormAct2d`` keeps its activation). Outputs equal the unfolded model's up to
  float rounding.
- :func:`fastest_memory_format`: times the model in ``contiguous`` and ``channels_last``
  formats in one interleaved run and picks the faster one.
- :func:`freeze_for_inference`: a frozen TorchScript trace (loads with ``torch.jit.load``
  alone); :func:`optimize_for_inference` can pick it when it is faster.
- :func:`save_pruned` writes ``model.pt`` (the whole module pickled: only for files you trust),
  ``state_dict.pt`` (tensors only, loadable with ``weights_only=True``) and ``pruning.json``
  (kept channel indices per group, the new parameter shapes, the memory format);
  :func:`~.reload.load_pruned` rebuilds the model from a fresh instance and those tensors.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Dict, Optional, Tuple

import torch
from torch import nn

from sparsity_core.validation import check_int

from ._deps import torch_pruning
from .latency import interleaved_latency
from .record import RECORD_ATTR, pruning_record


def _parent(model: nn.Module, name: str) -> Tuple[nn.Module, str]:
    parent, _, child = name.rpartition(".")
    return (model.get_submodule(parent) if parent else model), child


def _bn_replacement(bn: nn.Module) -> nn.Module:
    act, drop = getattr(bn, "act", None), getattr(bn, "drop", None)
    parts = [m for m in (drop, act) if isinstance(m, nn.Module) and not isinstance(m, nn.Identity)]
    return nn.Sequential(*parts) if parts else nn.Identity()


def fold_batchnorm(model: nn.Module, example_inputs) -> int:
    """Fold BatchNorms into the convolutions that feed them (in place); returns how many."""
    tp = torch_pruning()
    model.eval()
    with torch.enable_grad():  # the graph is traced through autograd
        dg = tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs, verbose=False)
    with torch.no_grad():
        return _fold(model, dg)


def _fold(model: nn.Module, dg) -> int:
    names = {m: n for n, m in model.named_modules()}
    folded = 0
    for module, node in list(dg.module2node.items()):
        if not isinstance(module, nn.modules.batchnorm._BatchNorm) or not module.track_running_stats:
            continue
        if len(node.inputs) != 1:
            continue
        src = node.inputs[0]
        conv = src.module
        if not isinstance(conv, nn.Conv2d) or conv.transposed or len(src.outputs) != 1:
            continue
        if conv.weight.shape[0] != module.num_features:
            continue
        scale = (module.weight if module.affine else torch.ones_like(module.running_var)) / torch.sqrt(
            module.running_var + module.eps)
        shift = module.bias if module.affine else torch.zeros_like(module.running_mean)
        bias = conv.bias if conv.bias is not None else torch.zeros_like(module.running_mean)
        conv.weight.copy_(conv.weight * scale.reshape(-1, 1, 1, 1))
        new_bias = (bias - module.running_mean) * scale + shift
        if conv.bias is None:
            conv.bias = nn.Parameter(new_bias)
        else:
            conv.bias.copy_(new_bias)
        parent, child = _parent(model, names[module])
        setattr(parent, child, _bn_replacement(module))
        folded += 1
    return folded


_FORMATS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}


def fastest_memory_format(model: nn.Module, example: torch.Tensor, repeats: int = 7) -> torch.memory_format:
    """``torch.channels_last`` or ``torch.contiguous_format``, whichever runs ``model`` faster
    (both timed in one interleaved run, median of ``repeats``); the model is left in the
    chosen format."""
    if example.dim() != 4:
        return torch.contiguous_format
    variants = {"contiguous": copy.deepcopy(model).to(memory_format=torch.contiguous_format),
                "channels_last": copy.deepcopy(model).to(memory_format=torch.channels_last)}
    ms = interleaved_latency(variants, {k: example.contiguous(memory_format=_FORMATS[k]) for k in variants},
                             repeats=repeats)
    best = _FORMATS[min(ms, key=ms.get)]
    model.to(memory_format=best)
    return best


def freeze_for_inference(model: nn.Module, example: torch.Tensor) -> torch.jit.ScriptModule:
    """A traced and frozen TorchScript copy (constants folded, weights pre-packed); it
    reloads with ``torch.jit.load`` alone, without timm or this library."""
    with torch.no_grad():
        return torch.jit.freeze(torch.jit.trace(copy.deepcopy(model).eval(), example))


def optimize_for_inference(model: nn.Module, example: torch.Tensor, memory_format: Optional[str] = "auto",
                           torchscript: "bool | str" = False, repeats: int = 7) -> Tuple[nn.Module, Dict[str, object]]:
    """A copy of ``model`` with BatchNorms folded, in the fastest memory format; with
    ``torchscript=True`` frozen with TorchScript, with ``"auto"`` frozen only when that runs
    faster here.

    Every open choice (memory format when ``"auto"`` and a 4-D input; eager or frozen when
    ``torchscript="auto"``) is made in *one* interleaved timing of all the candidates
    (median of ``repeats`` rounds after warm-up), so a drift of a busy machine hits each
    candidate alike; ``info["candidates_ms"]`` keeps what was measured."""
    if memory_format not in ("auto", "contiguous", "channels_last", None):
        raise ValueError(f"memory_format must be 'auto', 'contiguous' or 'channels_last', got {memory_format!r}")
    if torchscript not in (True, False, "auto"):
        raise ValueError(f"torchscript must be True, False or 'auto', got {torchscript!r}")
    check_int(repeats, "repeats", minimum=1)
    out = copy.deepcopy(model).eval()
    folded = fold_batchnorm(out, example)
    if memory_format == "auto":
        formats = ["contiguous", "channels_last"] if example.dim() == 4 else ["contiguous"]
    else:
        formats = [memory_format or "contiguous"]
    candidates: Dict[str, nn.Module] = {}
    inputs: Dict[str, torch.Tensor] = {}
    for fmt in formats:
        eager = (copy.deepcopy(out) if len(formats) > 1 else out).to(memory_format=_FORMATS[fmt])
        x = example.contiguous(memory_format=_FORMATS[fmt])
        if torchscript is not True:
            candidates[fmt], inputs[fmt] = eager, x
        if torchscript:
            candidates[fmt + "+torchscript"], inputs[fmt + "+torchscript"] = freeze_for_inference(eager, x), x
    ms = interleaved_latency(candidates, inputs, repeats=repeats) if len(candidates) > 1 else {}
    best = min(ms, key=ms.get) if ms else next(iter(candidates))
    info: Dict[str, object] = {"batchnorms_folded": folded, "memory_format": best.split("+")[0],
                               "torchscript": best.endswith("+torchscript"),
                               "candidates_ms": {k: round(v, 3) for k, v in ms.items()}}
    return candidates[best], info


def save_pruned(model: nn.Module, directory: "str | Path", info: Optional[Dict[str, object]] = None) -> Path:
    """Write ``model.pt``, ``state_dict.pt`` and ``pruning.json`` into ``directory``."""
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    if isinstance(model, torch.jit.ScriptModule):
        torch.jit.save(model, str(path / "model.torchscript.pt"))
        (path / "pruning.json").write_text(json.dumps({"torchscript": True, **(info or {})}, indent=1))
        return path
    clean = copy.deepcopy(model)
    record = pruning_record(clean)
    if hasattr(clean, RECORD_ATTR):
        delattr(clean, RECORD_ATTR)
    for m in clean.modules():  # no hook of ours may travel with the module
        m._forward_hooks.clear()
        m._forward_pre_hooks.clear()
    torch.save(clean, path / "model.pt")
    torch.save(clean.state_dict(), path / "state_dict.pt")
    meta = {"record": record.to_json() if record else None,
            "parameters": sum(p.numel() for p in clean.parameters()), **(info or {})}
    (path / "pruning.json").write_text(json.dumps(meta, indent=1))
    return path

