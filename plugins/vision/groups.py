"""Coupled channel groups of a vision model, as core targets.

Removing output channel ``c`` of a convolution forces removing the same channel from its
BatchNorm, from the inputs of every consumer, and (through residual additions and
concatenations) from every layer coupled to it. Torch-Pruning's ``DependencyGraph``
(Fang et al., 2023, "DepGraph: Towards Any Structural Pruning") traces those couplings; we
use it as is and turn each of its groups into a :class:`ChannelGroup`: a core
:class:`~sparsity_core.targets.Target` whose units are the group's channels (or, for
attention, whole heads) and which lists every tensor slice a unit owns. A soft mask on the
group multiplies all those slices, so training sees exactly the network that physical
removal will produce.

Attention: timm ``Attention`` groups are rooted at the input columns of ``proj``; unit
``h`` covers columns ``h*head_dim ... (h+1)*head_dim - 1`` and the matching q, k and v rows
of ``qkv``. Only whole heads are removed, so ``head_dim`` and the softmax scale never
change (fused or not). The embedding dimension of a transformer (its residual stream) is
not pruned unless ``prune_embed_dim=True``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import torch
from torch import nn

from sparsity_core.discovery import classifier_heads
from sparsity_core.targets import SliceTarget, TensorSlice

from ._deps import torch_pruning
from .tracing import measure_macs, trace_dependencies

#: Parameters that mark the residual stream of a transformer.
EMBED_PARAMS = re.compile(r"(^|\.)(pos_embed|cls_token|reg_token|dist_token)$")


@dataclass(eq=False)
class ChannelGroup(SliceTarget):
    """The core's sliced target whose units are coupled channels (or heads) spread over many
    tensors, with what removal needs to know about the group's root."""

    root_module: str = ""
    root_out: bool = True
    unit_size: int = 1
    kind: str = "channel"
    norms: Tuple[Tuple[str, int], ...] = ()  # (LayerNorm-like module, its channel dim)
    root_units: Optional[torch.Tensor] = field(default=None, repr=False)  # root channel -> its unit

    def root_channels(self, mask: torch.Tensor, kept: bool) -> List[int]:
        """Root channels of the kept (or pruned) units, in the root module's numbering."""
        sel = mask.cpu()[self.root_units]
        return torch.nonzero(sel if kept else ~sel).flatten().tolist()



def _norm_channel_dim(module: nn.Module) -> int:
    """Channel dim of a LayerNorm-like module's input: 1 for ``LayerNorm2d`` (NCHW), else -1."""
    return 1 if type(module).__name__.lower().endswith("2d") else -1


@dataclass
class ChannelGroups:
    """Result of :func:`discover_channel_groups`."""

    model: nn.Module
    graph: object  # torch_pruning.DependencyGraph
    targets: List[ChannelGroup]
    skipped: List[Tuple[str, str]] = field(default_factory=list)
    attention: Dict[str, str] = field(default_factory=dict)  # attention module -> head target
    module_macs: Dict[str, float] = field(default_factory=dict)  # conv/linear MACs per sample
    example: object = None  # the inputs the model was traced with

    def target(self, name: str) -> ChannelGroup:
        for t in self.targets:
            if t.name == name:
                return t
        raise KeyError(name)


def _find_attention(model: nn.Module) -> Dict[str, nn.Module]:
    """timm-style attention modules: fused ``qkv`` and ``proj`` Linears, ``num_heads``."""
    out = {}
    for name, m in model.named_modules():
        qkv, proj = getattr(m, "qkv", None), getattr(m, "proj", None)
        if isinstance(qkv, nn.Linear) and isinstance(proj, nn.Linear) and isinstance(getattr(m, "num_heads", None), int):
            heads, hd = m.num_heads, getattr(m, "head_dim", None)
            if hd is None or qkv.out_features != 3 * heads * hd or proj.in_features != heads * hd:
                continue  # grouped-query or asymmetric attention: left to channel groups
            out[name] = m
    return out


def _slices_of_item(dg, dep, idxs, root_idxs, unit_of_root: torch.Tensor, names: Dict[nn.Module, str],
                    norms: List[Tuple[str, int]]) -> Optional[List[TensorSlice]]:
    """Tensor slices one group item touches; ``None`` if the op cannot be soft-masked."""
    tp = torch_pruning()
    T = tp.ops.OPTYPE
    node = dep.target
    kind, module = node.type, node.module
    idx = torch.as_tensor(list(idxs), dtype=torch.long)
    unit = unit_of_root[torch.as_tensor(list(root_idxs), dtype=torch.long)]
    out = dg.is_out_channel_pruning_fn(dep.handler)

    def sl(attr: str, dim: int, param: bool = True) -> Optional[TensorSlice]:
        t = getattr(module, attr, None)
        if t is None or not isinstance(t, torch.Tensor) or t.dim() == 0:
            return None
        return TensorSlice(f"{names[module]}.{attr}" if names[module] else attr, dim % t.dim(), idx, unit, param)

    found: List[Optional[TensorSlice]]
    if kind == T.CONV:
        if out:
            found = [sl("weight", 1 if module.transposed else 0), sl("bias", 0)]
        elif module.groups == 1:
            found = [sl("weight", 0 if module.transposed else 1)]
        else:  # grouped input: its producer's channels are zero already
            found = []
    elif kind == T.DEPTHWISE_CONV:
        found = [sl("weight", 0), sl("bias", 0)]
    elif kind == T.LINEAR:
        found = [sl("weight", 0), sl("bias", 0)] if out else [sl("weight", 1)]
    elif kind in (T.BN, T.IN):
        found = [sl("weight", 0), sl("bias", 0)]
        if found[0] is not None and kind == T.BN:
            found[0].tag = "norm_scale"
    elif kind == T.LN:
        found = [sl("weight", -1), sl("bias", -1)]
        norms.append((names[module], _norm_channel_dim(module)))
    elif kind == T.PRELU:
        found = [sl("weight", 0)] if module.weight.numel() > 1 else []
    elif kind == T.EMBED:
        found = [sl("weight", 1)]
    elif kind == T.PARAMETER:
        name = dg._param_to_name[module]
        found = [TensorSlice(name, node.pruning_dim % module.dim(), idx, unit, True)]
    elif kind in (T.GN, T.MHA, T.LSTM, T.CUSTOMIZED):
        return None
    else:  # element-wise, concat, split, reshape, ...: no tensor of their own
        found = []
    return [s for s in found if s is not None]


def _tied_units(dg, items, num_root: int, unit_size: int) -> torch.Tensor:
    """Unit of every root channel: root channels that must go together share a unit.

    Tied are: the ``unit_size`` channels of one attention head; root channels that reach the
    same position of one tensor (a channel concatenated with a copy of itself, as in
    GhostNet); and, for grouped (not depthwise) convolutions, channel ``c`` of every
    convolution group, because a grouped convolution can only lose the same channels in
    each of its groups. Units are numbered by their smallest root channel.
    """
    T = torch_pruning().ops.OPTYPE
    parent = list(range(num_root))

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    def union(a: int, b: int) -> None:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)

    for r in range(num_root):
        union(r, r - r % unit_size)
    first: Dict[Tuple[int, bool, int], int] = {}  # (module, output side, position) -> a root reaching it
    for item in items:
        module, period = item.dep.target.module, 0
        out = dg.is_out_channel_pruning_fn(item.dep.handler)
        if item.dep.target.type == T.CONV and module.groups > 1:
            period = (module.out_channels if out else module.in_channels) // module.groups
        for i, r in zip(item.idxs, item.root_idxs):
            key = (id(module), out, i % period if period else i)
            if key in first:
                union(r, first[key])
            else:
                first[key] = r
    roots = [find(r) for r in range(num_root)]
    order = {root: k for k, root in enumerate(sorted(set(roots)))}
    return torch.tensor([order[r] for r in roots], dtype=torch.long)


def _group_to_target(dg, group, name: str, root: str, root_out: bool, unit_size: int, kind: str,
                     names: Dict[nn.Module, str], macs: Dict[str, float], params: Dict[str, torch.Tensor]
                     ) -> Tuple[Optional[ChannelGroup], str]:
    items = list(group)
    roots = [r for item in items for r in item.root_idxs]
    if not roots:
        return None, "touches no tensor"
    unit_of_root = _tied_units(dg, items, max(roots) + 1, unit_size)
    slices: List[TensorSlice] = []
    norms: List[Tuple[str, int]] = []
    for item in items:
        dep = item.dep
        got = _slices_of_item(dg, dep, item.idxs, item.root_idxs, unit_of_root, names, norms)
        if got is None:
            mod = names.get(dep.target.module, dep.target.name) if not isinstance(dep.target.module, nn.Parameter) else dep.target.name
            return None, f"{type(dep.target.module).__name__} {mod!r} cannot be soft-masked"
        slices.extend(got)
    if not slices:
        return None, "touches no tensor"
    for s in slices:
        t = params.get(s.tensor)
        if t is not None and s.index.numel() and int(s.index.max()) >= t.shape[s.dim]:
            return None, f"Torch-Pruning maps channels beyond {s.tensor!r} (an unsupported coupling)"
    units = int(unit_of_root.max()) + 1
    if units < 2:
        return None, "fewer than 2 units"
    p_unit, m_unit = _unit_costs(slices, units, macs, params)
    module_name = root.rsplit(".", 1)[0] if kind == "head" else root
    target = ChannelGroup(
        name=name, shape=(units,), module_name=module_name, params_per_unit=p_unit, macs_per_unit=m_unit,
        slices=tuple(slices), root_module=root, root_out=root_out, unit_size=unit_size, kind=kind,
        norms=tuple(dict.fromkeys(norms)), tensors=params, root_units=unit_of_root,
    )
    return target, ""


def _unit_costs(slices: Sequence[TensorSlice], units: int, macs: Dict[str, float],
                params: Dict[str, torch.Tensor]) -> Tuple[float, float]:
    """Parameters and MACs one unit holds, to first order (each slice alone)."""
    p = m = 0.0
    for s in slices:
        t = params.get(s.tensor)
        if t is None:
            continue
        share = s.index.numel() / units / t.shape[s.dim]  # fraction of the tensor one unit owns
        p += share * t.numel()
        if s.tensor.endswith(".weight"):
            m += share * macs.get(s.tensor[: -len(".weight")], 0.0)
    return p, m


def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(re.search(p, name) for p in patterns)


def discover_channel_groups(
    model: nn.Module,
    example_inputs,
    ignore: Sequence[str] = (),
    prune_heads: bool = True,
    prune_embed_dim: bool = False,
) -> ChannelGroups:
    """Coupled channel groups (and attention heads) of ``model`` as core targets.

    Args:
        model: a timm (or any traceable) model.
        example_inputs: a batch the model accepts (used to trace and to count MACs).
        ignore: regular expressions of module names never pruned; the classifier head is
            always ignored.
        prune_heads: attention heads of timm ``Attention`` modules are units.
        prune_embed_dim: also prune a transformer's embedding dimension (residual stream).

    Raises:
        GroupTraceError: the model cannot be traced (names the module; nothing changed).
    """
    tp = torch_pruning()
    names = {m: n for n, m in model.named_modules()}
    ignored = [m for n, m in model.named_modules() if n and _matches(n, ignore)]
    heads = classifier_heads(model)
    ignored += [model.get_submodule(h) for h in heads]
    attention = _find_attention(model) if prune_heads else {}
    ignored_roots = ignored + [a.qkv for a in attention.values()]
    dg = trace_dependencies(model, example_inputs, [])
    macs = measure_macs(model, example_inputs)
    params = dict(model.named_parameters())
    params.update(dict(model.named_buffers()))
    embed_params = {p for n, p in model.named_parameters() if EMBED_PARAMS.search(n)}

    targets: List[ChannelGroup] = []
    skipped: List[Tuple[str, str]] = []
    ignored_ids = {id(m) for m in ignored}
    for group in dg.get_all_groups(ignored_layers=ignored_roots, root_module_types=[nn.modules.conv._ConvNd, nn.Linear]):
        root_mod = group[0].dep.target.module
        root = names.get(root_mod, "?")
        name = f"{root}:out"
        members = [item.dep.target.module for item in group]
        if any(id(m) in ignored_ids and dg.is_out_channel_pruning_fn(item.dep.handler)
               for m, item in zip(members, group)):
            skipped.append((name, "couples an ignored module's outputs"))
            continue
        if not prune_embed_dim and any(isinstance(m, nn.Parameter) and any(m is e for e in embed_params) for m in members):
            skipped.append((name, "transformer embedding dimension (prune_embed_dim=False)"))
            continue
        if any(any(m is a.qkv for a in attention.values()) and dg.is_out_channel_pruning_fn(item.dep.handler)
               for m, item in zip(members, group)):
            continue  # attention channels are pruned as whole heads below
        target, why = _group_to_target(dg, group, name, root, True, 1, "channel", names, macs, params)
        if target is None:
            skipped.append((name, why))
        else:
            targets.append(target)

    attn_targets: Dict[str, str] = {}
    for attn_name, attn in attention.items():
        if id(attn.proj) in ignored_ids or id(attn.qkv) in ignored_ids:
            skipped.append((f"{attn_name}:heads", "ignored"))
            continue
        group = dg.get_pruning_group(attn.proj, tp.prune_linear_in_channels, list(range(attn.proj.in_features)))
        name = f"{attn_name}:heads"
        target, why = _group_to_target(dg, group, name, f"{attn_name}.proj", False, attn.head_dim, "head",
                                       names, macs, params)
        if target is None:
            skipped.append((name, why))
        else:
            targets.append(target)
            attn_targets[attn_name] = name
    if not targets:
        raise ValueError(f"no prunable channel group found in {type(model).__name__} "
                         f"(skipped: {skipped[:5]}); check ignore=")
    return ChannelGroups(model=model, graph=dg, targets=targets, skipped=skipped, attention=attn_targets,
                         module_macs=macs, example=example_inputs)
