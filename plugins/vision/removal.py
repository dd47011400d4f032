"""Physical removal of masked channel groups, with the optimizer carried along.

Torch-Pruning replaces every parameter it touches by a new ``nn.Parameter``; an optimizer
built before then keeps updating dead tensors (Torch-Pruning issues #63, #120, #140). We
remove the groups with Torch-Pruning (each group regenerated just before it is pruned: groups
built in advance go stale in models with concatenations), then swap the new parameters into
the same optimizer ``param_groups`` in place (LR schedulers stay valid) and carry their
per-entry state (Adam moments, SGD momentum) for the kept entries.

Which entries were kept is read back exactly: before removal every touched parameter holds
``arange(numel)`` in float64, Torch-Pruning slices those indices along with everything else,
and the real values are then gathered with them.

The kept channel indices of every group (in the numbering of the model before removal) form a
:class:`~.record.PruningRecord`; records of successive removals compose into indices of the original
dense model.

Every failure (a mask that would empty a layer, Torch-Pruning raising on a group, attention
attributes that no longer match, the pruned model's forward failing or changing its output
shapes, the time limit on regenerating groups, an interrupt) puts the model back *in place*
(:class:`~.snapshot.ModelSnapshot`: same modules, parameters, hooks and optimizer entries)
and raises :class:`RemovalError` (a ``ValueError``) naming the group or the cause.
:func:`~.removal_probe.find_unremovable` uses the same path on trial masks to find the
groups that cannot be removed, so discovery can skip them and prune the rest.
"""
from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Sequence

import torch
from torch import nn

from sparsity_core.ops import rebind_optimizer

from ._deps import torch_pruning
from .groups import ChannelGroup, ChannelGroups
from .record import RECORD_ATTR, PruningRecord, _take_previous_record
from .snapshot import ModelSnapshot
from .tracing import GraphTimeLimitError, describe, graph_time_limit, set_stage, short, time_limit_message

class RemovalError(ValueError):
    """Removing masked units failed; the model was put back in place. ``group``: the group
    found to cause it (``None`` when the failure is not attributable to one group)."""

    def __init__(self, message: str, group: Optional[str] = None, reason: Optional[str] = None) -> None:
        super().__init__(message)
        self.group = group
        self.reason = reason or message


class _GroupFailure(Exception):
    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"{name}: {reason}")
        self.name, self.reason = name, reason


class _ForwardFailure(Exception):
    pass


def _pruning_group(groups: ChannelGroups, target: ChannelGroup, pruned: List[int]):
    """Torch-Pruning's group removing root channels ``pruned`` of ``target``."""
    tp = torch_pruning()
    dg, root = groups.graph, groups.model.get_submodule(target.root_module)
    if not target.root_out and isinstance(root, nn.Linear):
        fn = tp.prune_linear_in_channels
    else:
        pruner = dg.get_pruner_of_module(root)
        fn = pruner.prune_out_channels if target.root_out else pruner.prune_in_channels
    return dg.get_pruning_group(root, fn, pruned)


_EMPTIES = ("removing its masked units would empty a coupled layer (a self-coupled group, e.g. a channel "
            "concatenated with a copy of itself)")


def removal_problems(groups: ChannelGroups, masks: Mapping[str, torch.Tensor]) -> Dict[str, str]:
    """Every group whose mask cannot be removed as it is, with the reason (checked before
    any change: mask shape, a mask that removes every unit, a coupling Torch-Pruning resolves
    so that a layer would be emptied). Runs under the groups' time limit."""
    message = time_limit_message(groups.model, groups.time_limit or 0.0, "checking the masks for removal")
    with graph_time_limit(groups.time_limit, message):
        return _removal_problems(groups, masks)


def _removal_problems(groups: ChannelGroups, masks: Mapping[str, torch.Tensor]) -> Dict[str, str]:
    problems: Dict[str, str] = {}
    for t in groups.targets:
        if t.name not in masks:
            continue
        m = masks[t.name]
        if tuple(m.shape) != (t.num_units,):
            problems[t.name] = f"mask has shape {tuple(m.shape)}, expected ({t.num_units},)"
            continue
        if not bool(m.any()):
            problems[t.name] = "mask removes every unit of the group; keep at least one"
            continue
        pruned = t.root_channels(m, kept=False)
        if not pruned:
            continue
        try:
            ok = groups.graph.check_pruning_group(_pruning_group(groups, t, pruned))
        except GraphTimeLimitError:
            raise
        except Exception as err:  # noqa: BLE001 - Torch-Pruning's message may hold a module repr
            problems[t.name] = f"Torch-Pruning cannot regenerate it ({short(err)})"
            continue
        if not ok:
            problems[t.name] = _EMPTIES
    return problems


def check_removable(groups: ChannelGroups, masks: Mapping[str, torch.Tensor]) -> None:
    """Raise :class:`RemovalError` (a ``ValueError``, before any change) for the first group
    of :func:`removal_problems`."""
    problems = removal_problems(groups, masks)
    if not problems:
        return
    name, reason = next(iter(problems.items()))
    if reason == _EMPTIES:
        raise RemovalError(f"removing the masked units of {name!r} would empty a coupled layer (a self-coupled "
                           "group, e.g. a channel concatenated with a copy of itself); keep more units or ignore "
                           "the group's modules. Nothing was changed", name, reason)
    if reason.startswith("mask "):
        raise RemovalError(f"{reason.replace('mask ', f'mask for {name!r} ', 1)}", name, reason)
    raise RemovalError(f"group {name!r}: {reason}; nothing was changed", name, reason)


def _prune_groups(groups: ChannelGroups, masks: Mapping[str, torch.Tensor],
                  record: Optional["PruningRecord"] = None) -> None:
    """Remove the masked units of every group (each regenerated just before), then update
    the attention modules whose heads were removed. Raises :class:`_GroupFailure`."""
    for t in groups.targets:
        if t.name not in masks:
            continue
        mask = masks[t.name]
        pruned = t.root_channels(mask, kept=False)
        if record is not None:
            record.kept[t.name] = t.root_channels(mask, kept=True)
        if not pruned:
            continue
        try:  # (checked before any change by check_removable: a regenerated group in a model
            # with concatenations can count an index twice, so it is not checked again here)
            group = _pruning_group(groups, t, pruned)
        except GraphTimeLimitError:
            raise
        except Exception as err:  # noqa: BLE001 - attributed to the group
            raise _GroupFailure(t.name, f"Torch-Pruning cannot regenerate it ({short(err)})") from err
        try:
            group.prune()
        except GraphTimeLimitError:
            raise
        except Exception as err:  # noqa: BLE001 - attributed to the group
            raise _GroupFailure(t.name, f"Torch-Pruning failed removing it ({short(err)})") from err
    names = {m: n for n, m in groups.model.named_modules()}
    for attn_name, head_target in groups.attention.items():
        if head_target in masks:
            heads = int(masks[head_target].sum())
            _update_attention(groups, attn_name, head_target, heads, names)
            if record is not None:
                record.heads[attn_name] = heads


def _update_attention(groups: ChannelGroups, attn_name: str, target: str, heads: int,
                      names: Dict[nn.Module, str]) -> None:
    """Attention modules keep ``num_heads`` (and timm's ``attn_dim``) as attributes: follow
    the removal, and check every projection against the new head count."""
    attn = groups.model.get_submodule(attn_name)
    form = groups.forms.get(attn_name)
    head_dim = form.head_dim if form is not None else attn.head_dim
    width = heads * head_dim
    attn.num_heads = heads
    if isinstance(getattr(attn, "attn_dim", None), int):
        attn.attn_dim = width
    layout = form.projections if form is not None else (("qkv", 3),)
    proj = form.proj if form is not None else "proj"
    wrong = [f"{a} has {getattr(attn, a).out_features} outputs, expected {mult * width}"
             for a, mult in layout if getattr(attn, a).out_features != mult * width]
    if getattr(attn, proj).in_features != width:
        wrong.append(f"{proj} has {getattr(attn, proj).in_features} inputs, expected {width}")
    if wrong:
        raise _GroupFailure(target, f"after removal the projections of attention {describe(attn, names)} do not match "
                                    f"{heads} heads of {head_dim}: {'; '.join(wrong)}")


def _verify(groups: ChannelGroups) -> None:
    """Run the pruned model once on the traced example (eval mode, no gradients); raise
    :class:`_ForwardFailure` if the forward fails or its output shapes changed."""
    if groups.example is None:
        return
    from sparsity_core.macs import run_forward

    from .tracing import output_shapes

    model = groups.model
    was_training = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            out = run_forward(model, groups.example)
    except Exception as err:  # noqa: BLE001 - any failure means the removal is unusable
        raise _ForwardFailure(f"forward failed: {short(err, 200)}") from err
    finally:
        for m, mode in was_training.items():
            m.training = mode
    if groups.output_shapes is not None and output_shapes(out) != list(groups.output_shapes):
        raise _ForwardFailure(f"output shapes changed from {list(groups.output_shapes)} to {output_shapes(out)}")


def _removal_error(model: nn.Module, err: Exception) -> Exception:
    model_name = type(model).__name__
    advice = "ignore the modules involved (exclude=[...]) or use element sparsity (SparsityCallback)"
    if isinstance(err, _GroupFailure):
        return RemovalError(f"removing the masked units of {err.name!r} from {model_name} fails: {err.reason}. The "
                            f"model is unchanged; {advice}", err.name, err.reason)
    if isinstance(err, _ForwardFailure):
        return RemovalError(f"removing the masked channels breaks {model_name} ({err}); Torch-Pruning cannot resolve "
                            f"one of its couplings consistently. The model is unchanged; {advice}")
    if isinstance(err, GraphTimeLimitError):
        return GraphTimeLimitError(f"{err} The model is unchanged.")
    return RemovalError(f"removing the masked channels of {model_name} failed ({short(err)}). The model is "
                        f"unchanged; {advice}")


@torch.no_grad()
def remove_channels(
    groups: ChannelGroups,
    masks: Mapping[str, torch.Tensor],
    optimizers: Sequence[torch.optim.Optimizer] = (),
    check: bool = True,
) -> PruningRecord:
    """Remove the units each mask prunes from ``groups.model``, in place.

    Returns the record of kept indices; optimizers are rebound (see the module docstring).
    The model's outputs equal those of the masked model; remove the masked-LayerNorm hooks
    of :class:`~sparsity_plugins.vision.GroupMask` first. The pruned model is run once on
    the example the groups were traced with. On any failure the model (and the optimizers)
    are put back in place and :class:`RemovalError` is raised. ``check=False`` skips the
    check before any change (:func:`check_removable`) for a caller that just ran
    :func:`removal_problems` on the same masks.
    """
    model = groups.model
    known = {t.name for t in groups.targets}
    unknown = sorted(set(masks) - known)
    if unknown:
        raise RemovalError(f"masks name groups these channel groups do not have: {unknown[:5]} (groups: "
                           f"{sorted(known)[:5]}); nothing was changed")
    for name, m in masks.items():
        if not isinstance(m, torch.Tensor) or m.dtype != torch.bool:
            raise RemovalError(f"mask for {name!r} must be a bool tensor (True = kept), got "
                               f"{getattr(m, 'dtype', type(m).__name__)}; nothing was changed", name)
    if check:
        check_removable(groups, masks)
    snapshot = ModelSnapshot(model, optimizers, graph=groups.graph)
    old_params = dict(model.named_parameters())
    requires_grad = {n: p.requires_grad for n, p in old_params.items()}
    values = {n: p.data for n, p in old_params.items()}
    limit = groups.time_limit
    message = time_limit_message(model, limit or 0.0, "regenerating the channel groups for removal")
    try:
        with graph_time_limit(limit, message):
            set_stage("removing the masked units")
            for p in old_params.values():
                p.grad = None  # the step's gradients are consumed; the next backward refills them
                p.data = torch.arange(p.numel(), dtype=torch.float64, device=p.device).reshape(p.shape)
            record = PruningRecord()
            try:
                _prune_groups(groups, masks, record)
            finally:  # every parameter now holds the float64 indices of the entries it kept
                new_params = dict(model.named_parameters())
                kept_index: Dict[str, torch.Tensor] = {}
                for name, p in new_params.items():
                    if name not in values:
                        continue
                    idx = p.data.reshape(-1).long()
                    kept_index[name] = idx
                    p.data = values[name].reshape(-1)[idx.to(values[name].device)].reshape(p.shape)
                    p.requires_grad_(requires_grad[name])
            _verify(groups)
        for opt in optimizers:
            _rebind(opt, old_params, new_params, kept_index)
        record.shapes = {n: list(p.shape) for n, p in new_params.items()
                         if n in values and p.shape != values[n].shape}
        previous = _take_previous_record(model)
        if previous is not None:
            record = previous.compose(record)
        setattr(model, RECORD_ATTR, record.to_json())  # plain data: pickles without this library
        set_stage(None)
    except BaseException as err:
        snapshot.restore()
        set_stage(None)
        if not isinstance(err, Exception):
            raise  # KeyboardInterrupt and the like: the model is back, the interrupt goes on
        raise _removal_error(model, err) from err
    return record


def _rebind(opt: torch.optim.Optimizer, old: Dict[str, nn.Parameter], new: Dict[str, nn.Parameter],
            kept_index: Dict[str, torch.Tensor]) -> None:
    """Rebind every replaced parameter with :func:`sparsity_core.ops.rebind_optimizer`; its
    state keeps the entries ``kept_index`` (flat indices into the old parameter)."""
    for name, p in old.items():
        q = new.get(name)
        if q is None or q is p:
            continue
        rebind_optimizer(opt, p, q, _take_flat(kept_index[name], q.shape))


def _take_flat(index: torch.Tensor, shape: torch.Size):
    """Remap gathering the flat entries ``index`` of a state tensor into ``shape``."""
    return lambda v: v.reshape(-1)[index.to(v.device)].reshape(shape)
