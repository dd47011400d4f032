"""Attention heads as core targets, one unit per head, for DSEE's structured pruning of the
merged weights (heads ranked by the magnitude of every weight they own).

A head ``h`` of width ``d`` owns rows ``h·d … (h+1)·d − 1`` of the query, key and value
projections (weights and biases; in a fused ``qkv`` the same rows of each third) and the
same input columns of the output projection. Zeroing them removes the head's contribution
exactly: its values are zero, so its slice of the attention output is zero, and the output
projection reads nothing from it. Recognised: ``transformers`` BERT-style attention
(``attention.self.{query,key,value}`` with ``num_attention_heads``, ``attention.output.dense``)
and timm's ``Attention`` (``qkv``, ``proj``, ``num_heads``).
"""
from __future__ import annotations

from typing import Dict, List, Mapping, Tuple

import torch
from torch import nn

from sparsity_core.targets import SliceTarget, TensorSlice


def _attention_parts(model: nn.Module) -> List[Tuple[str, int, List[Tuple[str, nn.Linear, int]], Tuple[str, nn.Linear]]]:
    """``(name, heads, [(projection name, layer, blocks of heads·d rows)], (output name, layer))``."""
    found = []
    for name, m in model.named_modules():
        prefix = f"{name}." if name else ""
        inner, out = getattr(m, "self", None), getattr(getattr(m, "output", None), "dense", None)
        if isinstance(inner, nn.Module) and isinstance(out, nn.Linear) and hasattr(inner, "num_attention_heads") \
                and all(isinstance(getattr(inner, p, None), nn.Linear) for p in ("query", "key", "value")):
            projections = [(f"{prefix}self.{p}", getattr(inner, p), 1) for p in ("query", "key", "value")]
            found.append((name, int(inner.num_attention_heads), projections, (f"{prefix}output.dense", out)))
        elif isinstance(getattr(m, "qkv", None), nn.Linear) and isinstance(getattr(m, "proj", None), nn.Linear) \
                and isinstance(getattr(m, "num_heads", None), int):
            found.append((name, m.num_heads, [(f"{prefix}qkv", m.qkv, 3)], (f"{prefix}proj", m.proj)))
    return found


def head_targets(model: nn.Module) -> List[SliceTarget]:
    """A :class:`~sparsity_core.targets.SliceTarget` per attention module of ``model``
    (``<module>.heads``); ``ValueError`` when the model has none."""
    targets = []
    for name, heads, projections, (out_name, out) in _attention_parts(model):
        width = out.in_features
        if width % heads:
            raise ValueError(f"{name}: {width} attention channels do not split into {heads} heads")
        d = width // heads
        unit = torch.arange(heads).repeat_interleave(d)
        slices, tensors = [], {}
        for proj_name, layer, blocks in projections:
            rows = torch.cat([torch.arange(width) + b * width for b in range(blocks)])
            for kind in ("weight", "bias"):
                p = getattr(layer, kind)
                if p is not None:
                    tensors[f"{proj_name}.{kind}"] = p
                    slices.append(TensorSlice(f"{proj_name}.{kind}", 0, rows, unit.repeat(blocks)))
        tensors[f"{out_name}.weight"] = out.weight
        slices.append(TensorSlice(f"{out_name}.weight", 1, torch.arange(width), unit))
        per_head = sum(int(t.numel()) for t in tensors.values()) / heads
        targets.append(SliceTarget(f"{name}.heads" if name else "heads", shape=(heads,), module_name=name,
                                   slices=tuple(slices), tensors=tensors, params_per_unit=per_head))
    if not targets:
        raise ValueError("no attention module found (BERT-style attention.self.query/key/value or timm qkv/proj)")
    return targets


@torch.no_grad()
def zero_heads(target: SliceTarget, mask: torch.Tensor) -> None:
    """Zero every entry the pruned heads (``mask`` False) own."""
    for s in target.slices:
        target.tensor(s).index_fill_(s.dim, target.unit_positions(s, mask).to(target.tensor(s).device), 0.0)


def head_weight_masks(targets: List[SliceTarget], masks: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Element masks (``True`` = kept) of every tensor the heads own, keyed by tensor name."""
    out: Dict[str, torch.Tensor] = {}
    for t in targets:
        for s in t.slices:
            m = out.setdefault(s.tensor, torch.ones_like(t.tensor(s), dtype=torch.bool))
            m.index_fill_(s.dim, t.unit_positions(s, masks[t.name]).to(m.device), False)
    return out
