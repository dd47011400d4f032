"""One-shot structured pruning without a training loop.

    record = prune_channels(model, example, 0.5, measure="macs")   # model is now smaller

Discovers the channel groups, scores them and allocates the budget exactly (parameters or
MACs) through the core's one-shot driver
(:func:`~sparsity_core.oneshot.one_shot_prune`), then removes the pruned channels
physically. The same pieces the :class:`~sparsity_plugins.vision.ChannelPruning` program
drives during training.
"""
from __future__ import annotations

from typing import Callable, Iterable, Optional, Sequence, Union

import torch
from torch import nn

from sparsity_core.allocators.base import Allocator
from sparsity_core.criteria.base import Criterion
from sparsity_core.oneshot import one_shot_prune

from . import criteria as _criteria  # noqa: F401 - registers the group criteria
from .budget import channel_budget
from .groups import discover_channel_groups
from .removal import PruningRecord, remove_channels


def prune_channels(model: nn.Module, example: torch.Tensor, sparsity: float, measure: str = "macs",
                   criterion: Union[str, Criterion] = "group_l2", allocator: Union[str, Allocator] = "uniform",
                   round_to: int = 8, exclude: Sequence[str] = (), prune_heads: bool = True,
                   prune_embed_dim: bool = False, batches: Optional[Iterable] = None,
                   loss_fn: Optional[Callable[[nn.Module, object], torch.Tensor]] = None) -> PruningRecord:
    """Remove ``sparsity`` of ``measure`` (``"units"``, ``"params"``, ``"macs"``) from ``model``
    in place; returns the record of kept channels. Gradient criteria (``"taylor"``) score
    from ``batches`` with ``loss_fn(model, batch)``."""
    groups = discover_channel_groups(model, example, ignore=exclude, prune_heads=prune_heads,
                                     prune_embed_dim=prune_embed_dim)
    result = one_shot_prune(model, groups.targets, batches, sparsity, criterion=criterion,
                            allocator=channel_budget(allocator, groups, round_to=round_to), measure=measure,
                            loss_fn=loss_fn, apply=False)
    return remove_channels(groups, result.masks)  # raises with the model unchanged if removal fails
