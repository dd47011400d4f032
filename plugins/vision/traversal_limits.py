"""Bounds on Torch-Pruning's graph traversal: a cooperative per-thread deadline and counted
runaway limits per group (see :mod:`.tracing` for why it is cooperative rather than a
watchdog thread or SIGALRM). :func:`graph_time_limit` patches Torch-Pruning's inner steps
while a limit is active; the checks act only in threads that set one."""
from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
from typing import Any, Dict, Iterator, List, Optional, Tuple

from torch import nn

from ._deps import torch_pruning

log = logging.getLogger(__name__)

#: Default seconds for building the dependency graph and enumerating its groups.
DEFAULT_GRAPH_TIME_LIMIT = 60.0


class GroupTraceError(ValueError):
    """The dependency graph of a model could not be built; names the operation that failed."""


class GraphTimeLimitError(GroupTraceError):
    """Building the dependency graph (or enumerating its groups) ran past its time limit."""


# -- time limit ----------------------------------------------------------------------------
_local = threading.local()
_patch_lock = threading.Lock()
_patch_users = 0
_originals: List[Tuple[type, str, Any]] = []


def _check_deadline() -> None:
    limit = getattr(_local, "limit", None)
    if limit is not None and time.monotonic() > limit[0]:
        stage = getattr(_local, "stage", None)
        raise GraphTimeLimitError(limit[1].replace("{stage}", f" while {stage}" if stage else ""))


def set_stage(stage: Optional[str]) -> None:
    """Name what this thread is doing, for the time-limit message (and a debug log line)."""
    _local.stage = stage
    if stage:
        log.debug("graph: %s", stage)


#: Largest index list an index mapping may produce while a limit is active: no layer has
#: this many channels (flattening 768 channels of 196 tokens gives 150 thousand), so a longer
#: list means the traversal is running away.
MAX_MAPPED_INDICES = 300_000
#: Largest number of items one group may collect (the largest real groups, ConvNeXt's and
#: DenseNet's, hold a few hundred); more means the traversal revisits nodes without end.
MAX_GROUP_ITEMS = 2_000
#: Largest number of indices one group may collect over all its items (ConvNeXt-B's largest
#: group: 365 thousand).
MAX_GROUP_INDICES = 2_000_000
#: Largest comparison work one group's traversal may do: the sum, over its visited-checks
#: (``Group.has_pruning_op``), of items held times indices compared (ConvNeXt-B's largest
#: group: 35 million; ViT-B's: 14 million). Counted, not timed, so every process of a
#: distributed run skips the same groups.
MAX_GROUP_WORK = 100_000_000


class TraversalRunaway(GroupTraceError):
    """Torch-Pruning's traversal of one group ran away (an index mapping produced more
    indices than any layer has, or the group collected more items than any real group)."""


def _guarded(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if getattr(_local, "limit", None) is not None:
            _check_deadline()
        return fn(*args, **kwargs)
    return wrapper


def _guarded_lookup(fn):
    """``Group.has_pruning_op``: the deadline, and a bound on the comparison work of one group."""
    @functools.wraps(fn)
    def wrapper(self, dep, idxs, *args, **kwargs):
        if getattr(_local, "limit", None) is not None:
            _check_deadline()
            work = getattr(self, "_sparsity_work", 0) + len(self._group) * max(1, len(idxs))
            self._sparsity_work = work
            if work > MAX_GROUP_WORK:
                raise TraversalRunaway(f"Torch-Pruning's traversal of one group compared {work:.2g} indices "
                                       "(a coupling cycle it cannot resolve)")
        return fn(self, dep, idxs, *args, **kwargs)
    return wrapper


def _guarded_add(fn):
    """``Group.add_dep``: the deadline, and a bound on the items one group collects."""
    @functools.wraps(fn)
    def wrapper(self, *args, **kwargs):
        if getattr(_local, "limit", None) is not None:
            _check_deadline()
            if len(self._group) >= MAX_GROUP_ITEMS:
                raise TraversalRunaway(f"Torch-Pruning's traversal collected {len(self._group)} items in one group "
                                       "(a coupling cycle it cannot resolve)")
            total = getattr(self, "_sparsity_indices", 0) + len(args[1] if len(args) > 1 else kwargs.get("idxs", ()))
            self._sparsity_indices = total
            if total > MAX_GROUP_INDICES:
                raise TraversalRunaway(f"Torch-Pruning's traversal collected {total} indices in one group "
                                       "(a coupling cycle it cannot resolve)")
        return fn(self, *args, **kwargs)
    return wrapper


def _guarded_merge(fn):
    """``Group.add_and_merge``: the deadline, and (inside :func:`record_merges`) every root
    index that reaches each position, which the merge itself keeps only once."""
    @functools.wraps(fn)
    def wrapper(self, dep, idxs, *args, **kwargs):
        if getattr(_local, "limit", None) is not None:
            _check_deadline()
        merges = getattr(_local, "merges", None)
        if merges is not None:
            key = (id(dep.target), getattr(dep.handler, "__name__", str(dep.handler)))
            for index in idxs:
                root = getattr(index, "root_idx", None)
                if root is not None:
                    merges.setdefault((key, index.idx), set()).add(root)
        return fn(self, dep, idxs, *args, **kwargs)
    return wrapper


@contextlib.contextmanager
def record_merges() -> Iterator[Dict[Any, set]]:
    """Within the block (and a :func:`graph_time_limit`), collect ``position -> root
    indices`` of every group Torch-Pruning builds: root channels that reach the same
    position of a layer through different paths (a channel concatenated with a copy of
    itself, as in GhostNet) must be removed together."""
    previous = getattr(_local, "merges", None)
    _local.merges = {}
    try:
        yield _local.merges
    finally:
        _local.merges = previous


def _guarded_mapping(fn):
    """An index mapping's ``__call__``: the deadline, and a bound on the indices it produces
    (one call through a flatten mapping on a runaway traversal can take seconds)."""
    @functools.wraps(fn)
    def wrapper(self, idxs, *args, **kwargs):
        if getattr(_local, "limit", None) is not None:
            _check_deadline()
            produced = len(idxs) * max(1, int(getattr(self, "_stride", 1) or 1))
            if produced > MAX_MAPPED_INDICES:
                raise TraversalRunaway(f"Torch-Pruning's {type(self).__name__.lstrip('_')} would map "
                                          f"{produced} indices (a coupling cycle it cannot resolve)")
        return fn(self, idxs, *args, **kwargs)
    return wrapper


def _patch_points() -> List[Tuple[type, str, Any]]:
    torch_pruning()  # a clear error if the extra is missing
    from torch_pruning.dependency import group as tp_group, index_mapping as tp_index

    points = [(tp_group.Group, "add_dep", _guarded_add), (tp_group.Group, "has_pruning_op", _guarded_lookup),
              (tp_group.Group, "add_and_merge", _guarded_merge)]
    for name in dir(tp_index):
        obj = getattr(tp_index, name)
        if isinstance(obj, type) and name.endswith("IndexMapping") and "__call__" in obj.__dict__:
            points.append((obj, "__call__", _guarded_mapping))
    return points


def _install() -> None:
    global _patch_users
    with _patch_lock:
        if _patch_users == 0:
            for cls, attr, wrap in _patch_points():
                original = cls.__dict__[attr]
                _originals.append((cls, attr, original))
                setattr(cls, attr, wrap(original))
        _patch_users += 1


def _uninstall() -> None:
    global _patch_users
    with _patch_lock:
        _patch_users -= 1
        if _patch_users == 0:
            while _originals:
                cls, attr, original = _originals.pop()
                setattr(cls, attr, original)


@contextlib.contextmanager
def graph_time_limit(seconds: Optional[float], message: str) -> Iterator[None]:
    """Within the block, Torch-Pruning's graph traversal in this thread raises
    :class:`GraphTimeLimitError` (with ``message``) once ``seconds`` have passed (``None`` or
    ``<= 0``: no deadline), and :class:`TraversalRunaway` when an index mapping would
    produce more than :data:`MAX_MAPPED_INDICES` indices or a group exceeds
    :data:`MAX_GROUP_ITEMS`, :data:`MAX_GROUP_INDICES` or :data:`MAX_GROUP_WORK`. Nested limits keep the earlier
    deadline."""
    previous = getattr(_local, "limit", None)
    deadline = time.monotonic() + float(seconds) if seconds is not None and seconds > 0 else float("inf")
    if previous is not None and previous[0] < deadline:
        deadline, message = previous
    _local.limit = (deadline, message)
    _install()
    try:
        yield
    finally:
        _uninstall()
        _local.limit = previous


@contextlib.contextmanager
def without_deadline() -> Iterator[None]:
    """Within the block, this thread's deadline does not apply (the runaway bounds still
    do): for work whose cost is bounded otherwise, such as the removal probe."""
    previous = getattr(_local, "limit", None)
    if previous is not None:
        _local.limit = (float("inf"), previous[1])
    try:
        yield
    finally:
        _local.limit = previous


def check_time_limit() -> None:
    """Raise :class:`GraphTimeLimitError` if the active limit of this thread has passed."""
    _check_deadline()


def time_limit_message(model: nn.Module, seconds: float, what: str) -> str:
    """The time-limit error's text; ``{stage}`` is filled with what was running."""
    return (f"{what} of {type(model).__name__} ran past the time limit of {seconds:g} s (graph_time_limit)"
            "{stage}; Torch-Pruning's group enumeration does not terminate on some architectures. Nothing was "
            "changed. Raise graph_time_limit if the model is just large, exclude the modules involved "
            "(exclude=[...]), or use element sparsity (SparsityCallback) for this family")
