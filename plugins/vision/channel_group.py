"""One coupled channel group of a vision model as a core target (:class:`ChannelGroup`), and
the conversion of a Torch-Pruning group into one (:func:`group_to_target`): the tensor slices
each unit owns, root channels tied into one unit, and each unit's MACs and parameters.
:mod:`.groups` discovers the groups.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from sparsity_core.targets import SliceTarget, TensorSlice

from ._deps import torch_pruning


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


def _tied_units(dg, items, num_root: int, unit_size: int, ties: Sequence[set] = ()) -> torch.Tensor:
    """Unit of every root channel: root channels that must go together share a unit.

    Tied are: the ``unit_size`` channels of one attention head; root channels that reach the
    same position of one tensor (a channel concatenated with a copy of itself, as in
    GhostNet; ``ties``: the root sets :func:`~.tracing.record_merges` saw reach one position,
    which the merged group no longer shows); and, for grouped (not depthwise) convolutions, channel ``c`` of every
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
    for tied in ties:
        tied = [r for r in tied if 0 <= r < num_root]
        for r in tied[1:]:
            union(tied[0], r)
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


def group_to_target(dg, group, name: str, root: str, root_out: bool, unit_size: int, kind: str,
                     names: Dict[nn.Module, str], macs: Dict[str, float], params: Dict[str, torch.Tensor]
                     ) -> Tuple[Optional[ChannelGroup], str]:
    items = list(group)
    roots = [r for item in items for r in item.root_idxs]
    if not roots:
        return None, "touches no tensor"
    unit_of_root = _tied_units(dg, items, max(roots) + 1, unit_size, getattr(group, "_sparsity_ties", ()))
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
