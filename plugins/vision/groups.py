"""Coupled channel groups of a vision model, as core targets.

Removing output channel ``c`` of a convolution forces removing the same channel from its
BatchNorm, from the inputs of every consumer, and (through residual additions and
concatenations) from every layer coupled to it. Torch-Pruning's ``DependencyGraph``
(Fang et al., 2023, "DepGraph: Towards Any Structural Pruning") traces those couplings; we
use it as is and turn each of its groups into a :class:`~.channel_group.ChannelGroup`: a core
:class:`~sparsity_core.targets.Target` whose units are the group's channels (or, for
attention, whole heads) and which lists every tensor slice a unit owns. A soft mask on the
group multiplies all those slices, so training sees exactly the network that physical
removal will produce.

Attention: a module with ``num_heads`` and an output ``proj`` whose projections follow one
of :data:`~.attention_layouts.ATTENTION_LAYOUTS` (fused ``qkv`` as in timm's ViT; separate ``q`` and ``kv``; or
``q``, ``k``, ``v``) has its heads as units. The head group is rooted at the input columns
of ``proj``; unit ``h`` covers columns ``h*head_dim ... (h+1)*head_dim - 1`` and the
matching rows of every projection. Only whole heads are removed, so ``head_dim`` and the
softmax scale never change (fused or not); ``num_heads`` (and ``attn_dim``) follow the
removal. The embedding dimension of a transformer (its residual stream) is not pruned
unless ``prune_embed_dim=True``: every group that reaches ``pos_embed``, ``cls_token``,
``reg_token`` or ``dist_token``, head groups included, is skipped.

Coverage. Torch-Pruning's group enumeration runs one root at a time: a root whose couplings
it cannot resolve (an error in its index mapping, a runaway traversal, see
:mod:`~.tracing`) is skipped with the reason instead of ending the enumeration. Root
channels that reach one position of a layer through different paths are tied into one
unit (Torch-Pruning's merged group keeps only one of them). Then the removal of every group
is *probed* on the model itself, put back in place after each trial (this follows the
time-limited graph build and is not timed: its cost is bounded by the number of groups).
Groups whose removal breaks the forward pass, such as attention whose forward reshapes
with its input width (timm's PVT-v2, Twins, CoaT, CaiT class attention, CrossViT
cross-attention, EVA) or convolutions split at fixed sizes, are skipped with the reason,
and the rest of the model is pruned. ``ChannelGroups.skipped`` lists every skipped group and why.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from torch import nn

from sparsity_core.discovery import as_patterns, classifier_heads

from ._deps import torch_pruning
from .attention_layouts import AttentionForm, attention_ancestor, attention_form, missing_head_slices
from .channel_group import ChannelGroup, group_to_target
from .tracing import (DEFAULT_GRAPH_TIME_LIMIT, GraphTimeLimitError, check_control_flow, check_time_limit, describe,
                      graph_time_limit as time_limit, measure_macs, record_merges, reference_output_shapes, set_stage,
                      short, time_limit_message, trace_dependencies, without_deadline)

#: Parameters that mark the residual stream of a transformer.
EMBED_PARAMS = re.compile(r"(^|\.)(pos_embed|cls_token|reg_token|dist_token)$")


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
    forms: Dict[str, "AttentionForm"] = field(default_factory=dict)  # attention module -> head layout
    output_shapes: Optional[list] = None  # shapes of the model's outputs on the example (removal checks them)
    time_limit: Optional[float] = None  # seconds for regenerating groups at removal

    def target(self, name: str) -> ChannelGroup:
        for t in self.targets:
            if t.name == name:
                return t
        raise KeyError(name)


def _all_groups(dg, ignored: Sequence[nn.Module], root_types) -> Iterable[Tuple[nn.Module, object, Optional[Exception]]]:
    """Torch-Pruning's ``get_all_groups``, one root at a time: a root whose couplings
    Torch-Pruning cannot resolve (an exception in its index mapping) yields the error instead
    of ending the enumeration, so the rest of the model is still pruned."""
    ignored_ids = {id(m) for m in list(ignored) + list(dg.IGNORED_LAYERS_IN_TRACING)}
    visited = set()
    for m in list(dg.module2node.keys()):
        if id(m) in ignored_ids or id(m) in visited or not isinstance(m, tuple(root_types)):
            continue
        pruner = dg.get_pruner_of_module(m)
        if pruner is None or pruner.get_out_channels(m) is None:
            continue
        try:
            with record_merges() as merges:
                group = dg.get_pruning_group(m, pruner.prune_out_channels, list(range(pruner.get_out_channels(m))))
            group._sparsity_ties = [r for r in merges.values() if len(r) > 1]
        except GraphTimeLimitError:
            raise
        except Exception as err:  # noqa: BLE001 - Torch-Pruning's failure on this root only
            visited.add(id(m))
            yield m, None, err
            continue
        prunable = True
        for item in group:
            if dg.is_out_channel_pruning_fn(item.dep.handler):
                visited.add(id(item.dep.target.module))
                if id(item.dep.target.module) in ignored_ids:
                    prunable = False
        if prunable:
            yield m, group, None


def _embed_members(dg, group, embed_ids: set, names: Dict[object, str]) -> List[str]:
    """Names of the embedding parameters (``pos_embed``, ``cls_token``, ...) a group reaches."""
    out = []
    for item in group:
        m = item.dep.target.module
        if isinstance(m, nn.Parameter) and id(m) in embed_ids:
            out.append(names.get(id(m), "?"))
    return sorted(set(out))


def discover_channel_groups(
    model: nn.Module,
    example_inputs,
    ignore: Sequence[str] = (),
    prune_heads: bool = True,
    prune_embed_dim: bool = False,
    graph_time_limit: Optional[float] = DEFAULT_GRAPH_TIME_LIMIT,
    check_control_flow: bool = True,
    probe: bool = True,
) -> ChannelGroups:
    """Coupled channel groups (and attention heads) of ``model`` as core targets.

    Args:
        model: a timm (or any traceable) model.
        example_inputs: a batch the model accepts (used to trace and to count MACs).
        ignore: regular expressions of module names never pruned; the classifier head is
            always ignored.
        prune_heads: attention heads are units (modules in one of the layouts of
            :data:`ATTENTION_LAYOUTS`: fused ``qkv``, ``q``/``kv``, ``q``/``k``/``v``).
        prune_embed_dim: also prune a transformer's embedding dimension (residual stream).
            When ``False``, every group that reaches an embedding parameter (``pos_embed``,
            ``cls_token``, ...), head groups included, is skipped.
        graph_time_limit: seconds for tracing the model and enumerating its groups
            (``None``: no limit); past it :class:`~.tracing.GraphTimeLimitError` is raised with
            the model unchanged (see :mod:`~.tracing` for how the limit is enforced). The
            probe that follows is not timed: its cost is bounded by the number of groups.
        check_control_flow: refuse a model whose forward differs between two inputs
            (:func:`~.tracing.check_control_flow`).
        probe: remove a quarter to three quarters of every group's units on the model
            itself (put back in place after every trial; one trial when every group works,
            see :func:`~.removal_probe.find_unremovable`) and skip, with the reason, the groups
            whose removal Torch-Pruning cannot carry out or that break the forward pass
            (attention whose forward ties its widths to ``num_heads`` or to its input
            width, fixed ``split`` sizes, ...). The rest of the model is still pruned.

    Skipped groups and why are in ``ChannelGroups.skipped``.

    Raises:
        ValueError: ``ignore`` is not a list of valid regular expressions, or no group is
            prunable.
        GroupTraceError: the model cannot be traced (names the failing operation), has
            data-dependent control flow, or ran past ``graph_time_limit``. Nothing changed.
    """
    patterns = as_patterns(ignore, "ignore")
    if graph_time_limit is not None and not (isinstance(graph_time_limit, (int, float)) and graph_time_limit > 0):
        raise ValueError(f"graph_time_limit must be a positive number of seconds or None, got {graph_time_limit!r}")
    message = time_limit_message(model, graph_time_limit or 0.0, "building the channel dependency graph")
    with time_limit(graph_time_limit, message):
        try:
            return _discover(model, example_inputs, patterns, prune_heads, prune_embed_dim, graph_time_limit,
                             check_control_flow, probe)
        finally:
            set_stage(None)


def _discover(model, example_inputs, patterns, prune_heads, prune_embed_dim, limit, control_flow, probe):
    tp = torch_pruning()
    names = {m: n for n, m in model.named_modules()}
    ignored = [m for n, m in model.named_modules() if n and any(p.search(n) for p in patterns)]
    ignored += [model.get_submodule(h) for h in classifier_heads(model)]
    forms: Dict[str, AttentionForm] = {}
    if prune_heads:
        for n, m in model.named_modules():
            form = attention_form(m)
            if form is not None:
                forms[n] = form
    projections = [getattr(model.get_submodule(a), attr) for a, f in forms.items() for attr, _ in f.projections]
    set_stage("tracing the model (Torch-Pruning's build_dependency)")
    dg = trace_dependencies(model, example_inputs, [])  # first: its errors name the failing operation
    set_stage("comparing two forward passes (data-dependent control flow)")
    if control_flow:
        output_shapes = check_control_flow(model, example_inputs)
    else:
        output_shapes = reference_output_shapes(model, example_inputs)
    check_time_limit()
    set_stage("counting MACs")
    macs = measure_macs(model, example_inputs)
    params = dict(model.named_parameters())
    params.update(dict(model.named_buffers()))
    param_names = {id(p): n for n, p in model.named_parameters()}
    embed_ids = {id(p) for n, p in model.named_parameters() if EMBED_PARAMS.search(n)}
    ignored_ids = {id(m) for m in ignored}
    projection_ids = {id(m) for m in projections}

    targets: List[ChannelGroup] = []
    skipped: List[Tuple[str, str]] = []
    root_types = [nn.modules.conv._ConvNd, nn.Linear]
    set_stage("enumerating channel groups (Torch-Pruning's get_pruning_group)")
    for root_mod, group, err in _all_groups(dg, ignored + projections, root_types):
        check_time_limit()
        name = f"{names.get(root_mod, '?')}:out"
        if err is not None:
            skipped.append((name, f"Torch-Pruning cannot resolve its couplings ({short(err)})"))
            continue
        outs = [item.dep.target.module for item in group if dg.is_out_channel_pruning_fn(item.dep.handler)]
        if any(id(m) in ignored_ids for m in outs):
            skipped.append((name, "couples an ignored module's outputs"))
            continue
        if any(id(m) in projection_ids for m in outs):
            continue  # attention channels are pruned as whole heads below
        embeds = [] if prune_embed_dim else _embed_members(dg, group, embed_ids, param_names)
        if embeds:
            skipped.append((name, f"transformer embedding dimension (reaches {', '.join(embeds)}; "
                                  "prune_embed_dim=False)"))
            continue
        target, why = group_to_target(dg, group, name, names.get(root_mod, "?"), True, 1, "channel", names, macs,
                                       params)
        if target is None:
            skipped.append((name, why))
        else:
            targets.append(target)

    attn_targets: Dict[str, str] = {}
    set_stage("enumerating attention heads")
    for attn_name, form in forms.items():
        check_time_limit()
        attn = model.get_submodule(attn_name)
        proj = getattr(attn, form.proj)
        name = f"{attn_name}:heads"
        mods = [proj] + [getattr(attn, a) for a, _ in form.projections]
        if any(id(m) in ignored_ids for m in mods):
            skipped.append((name, "ignored"))
            continue
        try:
            with record_merges() as merges:
                group = dg.get_pruning_group(proj, tp.prune_linear_in_channels, list(range(proj.in_features)))
            group._sparsity_ties = [r for r in merges.values() if len(r) > 1]
        except GraphTimeLimitError:
            raise
        except Exception as err:  # noqa: BLE001 - this attention's heads only
            skipped.append((name, f"Torch-Pruning cannot resolve the heads of {describe(attn, names)} ({short(err)})"))
            continue
        embeds = [] if prune_embed_dim else _embed_members(dg, group, embed_ids, param_names)
        if embeds:
            skipped.append((name, f"its head group reaches the transformer embedding dimension ({', '.join(embeds)}; "
                                  f"prune_embed_dim=False): heads of {describe(attn, names)} are not pruned"))
            continue
        target, why = group_to_target(dg, group, name, f"{attn_name}.{form.proj}", False, form.head_dim, "head",
                                       names, macs, params)
        if target is None:
            skipped.append((name, why))
            continue
        missing = missing_head_slices(target, attn_name, form)
        if missing:
            skipped.append((name, f"Torch-Pruning does not couple the heads of {describe(attn, names)} ({form.kind}) "
                                  f"to {', '.join(missing)}"))
            continue
        targets.append(target)
        attn_targets[attn_name] = name
    groups = ChannelGroups(model=model, graph=dg, targets=targets, skipped=skipped, attention=attn_targets,
                           module_macs=macs, example=example_inputs, forms=forms, output_shapes=output_shapes,
                           time_limit=limit)
    if probe and targets:
        from .removal_probe import find_unremovable  # it imports this module

        attention_like = {n: m for n, m in model.named_modules() if isinstance(getattr(m, "num_heads", None), int)}
        set_stage(f"probing the removal of {len(targets)} groups")
        with without_deadline():  # bounded by the number of groups (about two trials each at most)
            bad = find_unremovable(groups)
        for t in list(groups.targets):
            if t.name not in bad:
                continue
            reason = bad[t.name]
            inside = sorted({a for s in t.slices
                             if (a := attention_ancestor(s.tensor.rsplit(".", 1)[0], attention_like)) is not None})
            if inside:
                what = describe(attention_like[inside[0]], names)
                reason += (f"; it runs through attention {what}{' and others' if len(inside) > 1 else ''}, whose "
                           "forward ties its widths to num_heads or to its input width")
            groups.skipped.append((t.name, f"removing it fails: {reason}"))
            groups.targets.remove(t)
            for a, tn in list(groups.attention.items()):
                if tn == t.name:
                    del groups.attention[a]
    if not groups.targets:
        raise ValueError(f"no prunable channel group found in {type(model).__name__} "
                         f"(skipped: {_summary(groups.skipped)}); check ignore=/exclude=")
    return groups


def _summary(skipped: Sequence[Tuple[str, str]], limit: int = 4) -> str:
    if not skipped:
        return "none"
    shown = "; ".join(f"{n}: {r}" for n, r in skipped[:limit])
    return shown + (f"; and {len(skipped) - limit} more" if len(skipped) > limit else "")
