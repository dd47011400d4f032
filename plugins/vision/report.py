"""Report of a structured pruning run: parameters, MACs, measured CPU latency, accuracy.

MACs are counted with the suite's one counter (:func:`~sparsity_core.macs.count_macs`, with
attention's matrix products: :class:`~.tracing.VisionMacCounter`), dense and pruned alike, so
ratios compare like for like (Torch-Pruning's counter also adds normalisation and activation
ops: within 1% of ours on resnet18/convnext_atto and vit_tiny). Latency is the median of ``repeats`` timed forwards
after warm-up, dense and pruned interleaved, at each batch size, with the thread count
stated. :func:`format_report` prints the table; the dict itself is the JSON form.
"""
from __future__ import annotations

import json
from typing import Dict, Optional, Sequence

import torch
from torch import nn

from sparsity_core.validation import check_int

from sparsity_core.macs import count_macs

from .latency import interleaved_latency
from .tracing import VisionMacCounter


def count_macs_params(model: nn.Module, example: torch.Tensor) -> Dict[str, float]:
    """MACs per sample (the suite's counter) and parameters of ``model``."""
    macs = sum(count_macs(model, example[:1], counter=VisionMacCounter).values())
    return {"macs": float(macs), "params": float(sum(p.numel() for p in model.parameters()))}


def pruning_report(dense: nn.Module, pruned: nn.Module, example: torch.Tensor, batches: Sequence[int] = (1, 32),
                   repeats: int = 10, accuracy_before: Optional[float] = None, accuracy_after: Optional[float] = None,
                   pruned_input_format: torch.memory_format = torch.contiguous_format) -> Dict[str, object]:
    """Compare ``dense`` and ``pruned`` on inputs shaped like ``example`` (any batch)."""
    check_int(repeats, "repeats (latency needs at least 10 for a median)", 10)
    d, p = count_macs_params(dense, example), count_macs_params(pruned, example)
    out: Dict[str, object] = {
        "threads": torch.get_num_threads(),
        "params": {"dense": d["params"], "pruned": p["params"], "ratio": d["params"] / p["params"]},
        "macs": {"dense": d["macs"], "pruned": p["macs"], "ratio": d["macs"] / p["macs"]},
        "latency_ms": {},
    }
    for b in batches:
        x = example[:1].expand(b, *example.shape[1:]).contiguous()
        ms = interleaved_latency({"dense": dense, "pruned": pruned},
                                 {"dense": x, "pruned": x.contiguous(memory_format=pruned_input_format)}, repeats=repeats)
        out["latency_ms"][f"batch{b}"] = {**ms, "speedup": ms["dense"] / ms["pruned"]}
    if accuracy_before is not None or accuracy_after is not None:
        out["accuracy"] = {"before": accuracy_before, "after": accuracy_after}
    return out


def format_report(report: Dict[str, object]) -> str:
    rows = [("", "dense", "pruned", "ratio")]
    for key in ("params", "macs"):
        r = report[key]
        rows.append((key, f"{r['dense'] / 1e6:.2f}M", f"{r['pruned'] / 1e6:.2f}M", f"{r['ratio']:.2f}x"))
    for b, r in report["latency_ms"].items():
        rows.append((f"latency {b} (ms, {report['threads']} threads)", f"{r['dense']:.1f}", f"{r['pruned']:.1f}",
                     f"{r['speedup']:.2f}x"))
    if "accuracy" in report:
        a = report["accuracy"]
        rows.append(("accuracy", "-" if a["before"] is None else f"{a['before']:.2%}",
                     "-" if a["after"] is None else f"{a['after']:.2%}", ""))
    width = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, width)) for r in rows)


def report_json(report: Dict[str, object]) -> str:
    return json.dumps(report, indent=1)
