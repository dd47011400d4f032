"""Inference export of a pruned model: BatchNorm folding, memory format, files that reload
without this library.

- :func:`fold_batchnorm`: every BatchNorm whose only input is a convolution that feeds
  nothing else is folded into it (eval statistics):
  ``W' = W·γ/√(σ²+ε)``, ``b' = (b − μ)·γ/√(σ²+ε) + β``; the BatchNorm becomes ``Identity``
  (a timm ``BatchNormAct2d`` keeps its activation). Outputs equal the unfolded model's up to
  float rounding.
- :func:`fastest_memory_format`: times the model in ``contiguous`` and ``channels_last``
  formats side by side and picks the faster one.
- :func:`freeze_for_inference`: a frozen TorchScript trace (loads with ``torch.jit.load``
  alone); :func:`optimize_for_inference` can pick it when it is faster.
- :func:`save_pruned` writes ``model.pt`` (the whole module, loadable with timm alone:
  ``torch.load(path, weights_only=False)``), ``state_dict.pt`` (tensors only, loadable with
  ``weights_only=True``) and ``pruning.json`` (kept channel indices per group, the new
  parameter shapes, the memory format).
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Dict, Optional, Tuple

import torch
from torch import nn

from ._deps import torch_pruning
from .latency import interleaved_latency, measure_latency
from .removal import RECORD_ATTR, pruning_record


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


def fastest_memory_format(model: nn.Module, example: torch.Tensor, repeats: int = 5) -> torch.memory_format:
    """``torch.channels_last`` or ``torch.contiguous_format``, whichever runs ``model`` faster
    (interleaved median of ``repeats``); the model is left in the chosen format."""
    if example.dim() != 4:
        return torch.contiguous_format
    formats = (torch.contiguous_format, torch.channels_last)
    times: Dict[torch.memory_format, float] = {}
    for fmt in formats:
        model.to(memory_format=fmt)
        times[fmt] = measure_latency(model, example.contiguous(memory_format=fmt), repeats=repeats, warmup=2)["median_ms"]
    best = min(times, key=times.get)
    model.to(memory_format=best)
    return best


def freeze_for_inference(model: nn.Module, example: torch.Tensor) -> torch.jit.ScriptModule:
    """A traced and frozen TorchScript copy (constants folded, weights pre-packed); it
    reloads with ``torch.jit.load`` alone, without timm or this library."""
    with torch.no_grad():
        return torch.jit.freeze(torch.jit.trace(copy.deepcopy(model).eval(), example))


def optimize_for_inference(model: nn.Module, example: torch.Tensor, memory_format: Optional[str] = "auto",
                           torchscript: "bool | str" = False) -> Tuple[nn.Module, Dict[str, object]]:
    """A copy of ``model`` with BatchNorms folded and the fastest memory format;
    ``torchscript=True`` freezes it with TorchScript, ``"auto"`` does so only when that
    runs faster here (timed side by side)."""
    out = copy.deepcopy(model).eval()
    folded = fold_batchnorm(out, example)
    if memory_format == "auto":
        fmt = fastest_memory_format(out, example)
    else:
        fmt = torch.channels_last if memory_format == "channels_last" else torch.contiguous_format
        out.to(memory_format=fmt)
    info: Dict[str, object] = {"batchnorms_folded": folded,
                               "memory_format": "channels_last" if fmt == torch.channels_last else "contiguous",
                               "torchscript": False}
    if torchscript:
        x = example.contiguous(memory_format=fmt)
        frozen = freeze_for_inference(out, x)
        if torchscript == "auto":
            ms = interleaved_latency({"eager": out, "frozen": frozen}, {"eager": x, "frozen": x}, repeats=5)
            if ms["frozen"] >= ms["eager"]:
                return out, info
        info["torchscript"] = True
        return frozen, info
    return out, info


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


def load_pruned(directory: "str | Path") -> nn.Module:
    """Load ``model.pt`` from :func:`save_pruned` (needs the model's own library, e.g. timm)."""
    return torch.load(Path(directory) / "model.pt", weights_only=False)
