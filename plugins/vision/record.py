"""The record a channel removal leaves on the model: per group the kept channel indices (in
the numbering of the model before removal), per attention module the heads kept, per parameter
its new shape. Records of successive removals compose into indices of the original dense
model (:meth:`PruningRecord.compose`). The record is kept as JSON in the pruned module's
attribute :data:`RECORD_ATTR` and found anywhere in a module tree (:func:`find_pruning_record`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Tuple

from torch import nn

RECORD_ATTR = "_sparsity_pruning_record"


@dataclass
class PruningRecord:
    """What a removal kept: per group, the kept root channel indices, and per parameter its
    new shape. ``rounds`` counts the removals composed into it."""

    kept: Dict[str, List[int]] = field(default_factory=dict)
    heads: Dict[str, int] = field(default_factory=dict)  # attention module -> heads kept
    shapes: Dict[str, List[int]] = field(default_factory=dict)
    rounds: int = 1
    #: groups left unpruned and why (set by :func:`~.oneshot.prune_channels`; not saved)
    skipped: List[Tuple[str, str]] = field(default_factory=list, compare=False)

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


def pruning_record(model: nn.Module) -> Optional[PruningRecord]:
    """The record left on ``model`` by :func:`remove_channels` (``None`` if never pruned)."""
    rec = getattr(model, RECORD_ATTR, None)
    return PruningRecord.from_json(rec) if isinstance(rec, dict) else None


def find_pruning_record(model: nn.Module) -> Optional[Tuple[str, PruningRecord]]:
    """``(module path, record)`` of the first module in ``model``'s tree (the root first)
    that carries a pruning record, or ``None``: a model pruned as a submodule of another
    (``prune_channels(module.model, ...)``, then ``ChannelPruning`` on the LightningModule)
    is found too."""
    for name, m in model.named_modules():
        rec = pruning_record(m)
        if rec is not None:
            return name, rec
    return None


def _take_previous_record(model: nn.Module) -> Optional[PruningRecord]:
    """The record of an earlier removal anywhere in ``model``'s tree, in ``model``'s names; a
    record found on a submodule is moved to ``model`` (its group names get the prefix)."""
    found = find_pruning_record(model)
    if found is None:
        return None
    path, rec = found
    if not path:
        return rec
    delattr(model.get_submodule(path), RECORD_ATTR)
    pre = f"{path}."
    return PruningRecord(kept={pre + k: v for k, v in rec.kept.items()}, heads={pre + k: v for k, v in rec.heads.items()},
                         shapes={pre + k: v for k, v in rec.shapes.items()}, rounds=rec.rounds)
