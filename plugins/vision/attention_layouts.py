"""Attention layouts whose heads the vision plugin prunes as units.

A module is attention with heads when it has an int ``num_heads``, an output projection
(``proj`` or ``out_proj``, a Linear with ``heads·head_dim`` inputs) and input projections in
one of :data:`ATTENTION_LAYOUTS`: fused ``qkv`` (timm's ViT), ``q`` + ``kv`` (PVT-v2,
Twins), or separate ``q``, ``k``, ``v``. Grouped-query and asymmetric attention is left to
channel groups.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Dict, List, Optional, Tuple

from torch import nn

if TYPE_CHECKING:
    from .groups import ChannelGroup


@dataclass(frozen=True)
class AttentionForm:
    """How an attention module lays out its heads: the projections whose outputs hold
    ``multiplicity`` blocks of ``heads·head_dim`` rows (fused ``qkv``: 3; ``kv``: 2; ``q``,
    ``k``, ``v``: 1 each) and the output projection whose input columns are the heads."""

    kind: str
    projections: Tuple[Tuple[str, int], ...]
    proj: str
    head_dim: int


#: attention layouts recognised as heads (projection attribute names and row multiplicity)
ATTENTION_LAYOUTS: Tuple[Tuple[str, Tuple[Tuple[str, int], ...]], ...] = (
    ("fused qkv", (("qkv", 3),)),
    ("q/kv split", (("q", 1), ("kv", 2))),
    ("q/k/v split", (("q", 1), ("k", 1), ("v", 1))),
    ("q/k/v split", (("wq", 1), ("wk", 1), ("wv", 1))),
    ("q/k/v split", (("q_proj", 1), ("k_proj", 1), ("v_proj", 1))),
)


def attention_form(m: nn.Module) -> Optional[AttentionForm]:
    """The head layout of ``m``, or ``None``: ``num_heads`` (int), an output ``proj`` (or
    ``out_proj``) Linear with ``heads·head_dim`` inputs, and projections in one of
    :data:`ATTENTION_LAYOUTS` with matching widths. ``head_dim`` is the attribute where the
    module has one, else ``proj.in_features // num_heads``."""
    heads = getattr(m, "num_heads", None)
    if not isinstance(heads, int) or isinstance(heads, bool) or heads < 1:
        return None
    proj_name = "proj" if isinstance(getattr(m, "proj", None), nn.Linear) else \
        "out_proj" if isinstance(getattr(m, "out_proj", None), nn.Linear) else None
    if proj_name is None:
        return None
    width = getattr(m, proj_name).in_features
    hd = getattr(m, "head_dim", None)
    if not isinstance(hd, int):
        if width % heads:
            return None
        hd = width // heads
    if heads * hd != width:
        return None  # grouped-query or asymmetric attention: left to channel groups
    for kind, layout in ATTENTION_LAYOUTS:
        mods = [getattr(m, attr, None) for attr, _ in layout]
        if all(isinstance(x, nn.Linear) for x in mods) and \
                all(x.out_features == mult * width for x, (_, mult) in zip(mods, layout)):
            return AttentionForm(kind, layout, proj_name, hd)
    return None


def attention_ancestor(name: str, attention_like: Dict[str, nn.Module]) -> Optional[str]:
    """The attention-like module (one with ``num_heads``) that contains module ``name``."""
    best = None
    for a in attention_like:
        if a and (name == a or name.startswith(a + ".")) and (best is None or len(a) > len(best)):
            best = a
    return best


def missing_head_slices(target: "ChannelGroup", attn_name: str, form: AttentionForm) -> List[str]:
    """Projections of ``form`` whose output rows the head group does not cover (one slice
    of ``heads·head_dim`` rows per block of each projection)."""
    prefix = f"{attn_name}." if attn_name else ""
    missing = []
    for attr, mult in form.projections:
        rows = [s for s in target.slices if s.tensor == f"{prefix}{attr}.weight" and s.dim == 0]
        if sum(s.index.numel() for s in rows) < mult * target.num_units * form.head_dim:
            missing.append(f"{attr} outputs")
    cols = [s for s in target.slices if s.tensor == f"{prefix}{form.proj}.weight" and s.dim == 1]
    if not cols:
        missing.append(f"{form.proj} inputs")
    return missing
