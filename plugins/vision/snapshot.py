"""Put a model back *in place* after a failed structural change.

A failed trace or removal must leave the model as it was, and "as it was" means the same
objects: a reference taken before the call (``head = model.get_classifier()``) must still be
the model's module and hold the original weights, optimizers must still hold the model's
parameters, and hook handles taken before must still remove their hooks. A deep copy put in
place of the originals breaks all three, so :class:`ModelSnapshot` records instead what a
change can touch and puts it back into the very same objects:

- every module's attribute dictionary (plain attributes such as ``in_features``,
  ``out_channels``, ``num_heads``, ``head_dim``, ``training``), and the *contents* of the
  dictionaries, lists and sets inside it (``_parameters``, ``_buffers``, ``_modules`` and
  every hook dictionary: the dictionaries themselves keep their identity, so existing
  ``RemovableHandle`` objects stay valid, and hooks added meanwhile, Torch-Pruning's
  ``_record_grad_fn`` included, disappear);
- every parameter's data tensor, gradient and ``requires_grad`` (the parameter objects stay;
  with ``clone_values`` the values are copied too, for changes that write in place);
- buffer values (copied: a forward in training mode updates running statistics in place);
- optionally optimizers (their ``param_groups`` lists and state) and a Torch-Pruning
  dependency graph (its parameter nodes are re-keyed when an unwrapped parameter is pruned).

Modules are never copied, so taking a snapshot costs one pass over the module tree and, for
``clone_values``, one copy of the parameters.
"""
from __future__ import annotations

from typing import Any, Dict, List, Sequence, Tuple

import torch
from torch import nn


def _contents(value: Any) -> Any:
    if isinstance(value, dict):
        return dict(value)
    if isinstance(value, list):
        return list(value)
    if isinstance(value, set):
        return set(value)
    return None


def _put_back(container: Any, contents: Any) -> None:
    if not container and not contents:
        return  # the common case: an empty hook dictionary
    if isinstance(container, dict):
        container.clear()
        container.update(contents)
    elif isinstance(container, list):
        container[:] = contents
    elif isinstance(container, set):
        container.clear()
        container.update(contents)


class ModelSnapshot:
    """What a structural change may touch in ``model``; :meth:`restore` puts it back in place."""

    def __init__(self, model: nn.Module, optimizers: Sequence[torch.optim.Optimizer] = (), graph: Any = None,
                 clone_values: bool = False) -> None:
        self.model = model
        self.modules: List[Tuple[nn.Module, Dict[str, Any], Dict[str, Any]]] = []
        seen = set()
        for m in model.modules():
            if id(m) in seen:
                continue
            seen.add(id(m))
            attrs = dict(m.__dict__)
            inner = {k: c for k, v in attrs.items() if (c := _contents(v)) is not None}
            self.modules.append((m, attrs, inner))
        self.params: List[Tuple[nn.Parameter, torch.Tensor, Any, bool]] = []
        self.buffers: List[Tuple[torch.Tensor, torch.Tensor]] = []
        pseen, bseen = set(), set()
        for m, _, _ in self.modules:
            for p in m._parameters.values():
                if p is None or id(p) in pseen:
                    continue
                pseen.add(id(p))
                data = p.data.clone() if clone_values else p.data
                self.params.append((p, data, p.grad, p.requires_grad))
            for b in m._buffers.values():
                if b is None or id(b) in bseen:
                    continue
                bseen.add(id(b))
                self.buffers.append((b, b.detach().clone()))
        self.optimizers = [self._optimizer_state(opt, clone_values) for opt in optimizers]
        self.graph = self._graph_state(graph) if graph is not None else None

    # -- optimizers -----------------------------------------------------------------------
    @staticmethod
    def _optimizer_state(opt: torch.optim.Optimizer, clone_values: bool):
        groups = [(g, g["params"], list(g["params"])) for g in opt.param_groups]
        state = {}
        for p, s in opt.state.items():
            state[p] = (s, {k: (v.clone() if clone_values and isinstance(v, torch.Tensor) else v) for k, v in s.items()})
        return opt, groups, state

    @staticmethod
    def _restore_optimizer(saved) -> None:
        opt, groups, state = saved
        for g, lst, contents in groups:
            lst[:] = contents
            g["params"] = lst
        opt.state.clear()
        for p, (s, values) in state.items():
            s.clear()
            s.update(values)
            opt.state[p] = s

    # -- Torch-Pruning's graph ------------------------------------------------------------
    @staticmethod
    def _graph_state(dg):
        """The graph's node table, each node's attributes, and the attributes of its operation
        objects (Torch-Pruning's concat/split placeholders keep offsets and sizes that its
        pruning functions update), plus parameter names and history."""
        nodes = dict(getattr(dg, "module2node", {}))
        node_attrs = [(n, dict(n.__dict__)) for n in nodes.values()]
        ops = []
        seen = set()
        for n in nodes.values():
            op = n.module
            if isinstance(op, nn.Module) and id(op) not in seen:
                seen.add(id(op))
                attrs = dict(op.__dict__)
                ops.append((op, attrs, {k: c for k, v in attrs.items() if (c := _contents(v)) is not None}))
        return (dg, nodes, node_attrs, ops, dict(getattr(dg, "_param_to_name", {})),
                list(getattr(dg, "_pruning_history", [])))

    @staticmethod
    def _restore_graph(saved) -> None:
        dg, nodes, node_attrs, ops, param_to_name, history = saved
        if hasattr(dg, "module2node"):
            dg.module2node.clear()
            dg.module2node.update(nodes)
        for n, attrs in node_attrs:
            n.__dict__.clear()
            n.__dict__.update(attrs)
        for op, attrs, inner in ops:
            d = op.__dict__
            for k in [k for k in d if k not in attrs]:
                del d[k]
            for k, v in attrs.items():
                if k in inner:
                    _put_back(v, inner[k])
                d[k] = v
        if hasattr(dg, "_param_to_name"):
            dg._param_to_name.clear()
            dg._param_to_name.update(param_to_name)
        if hasattr(dg, "_pruning_history"):
            dg._pruning_history[:] = history

    # -- restore --------------------------------------------------------------------------
    @torch.no_grad()
    def restore(self) -> None:
        """Put every recorded module attribute, parameter, buffer, hook, optimizer entry and
        graph node back into the same objects."""
        for m, attrs, inner in self.modules:
            d = m.__dict__
            for k in [k for k in d if k not in attrs]:
                del d[k]
            for k, v in attrs.items():
                if k in inner:
                    _put_back(v, inner[k])
                d[k] = v
        for p, data, grad, requires_grad in self.params:
            p.data = data
            p.grad = grad
            p.requires_grad_(requires_grad)
        for b, value in self.buffers:
            if b.shape == value.shape and b.dtype == value.dtype:
                b.copy_(value)
            else:
                b.data = value
        for saved in self.optimizers:
            self._restore_optimizer(saved)
        if self.graph is not None:
            self._restore_graph(self.graph)

