"""One-shot PAGCP on a multi-task model: discover, score, allocate under the oracle, remove.

    record, alloc = pagcp_prune(model, example, calibration, task_losses, sparsity=0.5)
    alloc.last_capped        # {group: the task whose loss threshold stopped it}

``task_losses(model, batch) -> {task: scalar loss}``. The channel groups come from
:func:`~.groups.discover_channel_groups`, the scores from the criterion (PAGCP's
:class:`~.saliency.JointSaliency` by default), the kept counts from :class:`~.pagcp.PAGCP`
with the exact :class:`~.budget.ChannelCost` of the groups, all through the core's one-shot
driver (:func:`~sparsity_core.oneshot.one_shot_prune`); then the channels are removed
(:func:`~.removal.remove_channels`; the model is put back in place if that fails). PAGCP
fine-tunes after each pruning round; this function is one round.

Pruning driven by a subset of the tasks (the paper's "first task only" baseline) is the same
call with a ``task_losses`` that returns only those tasks.
"""
from __future__ import annotations

import copy
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from sparsity_core.criteria.base import Criterion
from sparsity_core.discovery import as_patterns
from sparsity_core.oneshot import one_shot_prune
from sparsity_core.validation import check_sparsity

from . import saliency as _saliency  # noqa: F401 - registers joint_saliency
from .budget import ChannelCost
from .groups import discover_channel_groups
from .pagcp import PAGCP
from .record import PruningRecord
from .removal import remove_channels
from .task_probe import task_loss_probe

TaskLosses = Callable[[nn.Module, Any], Mapping[str, torch.Tensor]]


def pagcp_prune(model: nn.Module, example: torch.Tensor, batches: Iterable, task_losses: TaskLosses,
                sparsity: float = 0.5, measure: str = "macs", criterion: Union[str, Criterion] = "joint_saliency",
                allocator: Optional[PAGCP] = None, exclude: Sequence[str] = (), **pagcp_args: Any
                ) -> Tuple[PruningRecord, PAGCP]:
    """Prune ``model`` in place to ``sparsity`` of ``measure`` with PAGCP; returns the record of
    kept channels and the allocator (its ``last_*`` attributes say what the oracle did).

    Args:
        batches: calibration batches, re-iterable (the probe runs them once per evaluation).
        task_losses: ``task_losses(model, batch) -> {task: scalar loss}``.
        allocator: a configured :class:`PAGCP` (copied; its probe and cost model are set
            here), or ``None`` to build one from ``pagcp_args`` (``threshold=``, ``ratios=``...).
        exclude: regular expressions of module names never pruned (heads never are).
    """
    check_sparsity(sparsity)
    as_patterns(exclude, "exclude")
    if allocator is not None and pagcp_args:
        raise ValueError(f"pass a PAGCP allocator or its arguments {sorted(pagcp_args)}, not both")
    alloc = copy.copy(allocator) if allocator is not None else PAGCP(**pagcp_args)
    if not isinstance(alloc, PAGCP):
        raise ValueError(f"allocator must be a PAGCP, got {type(alloc).__name__}")
    probe = task_loss_probe(model, batches, task_losses)  # checks batches and task_losses
    groups = discover_channel_groups(model, example, ignore=exclude)
    alloc.probe, alloc.cost_model = probe, ChannelCost(groups)
    result = one_shot_prune(model, groups.targets, None, sparsity, criterion=criterion, allocator=alloc,
                            measure=measure, apply=False)
    record = remove_channels(groups, result.masks)
    record.skipped = list(groups.skipped)
    return record, alloc
