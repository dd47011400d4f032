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
import traceback
import warnings
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import nn

from sparsity_core.macs import MacCounter, count_macs, run_forward

from ._deps import torch_pruning
from .snapshot import ModelSnapshot
from .traversal_limits import (DEFAULT_GRAPH_TIME_LIMIT, GraphTimeLimitError, GroupTraceError,  # noqa: F401
                               TraversalRunaway, check_time_limit, graph_time_limit, record_merges, set_stage,
                               time_limit_message, without_deadline)

log = logging.getLogger(__name__)

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
