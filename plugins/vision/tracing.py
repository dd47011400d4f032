"""Tracing a vision model: Torch-Pruning's dependency graph (with the failing operation named
when tracing breaks, under a time limit), a check for data-dependent control flow, and the
MACs of every convolution and linear layer.

Failure handling:

- The model is put back *in place* after a failed trace (:class:`~.snapshot.ModelSnapshot`):
  Torch-Pruning's ``_record_grad_fn`` forward hooks, left on every module when its forward
  raises, are removed with everything else a trace may leave; the train/eval mode of every
  module is restored (Torch-Pruning puts the model in eval mode).
- A failure during the forward pass names the innermost module that was running (its path
  and class); a failure after the forward (Torch-Pruning's graph construction and index
  mapping) names Torch-Pruning's function and the graph node it was processing.
- Messages never paste a module's multi-line repr: modules are named by path and class.

Time limit. Torch-Pruning's group enumeration (``get_all_groups`` / ``get_pruning_group``)
does not terminate in reasonable time on some architectures (with timm 1.0 / Torch-Pruning
1.6: rexnet, MaxViT, ECA-ResNet, BoTNet, LambdaNet, FocalNet, Visformer, EfficientViT-M,
ResNeSt, ...): an index mapping through a reshape returns its indices in set order, so the
visited check never matches and the traversal revisits nodes, or a flatten mapping
multiplies the index lists on every cycle. :func:`graph_time_limit` bounds it
*cooperatively*: while it is active, the inner steps of that traversal (``Group.add_dep``,
``Group.has_pruning_op``, ``Group.add_and_merge`` and every index mapping's ``__call__``)
check a per-thread deadline and raise :class:`GraphTimeLimitError` once it has passed. The
work therefore stops in the caller's own thread at its next step: nothing is left running
in the background, and since enumerating groups only reads the model (it builds group
objects), the model is unchanged. Rejected alternatives: a watchdog thread that gave up
waiting would leave the enumeration running (holding a CPU and the graph, and, during a
removal, mutating the model); a signal-based alarm works only in the main thread of a POSIX
process and can interrupt any statement, including one half-way through a mutation.

The same steps also detect a runaway traversal of *one* group before the whole limit is
spent (:class:`TraversalRunaway`: more than :data:`MAX_GROUP_ITEMS` items,
:data:`MAX_GROUP_INDICES` indices or :data:`MAX_GROUP_WORK` compared indices in one group,
or an index mapping producing more than :data:`MAX_MAPPED_INDICES` indices); discovery then
skips that group with the reason and prunes the rest. These bounds count work instead of
timing it, so every process of a distributed run finds the same groups (the overall time
limit, which only ever fails the call, is the one timed bound).
The patched methods are installed only while some thread is inside
:func:`graph_time_limit` (with or without a deadline: the runaway bounds always apply
there), and act only in such threads. The forward pass itself (the user's code) is not interrupted; its
duration counts against the limit, which is checked again after it.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
import traceback
import warnings
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import nn

from sparsity_core.macs import MacCounter, count_macs, run_forward

from ._deps import torch_pruning
from .snapshot import ModelSnapshot

log = logging.getLogger(__name__)

#: Default seconds for building the dependency graph and enumerating its groups.
DEFAULT_GRAPH_TIME_LIMIT = 60.0


class GroupTraceError(ValueError):
    """The dependency graph of a model could not be built; names the operation that failed."""


class GraphTimeLimitError(GroupTraceError):
    """Building the dependency graph (or enumerating its groups) ran past its time limit."""


def describe(module: Any, names: Optional[Dict[Any, str]] = None) -> str:
    """``'path' (Class)`` for a module (never its multi-line repr)."""
    if isinstance(module, nn.Parameter):
        name = (names or {}).get(module)
        return f"parameter {name!r} {tuple(module.shape)}" if name else f"a parameter of shape {tuple(module.shape)}"
    name = (names or {}).get(module)
    cls = type(module).__name__
    if name is None:
        return cls
    return f"{name!r} ({cls})" if name else f"the root module ({cls})"


def short(err: BaseException, limit: int = 240) -> str:
    """``Type: message`` on one line, at most ``limit`` characters of message."""
    msg = " ".join(str(err).split())
    if len(msg) > limit:
        msg = msg[:limit] + "..."
    return f"{type(err).__name__}: {msg}" if msg else type(err).__name__


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


# -- tracing -------------------------------------------------------------------------------
_UNWRAPPED_LOGGED: set = set()


def _log_unwrapped(model: nn.Module, dg) -> None:
    """Log once per model class which parameters Torch-Pruning prunes outside standard layers
    (its own warning lists them on every trace)."""
    names = sorted(n for p, n in getattr(dg, "_param_to_name", {}).items()
                   if any(p is u[0] for u in getattr(dg, "unwrapped_parameters", [])))
    key = (type(model).__name__, tuple(names))
    if not names or key in _UNWRAPPED_LOGGED:
        return
    _UNWRAPPED_LOGGED.add(key)
    shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
    log.info("Torch-Pruning prunes %d parameter(s) of %s outside standard layers on their last dimension: %s",
             len(names), type(model).__name__, shown)


@contextlib.contextmanager
def quiet_torch_pruning() -> Iterator[None]:
    """Silence Torch-Pruning's per-trace warnings (unwrapped parameters, unknown operations,
    shape inference's recursion depth)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"(?s).*Unwrapped parameters detected")
        warnings.filterwarnings("ignore", message=r"(?s).*Unknown operation .* encountered")
        warnings.filterwarnings("ignore", message=r"Maximum recursive depth reached")
        yield


def _failing_frame(err: BaseException) -> Tuple[Optional[traceback.FrameSummary], str]:
    """Deepest Torch-Pruning frame of ``err`` and the graph node it was processing."""
    tb, node_text, deepest = err.__traceback__, "", None
    while tb is not None:
        path = tb.tb_frame.f_code.co_filename.replace("\\", "/")
        if "/torch_pruning/" in path:
            deepest = tb
        tb = tb.tb_next
    if deepest is None:
        return None, ""
    Node = torch_pruning().dependency.Node
    for value in deepest.tb_frame.f_locals.values():
        if isinstance(value, Node):
            node_text = _describe_node(value)
            break
    frame = traceback.extract_tb(deepest, limit=1)[0]
    return frame, node_text


def _node_label(node) -> str:
    """A graph node as ``'path' (Class)`` for a module, the autograd operation otherwise
    (Torch-Pruning's own node names embed the module's repr)."""
    name = getattr(node, "_name", None)
    if name and isinstance(node.module, nn.Parameter):
        return f"parameter {name!r}"
    if name and not type(node.module).__module__.startswith("torch_pruning"):
        return f"{name!r} ({type(node.module).__name__})"
    fn = getattr(node, "grad_fn", None)
    if fn is not None and hasattr(fn, "name"):
        return fn.name()
    return type(node.module).__name__.lstrip("_")


def _describe_node(node) -> str:
    ins = [_node_label(n) for n in node.inputs][:3]
    outs = [_node_label(n) for n in node.outputs][:3]
    text = f"graph node {_node_label(node)}"
    if ins:
        text += f" fed by {', '.join(ins)}"
    if outs:
        text += f" feeding {', '.join(outs)}"
    return text


class _ModuleTracker:
    """Forward hooks recording which modules are running (innermost last) and whether the
    root's forward completed; the hooks go with the caller's snapshot restore."""

    def __init__(self, model: nn.Module) -> None:
        self.model, self.running, self.forward_done = model, [], False
        for n, m in model.named_modules():
            m.register_forward_pre_hook(functools.partial(self._pre, n=n))
            m.register_forward_hook(functools.partial(self._post, n=n))

    def _pre(self, mod, inp, n=None) -> None:
        self.running.append(n)

    def _post(self, mod, inp, out, n=None) -> None:
        if self.running and self.running[-1] == n:
            self.running.pop()
        if mod is self.model:
            self.forward_done = True

    def where(self, names: Dict[Any, str]) -> Optional[str]:
        """``the forward pass failed in module ...`` while a forward is running, else ``None``."""
        if self.running:
            inner = self.model.get_submodule(self.running[-1]) if self.running[-1] else self.model
            return f"the forward pass failed in module {describe(inner, names)}"
        if not self.forward_done:
            return "the forward pass failed before any module ran"
        return None


def trace_dependencies(model: nn.Module, example_inputs, ignored: Sequence[nn.Module] = ()):
    """Torch-Pruning's ``DependencyGraph`` of ``model``; raises :class:`GroupTraceError`
    naming the failing operation, with the model put back in place."""
    tp = torch_pruning()
    names = {m: n for n, m in model.named_modules()}
    snapshot = ModelSnapshot(model)
    tracker = _ModuleTracker(model)
    try:
        with torch.enable_grad(), quiet_torch_pruning():  # Torch-Pruning traces through autograd
            # forward_fn: one call (Torch-Pruning's own call retries with the inputs unpacked
            # differently after any error, which hides the first error behind a second one)
            dg = tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs,
                                                       forward_fn=lambda m, x: run_forward(m, x),
                                                       ignored_layers=list(ignored), verbose=False)
    except GraphTimeLimitError:
        snapshot.restore()
        raise
    except Exception as err:  # noqa: BLE001 - re-raised with the failing operation named
        snapshot.restore()  # Torch-Pruning's hooks, our hooks, train/eval modes
        where = tracker.where(names)
        if where is None:
            frame, node = _failing_frame(err)
            where = "the forward pass ran; Torch-Pruning's graph construction then failed"
            if frame is not None:
                path = frame.filename.replace("\\", "/").split("/torch_pruning/")[-1]
                where += f" in {frame.name} (torch_pruning/{path}:{frame.lineno})"
            if node:
                where += f" on the {node}"
        raise GroupTraceError(
            f"cannot build the channel dependency graph of {type(model).__name__}: {where} ({short(err)}). Nothing "
            "was changed. Exclude the modules involved (exclude=[...]) or prune this family with element sparsity "
            "(SparsityCallback)") from err
    snapshot.restore()  # our hooks off, every module's mode back
    _log_unwrapped(model, dg)
    return dg


# -- data-dependent control flow ------------------------------------------------------------
def _other_input(example: Any) -> Any:
    """A second input unlike ``example``: every floating tensor negated (ones where it is all
    zeros); other values unchanged."""
    if isinstance(example, torch.Tensor):
        if not example.is_floating_point():
            return example
        return -example if bool(example.ne(0).any()) else torch.ones_like(example)
    if isinstance(example, (tuple, list)):
        return type(example)(_other_input(e) for e in example)
    if isinstance(example, dict):
        return {k: _other_input(v) for k, v in example.items()}
    return example


def _tensors(value: Any) -> List[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _tensors(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _tensors(v)]
    return []


def output_shapes(value: Any) -> List[Tuple[int, ...]]:
    """Shapes of every tensor in a (nested) model output."""
    return [tuple(t.shape) for t in _tensors(value)]


def reference_output_shapes(model: nn.Module, example: Any) -> List[Tuple[int, ...]]:
    """Output shapes of ``model`` on ``example`` (eval mode, no gradients; model put back)."""
    snapshot = ModelSnapshot(model)
    try:
        model.eval()
        with torch.no_grad():
            return output_shapes(run_forward(model, example))
    finally:
        snapshot.restore()


def _signature(model: nn.Module, example: Any) -> Tuple[List[str], List[str], List[Tuple[int, ...]]]:
    """Module calls in order, the autograd operations of the outputs in a fixed order, and
    the output shapes."""
    calls: List[str] = []
    handles = [m.register_forward_pre_hook(lambda mod, inp, n=n: calls.append(n), prepend=True)
               for n, m in model.named_modules()]
    try:
        with torch.enable_grad():
            out = run_forward(model, example)
    finally:
        for h in handles:
            h.remove()
    ops: List[str] = []
    seen = set()
    stack = [t.grad_fn for t in reversed(_tensors(out)) if t.grad_fn is not None]
    while stack:
        fn = stack.pop()
        if id(fn) in seen:
            continue
        seen.add(id(fn))
        ops.append(type(fn).__name__)
        for nxt, _ in reversed(getattr(fn, "next_functions", ())):
            if nxt is not None and id(nxt) not in seen:
                stack.append(nxt)
    return calls, ops, output_shapes(out)


def check_control_flow(model: nn.Module, example: Any) -> List[Tuple[int, ...]]:
    """Refuse a model whose forward runs differently for two inputs of the same shape.

    Channel couplings are traced along one forward pass; a model that branches on the data
    (``if x.mean() > 0``) would be pruned along the traced branch only and fail later on the
    other. The model is run in eval mode on ``example`` and on a second input (floating
    tensors negated), and the module calls and autograd operations of the two runs are
    compared. Raises :class:`GroupTraceError` naming the first difference; the model is put
    back in place either way. Returns the output shapes on ``example``."""
    names = dict(model.named_modules())
    snapshot = ModelSnapshot(model)
    tracker = _ModuleTracker(model)
    try:
        model.eval()
        which = "the example input"
        calls_a, ops_a, shapes = _signature(model, example)
        which, tracker.forward_done = "a second input (the example negated)", False
        calls_b, ops_b, _ = _signature(model, _other_input(example))
    except Exception as err:  # noqa: BLE001 - named and re-raised
        snapshot.restore()
        where = tracker.where({v: k for k, v in names.items()}) or "the forward pass failed"
        raise GroupTraceError(f"cannot run {type(model).__name__} in eval mode on {which}: {where} ({short(err)}). "
                              "Nothing was changed") from err
    snapshot.restore()
    if calls_a != calls_b:
        i = next((k for k, (a, b) in enumerate(zip(calls_a, calls_b)) if a != b), min(len(calls_a), len(calls_b)))
        a = describe(names[calls_a[i]], {v: k for k, v in names.items()}) if i < len(calls_a) else "nothing more"
        b = describe(names[calls_b[i]], {v: k for k, v in names.items()}) if i < len(calls_b) else "nothing more"
        prev = describe(names[calls_a[i - 1]], {v: k for k, v in names.items()}) if i else "the start"
        raise GroupTraceError(
            f"{type(model).__name__} has data-dependent control flow: after {prev}, the example input runs {a} "
            f"and another input of the same shape runs {b}. Channel couplings are traced along one branch only, "
            "so pruning would break the others; nothing was changed. Make the branch static, exclude the modules "
            "involved (exclude=[...]), or use element sparsity (SparsityCallback)")
    if ops_a != ops_b:
        i = next((k for k, (a, b) in enumerate(zip(ops_a, ops_b)) if a != b), min(len(ops_a), len(ops_b)))
        a = ops_a[i] if i < len(ops_a) else "nothing more"
        b = ops_b[i] if i < len(ops_b) else "nothing more"
        raise GroupTraceError(
            f"{type(model).__name__} has data-dependent control flow: the same modules run for two inputs of the "
            f"same shape but the operations differ (autograd step {i}: {a} vs {b}). Channel couplings are traced "
            "along one branch only, so pruning would break the others; nothing was changed. Make the branch "
            "static or use element sparsity (SparsityCallback)")
    return shapes


# -- MACs ----------------------------------------------------------------------------------
class VisionMacCounter(MacCounter):
    """The core's MAC counter plus the two matrix products of timm-style attention (a module
    with a ``qkv`` Linear, ``num_heads`` and ``head_dim``): ``QKᵀ`` and ``attention·V``,
    ``2·B·heads·N²·head_dim`` for ``N`` tokens (they run inside ``scaled_dot_product_attention``,
    which no module hook sees)."""

    def handles(self, module: nn.Module) -> bool:
        return super().handles(module) or _is_attention(module)

    def count(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Optional[float]:
        if not _is_attention(module):
            return super().count(module, args, kwargs, output)
        x = args[0] if args else kwargs.get("x")
        if not isinstance(x, torch.Tensor) or x.dim() != 3:
            return None
        batch, tokens = x.shape[0], x.shape[1]
        return float(2 * batch * module.num_heads * tokens * tokens * module.head_dim)


def _is_attention(module: nn.Module) -> bool:
    return isinstance(getattr(module, "qkv", None), nn.Linear) and isinstance(getattr(module, "num_heads", None), int) \
        and isinstance(getattr(module, "head_dim", None), int)


def measure_macs(model: nn.Module, example_inputs) -> Dict[str, float]:
    """MACs per sample of every Conv/Linear (and attention's matrix products), from one
    forward pass with the suite's counter; every module's train/eval mode is kept."""
    snapshot = ModelSnapshot(model)
    try:
        return count_macs(model, example_inputs, counter=VisionMacCounter)
    finally:
        snapshot.restore()
