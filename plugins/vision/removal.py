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
:class:`PruningRecord`; records of successive removals compose into indices of the original
dense model.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence

import torch
from torch import nn

from sparsity_core.ops import rebind_optimizer

from ._deps import torch_pruning
from .groups import ChannelGroups

RECORD_ATTR = "_sparsity_pruning_record"


@dataclass
class PruningRecord:
    """What a removal kept: per group, the kept root channel indices, and per parameter its
    new shape. ``rounds`` counts the removals composed into it."""

    kept: Dict[str, List[int]] = field(default_factory=dict)
    heads: Dict[str, int] = field(default_factory=dict)  # attention module -> heads kept
    shapes: Dict[str, List[int]] = field(default_factory=dict)
    rounds: int = 1

    def to_json(self) -> Dict[str, object]:
        return {"kept": self.kept, "heads": self.heads, "shapes": self.shapes, "rounds": self.rounds}

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> "PruningRecord":
        return cls(kept={k: list(v) for k, v in data["kept"].items()}, heads=dict(data.get("heads", {})),
                   shapes={k: list(v) for k, v in data.get("shapes", {}).items()}, rounds=int(data.get("rounds", 1)))

    def compose(self, later: "PruningRecord") -> "PruningRecord":
        """The record of this removal followed by ``later`` (indices stay in the original
        numbering where a group kept its name)."""
        kept = dict(self.kept)
        for name, idx in later.kept.items():
            kept[name] = [self.kept[name][i] for i in idx] if name in self.kept else list(idx)
        return PruningRecord(kept, {**self.heads, **later.heads}, dict(later.shapes), self.rounds + later.rounds)


def _pruning_group(groups: ChannelGroups, target, pruned: List[int]):
    """Torch-Pruning's group removing root channels ``pruned`` of ``target``."""
    tp = torch_pruning()
    dg, root = groups.graph, groups.model.get_submodule(target.root_module)
    if not target.root_out and isinstance(root, nn.Linear):
        fn = tp.prune_linear_in_channels
    else:
        pruner = dg.get_pruner_of_module(root)
        fn = pruner.prune_out_channels if target.root_out else pruner.prune_in_channels
    return dg.get_pruning_group(root, fn, pruned)


def check_removable(groups: ChannelGroups, masks: Mapping[str, torch.Tensor]) -> None:
    """Raise ``ValueError`` (before any change) if a mask would empty a group or, through a
    coupling Torch-Pruning resolves differently from the group's units, a layer."""
    for t in groups.targets:
        if t.name not in masks:
            continue
        m = masks[t.name]
        if tuple(m.shape) != (t.num_units,):
            raise ValueError(f"mask for {t.name!r} has shape {tuple(m.shape)}, expected ({t.num_units},)")
        if not bool(m.any()):
            raise ValueError(f"mask for {t.name!r} removes every unit of the group; keep at least one")
        pruned = t.root_channels(m, kept=False)
        if pruned and not groups.graph.check_pruning_group(_pruning_group(groups, t, pruned)):
            raise ValueError(f"removing the masked units of {t.name!r} would empty a coupled layer (a self-coupled "
                             "group, e.g. a channel concatenated with a copy of itself); keep more units or ignore "
                             "the group's modules")


@torch.no_grad()
def remove_channels(
    groups: ChannelGroups,
    masks: Mapping[str, torch.Tensor],
    optimizers: Sequence[torch.optim.Optimizer] = (),
) -> PruningRecord:
    """Remove the units each mask prunes from ``groups.model``, in place.

    Returns the record of kept indices; optimizers are rebound (see the module docstring).
    The model's outputs equal those of the masked model; remove the masked-LayerNorm hooks
    of :class:`~sparsity_plugins.vision.GroupMask` first. The pruned model is run once on the example the groups were traced
    with; if that fails the model is restored and ``ValueError`` raised.
    """
    model = groups.model
    check_removable(groups, masks)
    old_params = dict(model.named_parameters())
    requires_grad = {n: p.requires_grad for n, p in old_params.items()}
    values = {n: p.data for n, p in old_params.items()}
    backup = copy.deepcopy(model) if groups.example is not None else None
    for p in old_params.values():
        p.grad = None  # the step's gradients are consumed; the next backward refills them
        p.data = torch.arange(p.numel(), dtype=torch.float64, device=p.device).reshape(p.shape)
    record = PruningRecord()
    try:
        for t in groups.targets:
            if t.name not in masks:
                continue
            mask = masks[t.name]
            pruned = t.root_channels(mask, kept=False)
            record.kept[t.name] = t.root_channels(mask, kept=True)
            if not pruned:
                continue
            _pruning_group(groups, t, pruned).prune()
    finally:  # every parameter now holds the float64 indices of the entries it kept
        new_params = dict(model.named_parameters())
        kept_index: Dict[str, torch.Tensor] = {}
        for name, p in new_params.items():
            idx = p.data.reshape(-1).long()
            kept_index[name] = idx
            p.data = values[name].reshape(-1)[idx.to(values[name].device)].reshape(p.shape)
            p.requires_grad_(requires_grad[name])
    for attn_name, head_target in groups.attention.items():
        if head_target in masks:
            _update_attention(model.get_submodule(attn_name), int(masks[head_target].sum()))
            record.heads[attn_name] = int(masks[head_target].sum())
    if backup is not None:
        _verify_or_restore(model, groups.example, backup, old_params, values)
    for opt in optimizers:
        _rebind(opt, old_params, new_params, kept_index)
    record.shapes = {n: list(p.shape) for n, p in new_params.items() if p.shape != values[n].shape}
    previous = pruning_record(model)
    if previous is not None:
        record = previous.compose(record)
    setattr(model, RECORD_ATTR, record.to_json())  # plain data: pickles without this library
    return record


def _verify_or_restore(model: nn.Module, example, backup: nn.Module, old_params: Dict[str, nn.Parameter],
                       values: Dict[str, torch.Tensor]) -> None:
    """Run the pruned model once; if it fails (a coupling Torch-Pruning resolved
    inconsistently), put the model back exactly as it was (same parameter objects, so
    optimizers and hooks stay valid) and raise ``ValueError``."""
    was_training = model.training
    model.eval()
    try:
        model(*example) if isinstance(example, (tuple, list)) else model(example)
        model.train(was_training)
        return
    except Exception as err:  # noqa: BLE001 - any failure means the removal is unusable
        failure = err
    model.__dict__.update(backup.__dict__)
    for name, p in old_params.items():
        p.data = values[name]
        parent, _, leaf = name.rpartition(".")
        (model.get_submodule(parent) if parent else model)._parameters[leaf] = p
    model.train(was_training)
    raise ValueError(
        f"removing the masked channels breaks {type(model).__name__} (forward failed: {type(failure).__name__}: "
        f"{str(failure)[:200]}); Torch-Pruning cannot resolve one of its couplings consistently. The model is "
        "unchanged; ignore the modules involved (ignore=[...]) or use element sparsity"
    ) from failure


def _update_attention(attn: nn.Module, heads: int) -> None:
    """timm ``Attention`` keeps ``num_heads``/``attn_dim`` as attributes: follow the removal."""
    attn.num_heads = heads
    if hasattr(attn, "attn_dim"):
        attn.attn_dim = heads * attn.head_dim
    if attn.qkv.out_features != 3 * heads * attn.head_dim:
        raise RuntimeError(f"attention {attn}: qkv has {attn.qkv.out_features} outputs after removal, "
                           f"expected {3 * heads * attn.head_dim}")


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


def pruning_record(model: nn.Module) -> Optional[PruningRecord]:
    """The record left on ``model`` by :func:`remove_channels` (``None`` if never pruned)."""
    rec = getattr(model, RECORD_ATTR, None)
    return PruningRecord.from_json(rec) if isinstance(rec, dict) else None
