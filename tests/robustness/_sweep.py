"""Shared machinery of the bad-input sweep: a case table row, a snapshot of whatever a
call acts on (modules, tensors, graphs, containers of them), and the check that a failing
call raised the expected, clear error and left its subject unchanged."""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from torch import nn


@dataclass
class Case:
    id: str
    call: Callable[[Any], Any]         # the invalid call, on the subject build() returned
    exc: type[BaseException]
    match: str                          # regex the message must match (re.search)
    build: Callable[[], Any] = lambda: None  # the tiny model / graph / scene acted on
    xfail: str | None = None         # strict xfail: the problem found
    marks: list[Any] = field(default_factory=list)


def params(cases: list[Case]) -> list[Any]:
    ids = [c.id for c in cases]
    assert len(ids) == len(set(ids)), "duplicate case ids"
    out = []
    for c in cases:
        marks = list(c.marks)
        if c.xfail:
            marks.append(pytest.mark.xfail(strict=True, reason=c.xfail))
        out.append(pytest.param(c, id=c.id, marks=marks))
    return out


def _hooks(m: nn.Module) -> tuple:
    return tuple(len(getattr(m, a, None) or {}) for a in (
        "_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
        "_state_dict_hooks", "_load_state_dict_pre_hooks"))


def snapshot(obj: Any, depth: int = 0) -> Any:
    """A comparable record of ``obj``: tensors cloned, modules by state, identity and hooks."""
    if depth > 6:
        return ("id", id(obj))
    if isinstance(obj, nn.Module):
        return ("module", id(obj), type(obj), obj.training,
                {k: v.detach().clone() for k, v in obj.state_dict(keep_vars=True).items()},
                [(n, id(m), type(m), _hooks(m), m.training, id(getattr(m, "processor", None)))
                 for n, m in obj.named_modules(remove_duplicate=False)],
                [(n, id(p), tuple(p.shape), p.requires_grad) for n, p in obj.named_parameters(remove_duplicate=False)],
                [(n, id(b), tuple(b.shape)) for n, b in obj.named_buffers(remove_duplicate=False)])
    if isinstance(obj, torch.Tensor):
        return ("tensor", obj.detach().clone(), obj.requires_grad)
    if isinstance(obj, dict):
        return ("dict", {k: snapshot(v, depth + 1) for k, v in obj.items()})
    if isinstance(obj, (list, tuple)):
        return (type(obj).__name__,
                [snapshot(v, depth + 1) for v in obj])
    if hasattr(obj, "to_dict") and hasattr(obj, "edge_index"):  # a PyG Data
        return ("graph", id(obj), snapshot(dict(obj.to_dict()), depth + 1))
    if callable(getattr(obj, "state_dict", None)) and not isinstance(obj, type):  # a controller, a program
        try:
            state = obj.state_dict()
        except Exception:  # noqa: BLE001  (not every object has a state before it is attached)
            state = None
        return ("stateful", id(obj), snapshot(state, depth + 1))
    if isinstance(obj, (int, float, str, bool, type(None))):
        return ("value", obj)
    return ("id", id(obj))


def same(a: Any, b: Any, where: str = "subject") -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.shape == b.shape and a.dtype == b.dtype, where
        assert torch.equal(a, b) or (a.is_floating_point() and torch.allclose(a, b, rtol=0, atol=0, equal_nan=True)), \
            f"{where}: tensor changed"
        return
    if isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b), f"{where}: keys changed {list(a)} != {list(b)}"
        for k in a:
            same(a[k], b[k], f"{where}[{k!r}]")
        return
    if isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), f"{where}: length changed"
        for i, (x, y) in enumerate(zip(a, b)):
            same(x, y, f"{where}[{i}]")
        return
    assert a == b, f"{where}: {a!r} != {b!r}"


def run(case: Case) -> None:
    subject = case.build()
    before = snapshot(subject)
    with pytest.raises(case.exc) as info:
        case.call(subject)
    message = str(info.value)
    assert re.search(case.match, message), f"message {message!r} does not match {case.match!r}"
    same(before, snapshot(subject))


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
