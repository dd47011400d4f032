"""Loading a pruned model without unpickling code: rebuild, then load tensors only.

:func:`~.export.save_pruned` writes ``state_dict.pt`` (tensors only) and ``pruning.json`` (the
kept root channels of every pruned group, heads kept per attention module, whether
BatchNorms were folded). :func:`load_pruned` turns a *fresh* instance of the same
architecture (e.g. ``timm.create_model(name, pretrained=False)``) into the pruned one:

1. :func:`apply_pruning_record` traces its channel groups on ``example`` and removes, per
   group of the record, every unit whose root channels were not kept (groups the record does
   not name stay whole), with the same removal the training used;
2. BatchNorms are folded when the saved model had them folded;
3. ``state_dict.pt`` is read with ``torch.load(..., weights_only=True)`` and loaded strictly.

Nothing in the directory can run code: a ``model.pt`` holding a whole pickled module is
read only with ``trust_pickle=True`` (for files you wrote yourself), and a frozen TorchScript
export is read with ``torch.jit.load``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Mapping, Optional

import torch
from torch import nn

from .record import PruningRecord
from .removal import remove_channels


def apply_pruning_record(model: nn.Module, record: "PruningRecord | Mapping[str, object]", example: torch.Tensor,
                         **discover_options) -> PruningRecord:
    """Prune ``model`` (unpruned, same architecture as the recorded one) in place to the
    record's kept channels. ``discover_options`` go to
    :func:`~.groups.discover_channel_groups` (pass those used when pruning, e.g.
    ``prune_embed_dim=True``). Raises ``ValueError`` (model unchanged) when the record names
    a group this model does not have or a channel index it does not have."""
    from .groups import discover_channel_groups

    if not isinstance(record, PruningRecord):
        record = PruningRecord.from_json(record)
    groups = discover_channel_groups(model, example, **discover_options)
    targets = {t.name: t for t in groups.targets}
    missing = sorted(set(record.kept) - set(targets))
    if missing:
        raise ValueError(f"the pruning record names groups this model does not have: {missing[:3]}; build the same "
                         "architecture and pass the discovery options used when pruning (e.g. prune_embed_dim=True)")
    masks: Dict[str, torch.Tensor] = {}
    for name, kept in record.kept.items():
        t = targets[name]
        roots = len(t.root_units)
        bad = [i for i in kept if not 0 <= int(i) < roots]
        if bad:
            raise ValueError(f"the pruning record keeps channel {bad[0]} of group {name!r}, which has {roots}; "
                             "was the record made after several rounds of pruning on a renamed group?")
        mask = torch.zeros(t.num_units, dtype=torch.bool)
        mask[t.root_units[torch.as_tensor(kept, dtype=torch.long)]] = True
        masks[name] = mask
    return remove_channels(groups, masks)


def load_pruned(directory: "str | Path", model: Optional[nn.Module] = None, example: Optional[torch.Tensor] = None,
                trust_pickle: bool = False, **discover_options) -> nn.Module:
    """The pruned model saved by :func:`~.export.save_pruned` in ``directory``.

    Safe path: ``model`` is a fresh instance of the architecture and ``example`` a batch it
    accepts; the recorded pruning is applied to it (see the module) and the saved tensors are
    loaded with ``weights_only=True``. A TorchScript export loads with ``torch.jit.load``
    (no ``model`` needed). ``trust_pickle=True`` without ``model`` unpickles ``model.pt``
    instead, which can run arbitrary code: only for files you wrote yourself."""
    path = Path(directory)
    meta_path = path / "pruning.json"
    if not meta_path.is_file():
        raise ValueError(f"{directory} has no pruning.json: not a directory written by save_pruned")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{meta_path} is not valid JSON ({err}): not a file written by save_pruned") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{meta_path} holds {type(meta).__name__}, not the object save_pruned writes")
    if meta.get("torchscript"):
        return torch.jit.load(str(path / "model.torchscript.pt"))
    if model is None:
        if not trust_pickle:
            raise ValueError("load_pruned needs `model` (a fresh instance of the architecture) and `example`: the "
                             "saved tensors are loaded with weights_only=True; trust_pickle=True unpickles model.pt "
                             "instead, which can run code, so only for files you wrote yourself")
        return torch.load(path / "model.pt", weights_only=False)
    if example is None:
        raise ValueError("load_pruned needs `example`, a batch the model accepts, to trace its channel groups")
    state = torch.load(path / "state_dict.pt", map_location="cpu", weights_only=True)
    if meta.get("record"):
        apply_pruning_record(model, meta["record"], example, **discover_options)
    if meta.get("batchnorms_folded"):
        from .export import fold_batchnorm

        fold_batchnorm(model, example)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"the saved tensors do not fit the rebuilt model ({str(err).splitlines()[0]}); build the "
                         "same architecture and pass the discovery options used when pruning") from err
    return model.eval()
