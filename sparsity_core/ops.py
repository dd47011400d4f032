"""Replace a parameter by one of another shape, with its optimizer state carried along.

Removing or adding rows of a parameter (pruned hash entries, removed channels, new Gaussians)
creates a new tensor. An optimizer built earlier still holds the old parameter: it keeps
stepping a tensor the model no longer uses, and its per-parameter state (Adam moments, SGD
momentum) has the old shape. :func:`replace_parameter` installs the new parameter in the module
and, in every optimizer that held the old one, puts it into the same ``param_groups`` slot
(in place, so LR schedulers and anything else holding the group dicts stay valid) and moves
its state, remapped with the same row selection as the parameter.

State handling (both functions):

- without ``remap`` the whole state is kept unchanged if the old and new parameter have the
  same shape, otherwise it is reset;
- with ``remap``, per state entry: the ``"step"`` entry, 0-dim tensors and non-tensors are
  kept as they are; tensors shaped like the old parameter go through
  ``remap(tensor) -> tensor``, which must return the new parameter's shape (e.g.
  :func:`select_rows`, :func:`append_rows`); any other tensor (e.g. Adafactor's factored
  second moments) cannot be remapped, so the state is reset (with a warning).

*Reset* means the parameter's state entry is dropped: the optimizer re-initialises it at its
next step, as for a fresh parameter (step 0).

Everything is checked before anything changes: on ``ValueError`` the module and every
optimizer are as they were. The new parameter starts without a gradient.
"""
from __future__ import annotations

import warnings
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from .validation import check_int

Remap = Callable[[Tensor], Tensor]

__all__ = ["replace_parameter", "rebind_optimizer", "select_rows", "append_rows"]


def select_rows(index: Tensor, dim: int = 0) -> Remap:
    """Remap keeping the entries ``index`` (long indices, in that order, or a bool mask of
    the dimension's length) along ``dim``."""
    index = torch.as_tensor(index)
    if index.dim() != 1 or not (index.dtype == torch.bool or not (index.is_floating_point() or index.is_complex())):
        raise ValueError(f"index must be a 1-d bool mask or integer tensor, got {index.dtype} {tuple(index.shape)}")

    def remap(v: Tensor) -> Tensor:
        idx = index
        if idx.dtype == torch.bool:
            if idx.numel() != v.shape[dim]:
                raise ValueError(f"mask of length {idx.numel()} for a dimension of size {v.shape[dim]}")
            idx = idx.nonzero().squeeze(1)
        return v.index_select(dim, idx.to(device=v.device, dtype=torch.long))

    return remap


def append_rows(count: int, fill: float = 0, dim: int = 0) -> Remap:
    """Remap appending ``count`` entries filled with ``fill`` along ``dim``."""
    count = check_int(count, "count", 0)

    def remap(v: Tensor) -> Tensor:
        shape = list(v.shape)
        shape[dim] = count
        return torch.cat([v, v.new_full(shape, fill)], dim)

    return remap


def _as_list(optimizers: Any) -> List[Any]:
    """A single optimizer (anything with ``param_groups``), an iterable of them, or ``None``."""
    if optimizers is None:
        return []
    return [optimizers] if hasattr(optimizers, "param_groups") else list(optimizers)


def _slot(optimizer: Any, param: Tensor) -> Optional[Tuple[Dict[str, Any], int]]:
    for group in optimizer.param_groups:
        for i, p in enumerate(group["params"]):
            if p is param:
                return group, i
    return None


def _new_state(optimizer: Any, old: Tensor, new: Tensor, remap: Optional[Remap]) -> Optional[Dict[str, Any]]:
    """The state ``new`` takes over from ``old`` (``None``: none, or reset), or ``ValueError``."""
    state = optimizer.state.get(old)
    if not state:
        return None
    if remap is None:
        return dict(state) if old.shape == new.shape else None  # unchanged, or reset
    out: Dict[str, Any] = {}
    for key, v in state.items():
        if key == "step" or not isinstance(v, Tensor) or (v.dim() == 0 and old.dim() != 0):
            out[key] = v
        elif v.shape != old.shape:
            warnings.warn(f"optimizer state {key!r} of shape {tuple(v.shape)} is not shaped like the parameter "
                          f"{tuple(old.shape)} and cannot be remapped; the parameter's state is reset", stacklevel=4)
            return None
        else:
            r = remap(v)
            if not isinstance(r, Tensor) or r.shape != new.shape:
                got = tuple(r.shape) if isinstance(r, Tensor) else type(r).__name__
                raise ValueError(f"remap of optimizer state {key!r} gave {got}, expected the new parameter's shape "
                                 f"{tuple(new.shape)}")
            out[key] = r
    return out


def _plan(optimizers: Iterable[Any], old: Tensor, new: Tensor, remap: Optional[Remap]):
    """``(optimizer, group, slot, state)`` for every optimizer holding ``old``."""
    plan = []
    for opt in optimizers:
        slot = _slot(opt, old)
        if slot is not None:
            plan.append((opt, *slot, _new_state(opt, old, new, remap)))
    return plan


def _commit(plan, old: Tensor, new: Tensor) -> None:
    for opt, group, i, state in plan:
        opt.state.pop(old, None)
        group["params"][i] = new
        if state is not None:
            opt.state[new] = state


@torch.no_grad()
def rebind_optimizer(optimizer: Any, old_param: Tensor, new_param: Tensor, remap: Optional[Remap] = None) -> bool:
    """Put ``new_param`` into the ``param_groups`` slot of ``old_param`` and move its state
    (see the module docstring), for callers that installed ``new_param`` themselves.

    Returns whether ``optimizer`` held ``old_param`` (if not, nothing changes).
    """
    if new_param is old_param:
        raise ValueError("new_param is old_param; nothing to rebind")
    if not isinstance(new_param, Tensor) or not new_param.is_leaf:
        raise ValueError("new_param must be a leaf tensor (an nn.Parameter)")
    plan = _plan([optimizer], old_param, new_param, remap)
    _commit(plan, old_param, new_param)
    return bool(plan)


@torch.no_grad()
def replace_parameter(owner: nn.Module, name: str, new: Union[Tensor, nn.Parameter], optimizers: Any = (),
                      remap: Optional[Remap] = None) -> nn.Parameter:
    """Install ``new`` as the parameter ``owner.<name>`` and rebind ``optimizers``.

    ``name`` is as in ``named_parameters()``: dotted, with list indices (``"tables.3"``,
    ``"layers.0.weight"``). A plain tensor is wrapped (detached) into an ``nn.Parameter``; an
    ``nn.Parameter`` is installed as it is. Either way the new parameter takes the old one's
    ``requires_grad``. ``optimizers``: one optimizer or several; those not holding the old
    parameter are left alone. Returns the new parameter.
    """
    prefix, _, leaf = name.rpartition(".")
    try:
        parent = owner.get_submodule(prefix) if prefix else owner
    except AttributeError as err:
        raise ValueError(f"{type(owner).__name__} has no parameter {name!r}") from err
    old = parent._parameters.get(leaf)
    if old is None:
        raise ValueError(f"{type(owner).__name__} has no parameter {name!r}")
    if not isinstance(new, Tensor) or new is old:
        raise ValueError(f"new value of {name!r} must be a tensor other than the current parameter")
    param = new if isinstance(new, nn.Parameter) else nn.Parameter(new.detach(), requires_grad=False)
    plan = _plan(_as_list(optimizers), old, param, remap)
    param.requires_grad_(old.requires_grad)
    setattr(parent, leaf, param)
    _commit(plan, old, param)
    return param
