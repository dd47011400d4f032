"""One-shot structured pruning without a training loop.

    record = prune_channels(model, example, 0.5, measure="macs")   # model is now smaller

Discovers the channel groups, scores them, allocates the budget exactly (parameters or
MACs), and removes the pruned channels physically. The same pieces the
:class:`~sparsity_plugins.vision.ChannelPruning` callback drives during training.
"""
from __future__ import annotations

from typing import Sequence, Union

import torch
from torch import nn

from sparsity_core.allocators.base import Allocator
from sparsity_core.controller import SparsityController
from sparsity_core.criteria.base import Criterion

from . import criteria as _criteria  # noqa: F401 - registers the group criteria
from .budget import channel_budget
from .enforcement import MaskSparsity
from .groups import discover_channel_groups
from .removal import PruningRecord, remove_channels


def prune_channels(model: nn.Module, example: torch.Tensor, sparsity: float, measure: str = "macs",
                   criterion: Union[str, Criterion] = "group_l2", allocator: Union[str, Allocator] = "uniform",
                   round_to: int = 8, ignore: Sequence[str] = (), prune_heads: bool = True,
                   prune_embed_dim: bool = False) -> PruningRecord:
    """Remove ``sparsity`` of ``measure`` (``"units"``, ``"params"``, ``"macs"``) from ``model``
    in place; returns the record of kept channels."""
    groups = discover_channel_groups(model, example, ignore=ignore, prune_heads=prune_heads,
                                     prune_embed_dim=prune_embed_dim)
    ctrl = SparsityController(groups.targets, schedule=float(sparsity), criterion=criterion,
                              allocator=channel_budget(allocator, groups, round_to=round_to),
                              enforcement=MaskSparsity(), measure=measure, model=model)  # masks only: zeroes nothing
    ctrl.update(0, force=True)
    ctrl.enforcement.remove_hooks()
    return remove_channels(groups, ctrl.masks)  # raises with the model unchanged if removal fails
