"""Boolean masks keyed by target name, and the in-place operations that apply them.

A mask has the target's ``mask_shape`` (one entry per unit for structured layouts, one per
element for element/N:M layouts); ``True`` means *kept*. Masks are updated in place where
possible so that references held elsewhere stay valid, and are plain tensors so that they
save with ``torch.save`` and load with ``torch.load(..., weights_only=True)``.
"""
from __future__ import annotations

from typing import Dict, Iterable, Iterator, Mapping, MutableMapping, Optional

import torch

from .targets import Target


class MaskSet(MutableMapping):
    """``{target name: bool mask}`` with sparsity accounting."""

    def __init__(self, masks: Optional[Mapping[str, torch.Tensor]] = None) -> None:
        self._masks: Dict[str, torch.Tensor] = {}
        for name, mask in (masks or {}).items():
            self[name] = mask

    def __getitem__(self, name: str) -> torch.Tensor:
        return self._masks[name]

    def __setitem__(self, name: str, mask: torch.Tensor) -> None:
        if not isinstance(mask, torch.Tensor):
            raise TypeError(f"mask for {name!r} must be a tensor, got {type(mask).__name__}")
        self._masks[name] = mask.to(torch.bool)

    def __delitem__(self, name: str) -> None:
        del self._masks[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._masks)

    def __len__(self) -> int:
        return len(self._masks)

    @classmethod
    def dense(cls, targets: Iterable[Target], device: Optional[torch.device] = None) -> "MaskSet":
        """All-``True`` masks for ``targets`` (on the device of their parameter)."""
        out = cls()
        for t in targets:
            dev = device or (t.param.device if t.param is not None else None)
            out[t.name] = torch.ones(t.mask_shape, dtype=torch.bool, device=dev)
        return out

    def kept(self, name: str) -> int:
        return int(self._masks[name].sum())

    def sparsity(self, name: str) -> float:
        mask = self._masks[name]
        return 1.0 - float(mask.sum()) / mask.numel() if mask.numel() else 0.0

    def weighted_sparsity(self, targets: Iterable[Target], weight: str = "params") -> float:
        """Fraction of ``weight`` (``"units"``, ``"params"`` or ``"macs"``) removed over ``targets``."""
        total = removed = 0.0
        for t in targets:
            if t.name not in self._masks:
                continue
            per_unit = 1.0 if weight == "units" else (t.params_per_unit if weight == "params" else t.macs_per_unit)
            n, kept = t.num_units, self.kept(t.name)
            total += per_unit * n
            removed += per_unit * (n - kept)
        return removed / total if total else 0.0

    def state_dict(self) -> Dict[str, torch.Tensor]:
        return {k: v.detach().cpu().clone() for k, v in self._masks.items()}

    def copy(self) -> "MaskSet":
        return MaskSet({k: v.clone() for k, v in self._masks.items()})

    def changed_fraction(self, other: "MaskSet") -> float:
        """Fraction of units whose kept/pruned state differs from ``other`` (same keys)."""
        diff = total = 0
        for k, v in self._masks.items():
            if k in other:
                diff += int((v != other[k].to(v.device)).sum())
                total += v.numel()
        return diff / total if total else 0.0

    def overlap(self, other: "MaskSet") -> float:
        """Jaccard index of the kept units over the targets both hold: ``|A ∩ B| / |A ∪ B|``
        (1.0 when neither keeps a unit). Compares masks chosen by different seeds or runs."""
        shared = [k for k in self._masks if k in other]
        if not shared:
            raise ValueError("the two mask sets share no target")
        inter = union = 0
        for k in shared:
            a, b = self._masks[k], other[k].to(self._masks[k].device)
            if a.shape != b.shape:
                raise ValueError(f"masks of {k!r} differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
            inter += int((a & b).sum())
            union += int((a | b).sum())
        return inter / union if union else 1.0

    # Resizing, for targets whose units come and go (Gaussians, edges).
    def select_units(self, name: str, index: torch.Tensor) -> None:
        """Keep only the units at ``index`` (bool mask or long indices) of a flat mask."""
        self._masks[name] = self._masks[name][index].clone()

    def append_units(self, name: str, count: int, kept: bool = True) -> None:
        """Append ``count`` units to a flat mask, kept (default) or pruned."""
        mask = self._masks[name]
        extra = torch.full((count,), kept, dtype=torch.bool, device=mask.device)
        self._masks[name] = torch.cat([mask, extra])


@torch.no_grad()
def apply_mask_(tensor: torch.Tensor, target: Target, mask: torch.Tensor) -> None:
    """Zero the entries of ``tensor`` (shaped like the target) whose units are pruned."""
    tensor.mul_(target.expand_mask(mask))


@torch.no_grad()
def mask_optimizer_state_(optimizer: torch.optim.Optimizer, param: torch.Tensor, target: Target, mask: torch.Tensor) -> int:
    """Zero the optimizer's per-entry state (Adam moments, SGD momentum...) of pruned entries.

    Every state tensor shaped like ``param`` is masked. Returns how many were masked.
    """
    state = optimizer.state.get(param, {})
    count = 0
    expanded = target.expand_mask(mask)
    for value in state.values():
        if isinstance(value, torch.Tensor) and value.shape == param.shape:
            value.mul_(expanded)
            count += 1
    return count
