"""Which channel groups cannot be removed: trial removals of every group on the model itself
(:func:`find_unremovable`), each put back in place from one snapshot, through the same
path as :func:`~.removal.remove_channels`.
"""
from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from .groups import ChannelGroup, ChannelGroups
from .removal import _ForwardFailure, _GroupFailure, _prune_groups, _verify
from .snapshot import ModelSnapshot


_TRIAL_KEEP = (0.5, 0.75, 0.25, 0.625, 0.375)


def _trial_masks(targets: Sequence[ChannelGroup]) -> Dict[str, torch.Tensor]:
    """Trial masks: about a quarter to three quarters of every group's units (the share
    varies from group to group), spread over the group (so concatenation offsets are
    exercised), with kept widths that differ from every other group's kept and original
    width where the group's size allows. Two groups whose widths a forward ties together
    without Torch-Pruning coupling them (an attention that reshapes its heads with its
    input width, a fixed ``split``) then end with different widths, and the break shows."""
    used = {len(t.root_units) for t in targets}
    masks: Dict[str, torch.Tensor] = {}
    for i, t in enumerate(targets):
        units = t.num_units
        if units < 2:
            continue
        per_unit = len(t.root_units) / units
        goal = units * _TRIAL_KEEP[i % len(_TRIAL_KEEP)]
        options = sorted(range(1, units), key=lambda k: (abs(k - goal), k))
        keep = next((k for k in options if round(k * per_unit) not in used), options[0])
        used.add(round(keep * per_unit))
        mask = torch.zeros(units, dtype=torch.bool)
        mask[torch.linspace(0, units - 1, keep).round().long()] = True
        masks[t.name] = mask
    return masks


class _Trials:
    """Trial removals on the model itself, each put back in place from one snapshot."""

    def __init__(self, groups: ChannelGroups, masks: Mapping[str, torch.Tensor]) -> None:
        self.groups, self.masks = groups, masks
        self.snapshot = ModelSnapshot(groups.model, graph=groups.graph)
        self.count = 0

    def __call__(self, names: Sequence[str]) -> Optional[Tuple[Optional[str], str]]:
        """``None`` if removing the masks of ``names`` works, else ``(group or None, reason)``."""
        self.count += 1
        try:
            with torch.no_grad():
                _prune_groups(self.groups, {n: self.masks[n] for n in names})
                _verify(self.groups)
            return None
        except _GroupFailure as f:
            return f.name, f.reason
        except _ForwardFailure as f:
            return None, str(f)
        finally:
            self.snapshot.restore()


def find_unremovable(groups: ChannelGroups, masks: Optional[Mapping[str, torch.Tensor]] = None) -> Dict[str, str]:
    """Groups whose removal fails, with the reason, found by removing ``masks`` (default:
    :func:`_trial_masks`, a quarter to three quarters of every group's units) on the model
    itself and putting it back in place after every trial.

    All groups are tried together first (one trial when every group works, the common
    case). If that fails, every group is tried alone (one Torch-Pruning regeneration and one
    forward each), then the groups that passed alone are tried together again; only if
    that fails too (groups that break in combination) are they added to a verified set
    chunk by chunk, a failing chunk split in halves."""
    if masks is None:
        masks = _trial_masks(groups.targets)
    names = [t.name for t in groups.targets if t.name in masks and not bool(masks[t.name].all())]
    bad: Dict[str, str] = {}
    if not names:
        return bad
    trial = _Trials(groups, masks)
    result = trial(names)
    if result is None:
        return bad
    if result[0] in names:
        bad[result[0]] = result[1]
    for n in names:
        if n not in bad:
            result = trial([n])
            if result is not None:
                bad[n] = result[1]
    good = [n for n in names if n not in bad]
    if not good or trial(good) is None:
        return bad
    verified: List[str] = []
    chunks = [good]
    while chunks:
        chunk = chunks.pop(0)
        result = trial(verified + chunk)
        if result is None:
            verified += chunk
            continue
        culprit, reason = result
        if culprit in chunk:
            bad[culprit] = reason
            rest = [n for n in chunk if n != culprit]
            if rest:
                chunks.insert(0, rest)
        elif len(chunk) == 1:
            bad[chunk[0]] = f"{reason} (in combination with other groups)"
        else:
            half = len(chunk) // 2
            chunks[0:0] = [chunk[:half], chunk[half:]]
    return bad
