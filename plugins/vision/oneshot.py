"""One-shot structured pruning without a training loop.

    record = prune_channels(model, example, 0.5, measure="macs")   # model is now smaller

Discovers the channel groups, scores them and allocates the budget exactly (parameters or
MACs) through the core's one-shot driver
(:func:`~sparsity_core.oneshot.one_shot_prune`), then removes the pruned channels
physically. The same pieces the :class:`~sparsity_plugins.vision.ChannelPruning` program
drives during training.

Default allocator: ``"uniform"`` here (every group loses the same share of its units),
``"global"`` in :class:`~sparsity_plugins.vision.ChannelPruning` (units of all groups ranked
together). The defaults differ on purpose: without fine-tuning, a global ranking of
untrained or mismatched-scale groups concentrates the cut in a few layers and the one-shot
model degrades most; during training the masks move and fine-tuning recovers, so the global
ranking's better allocation pays. Pass ``allocator=`` to either for the other behaviour.

Failure is clean: a model that cannot be traced, has data-dependent control flow, or whose
graph build runs past ``graph_time_limit`` raises before anything changes; a removal that
fails puts the model back in place (same modules, parameters and hooks). Groups that cannot
be removed are found at discovery (``probe``) and skipped with the reason; if the final
removal still fails on one, it is skipped too and the budget re-allocated over the rest
(at most ``retries`` times).
"""
from __future__ import annotations

from typing import Callable, Iterable, Optional, Sequence, Union

import torch
from torch import nn

from sparsity_core.allocators.base import Allocator
from sparsity_core.criteria.base import Criterion
from sparsity_core.discovery import as_patterns
from sparsity_core.oneshot import one_shot_prune
from sparsity_core.validation import check_int, check_sparsity

from . import criteria as _criteria  # noqa: F401 - registers the group criteria
from .budget import channel_budget
from .groups import discover_channel_groups
from .record import PruningRecord, find_pruning_record
from .removal import RemovalError, remove_channels, removal_problems
from .removal_probe import find_unremovable
from .tracing import DEFAULT_GRAPH_TIME_LIMIT


def prune_channels(model: nn.Module, example: torch.Tensor, sparsity: float, measure: str = "macs",
                   criterion: Union[str, Criterion] = "group_l2", allocator: Union[str, Allocator] = "uniform",
                   round_to: int = 8, exclude: Sequence[str] = (), prune_heads: bool = True,
                   prune_embed_dim: bool = False, batches: Optional[Iterable] = None,
                   loss_fn: Optional[Callable[[nn.Module, object], torch.Tensor]] = None,
                   allow_repruning: bool = True, graph_time_limit: Optional[float] = DEFAULT_GRAPH_TIME_LIMIT,
                   check_control_flow: bool = True, probe: bool = True, retries: int = 3) -> PruningRecord:
    """Remove ``sparsity`` of ``measure`` (``"units"``, ``"params"``, ``"macs"``) from ``model``
    in place; returns the record of kept channels. Gradient criteria (``"taylor"``) score
    from ``batches`` with ``loss_fn(model, batch)``.

    ``allocator`` defaults to ``"uniform"`` (see the module docstring for why
    :class:`ChannelPruning` defaults to ``"global"``). ``allow_repruning=False`` refuses a
    model that already carries a pruning record anywhere in its module tree.
    ``graph_time_limit``, ``check_control_flow`` and ``probe``: see
    :func:`~sparsity_plugins.vision.discover_channel_groups`. The groups skipped and why are
    in the returned record's ``skipped``.
    """
    as_patterns(exclude, "exclude")
    check_sparsity(sparsity)
    check_int(retries, "retries", minimum=0)
    if not allow_repruning:
        found = find_pruning_record(model)
        if found is not None:
            where = f"module {found[0]!r}" if found[0] else "the model"
            raise ValueError(f"this model was already pruned ({where} carries a pruning record); pass "
                             "allow_repruning=True to prune it again: budgets then count from the current model")
    groups = discover_channel_groups(model, example, ignore=exclude, prune_heads=prune_heads,
                                     prune_embed_dim=prune_embed_dim, graph_time_limit=graph_time_limit,
                                     check_control_flow=check_control_flow, probe=probe)
    for attempt in range(retries + 1):
        result = one_shot_prune(model, groups.targets, batches, sparsity, criterion=criterion,
                                allocator=channel_budget(allocator, groups, round_to=round_to), measure=measure,
                                loss_fn=loss_fn, apply=False)
        last = attempt == retries
        bad = {} if last else removal_problems(groups, result.masks)  # all at once, before any change
        if not bad:
            try:
                # the model is back in place if this raises
                record = remove_channels(groups, result.masks, check=last)
                record.skipped = list(groups.skipped)
                return record
            except RemovalError as err:
                if last:
                    raise
                bad = {err.group: err.reason} if err.group else find_unremovable(groups, result.masks)
        bad = {k: v for k, v in bad.items() if any(t.name == k for t in groups.targets)}
        if not bad or len(bad) >= len(groups.targets):  # nothing left to skip: the clear error, model unchanged
            record = remove_channels(groups, result.masks)
            record.skipped = list(groups.skipped)
            return record
        for name, why in bad.items():
            groups.targets = [t for t in groups.targets if t.name != name]
            groups.attention = {a: t for a, t in groups.attention.items() if t != name}
            groups.skipped.append((name, f"removing it fails with the allocated masks: {why}"))
    raise AssertionError("unreachable")  # pragma: no cover
