"""Concrete Ticket Search: learn a mask at (or near) initialization by gradient descent on
the logits of a concrete relaxation.

Arora & Teuscher, 2025, "Winning the Lottery by Preserving Network Training Dynamics with
Concrete Ticket Search" (arXiv:2512.07142). The weights ``θ`` stay fixed (the lottery
ticket's initialization); only the logits ``s`` of the mask are learned::

    min_s  E_x E_u [ R(f(x; m̃(s, u) ⊙ θ), f(x; θ)) ]   subject to  ρ(s) = κ

- ``m̃`` is a Binary Concrete sample (:func:`~sparsity_core.tickets.concrete.binary_concrete`),
  optionally hard concrete;
- ``R`` is, by default (CTS-KL), the reverse Kullback–Leibler divergence from the sparse
  network's output distribution ``q = softmax(f(x; m̃ ⊙ θ))`` to the dense network's
  ``p = softmax(f(x; θ))``: ``KL(q ‖ p) = Σ_c q_c (log q_c − log p_c)``, averaged over the
  batch; ``"task"`` uses the cross-entropy with the labels instead;
- the density ``ρ(s)`` (expected fraction of units kept) is steered to ``κ = 1 − sparsity``
  by :class:`~sparsity_core.tickets.gradbalance.GradBalance`; the logits are updated with Adam.

The result is a :class:`~sparsity_core.tickets.concrete.ConcreteScores` criterion: the core's
allocator then keeps the units with the largest logits at exactly the requested sparsity
(``one_shot_prune(model, targets, None, sparsity, criterion=scores)``, or the ``"cts"``
program). The model is not changed: both networks run through ``torch.func.functional_call``
with copies of the buffers, in training mode (BatchNorm on batch statistics).
"""
from __future__ import annotations

import math
from typing import Any, Dict, Iterable, Iterator, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from ..targets import Target
from ..validation import check_int, check_positive, check_range, check_sparsity
from .concrete import ConcreteScores, binary_concrete, check_stretch, expected_density
from .gradbalance import GradBalance

OBJECTIVES = ("reverse_kl", "task")


def reverse_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """``mean_batch KL(q ‖ p)`` with ``q = softmax(student)``, ``p = softmax(teacher)``."""
    log_q = F.log_softmax(student_logits, dim=-1)
    log_p = F.log_softmax(teacher_logits, dim=-1)
    return (log_q.exp() * (log_q - log_p)).sum(-1).mean()


def _inputs(batch: Any) -> Tuple[Any, Any]:
    """``(inputs, labels)`` of an (inputs, labels) batch, ``(batch, None)`` otherwise."""
    if isinstance(batch, (tuple, list)):
        return batch[0], (batch[1] if len(batch) > 1 else None)
    return batch, None


def _cycle(batches: Iterable) -> Iterator[Any]:
    while True:
        empty = True
        for b in batches:
            empty = False
            yield b
        if empty:
            raise ValueError("concrete_ticket_search got no batches")


def _check(model: nn.Module, targets: Sequence[Target], objective: str) -> None:
    if not targets:
        raise ValueError("concrete_ticket_search needs at least one target")
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}; got {objective!r}")
    names = {id(p): n for n, p in model.named_parameters()}
    for t in targets:
        if t.param is None or id(t.param) not in names:
            raise ValueError(f"target {t.name!r} is not a parameter of the model; CTS masks model weights")


def concrete_ticket_search(model: nn.Module, targets: Sequence[Target], batches: Iterable, sparsity: float,
                           steps: int = 200, lr: float = 0.1, temperature: float = 2 / 3,
                           objective: str = "reverse_kl", balance: Optional[GradBalance] = None,
                           init_density: Optional[float] = 0.5, stretch: Optional[Tuple[float, float]] = None,
                           measure: str = "units", seed: int = 0) -> ConcreteScores:
    """Learn mask logits for ``targets`` of ``model`` (see the module doc); returns the scores.

    Args:
        batches: re-iterable training batches (``(inputs, labels)`` tuples or inputs), cycled
            for ``steps`` steps; labels are needed only by ``objective="task"``.
        sparsity: target fraction of units removed (``κ = 1 − sparsity``).
        lr: Adam learning rate of the logits; temperature: the concrete temperature ``τ``.
        init_density: initial retention probability ``σ(s_i)`` of every unit; 0.5 (default)
            starts where ``σ'`` and so the objective's gradient is largest, GradBalance then
            brings the density to ``κ``; ``None`` starts at ``κ``.
        stretch: ``(γ, ζ)`` for hard concrete samples (e.g. ``(-0.1, 1.1)``); ``None``: concrete.
        measure: ``"units"`` or ``"params"``: what the density counts.
        seed: seed of the concrete noise.
    """
    sparsity = check_sparsity(sparsity)
    steps = check_int(steps, "steps", 1)
    lr, temperature = check_positive(lr, "lr"), check_positive(temperature, "temperature")
    if measure not in ("units", "params"):
        raise ValueError(f"measure must be 'units' or 'params'; got {measure!r}")
    stretch = check_stretch(stretch)
    _check(model, targets, objective)
    kappa = 1.0 - sparsity
    p0 = kappa if init_density is None else check_range(init_density, "init_density", 0, 1, True, True)
    p0 = min(max(p0, 1e-4), 1 - 1e-4)
    balance = balance or GradBalance()
    fqn = {id(p): n for n, p in model.named_parameters()}
    device = targets[0].param.device
    logits = {t.name: torch.full(t.mask_shape, math.log(p0 / (1 - p0)), device=device, requires_grad=True)
              for t in targets}
    weights = {t.name: (1.0 if measure == "units" else float(t.params_per_unit)) for t in targets}
    optimizer = torch.optim.Adam(list(logits.values()), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    params = {n: p.detach() for n, p in model.named_parameters()}
    was_training = model.training
    model.train()
    try:
        stream = _cycle(batches)
        for _ in range(steps):
            x, y = _inputs(next(stream))
            x = x.to(device) if isinstance(x, torch.Tensor) else x
            buffers = {n: b.clone() for n, b in model.named_buffers()}
            with torch.no_grad():
                dense = functional_call(model, {**params, **buffers}, (x,))
            masked = {fqn[id(t.param)]: params[fqn[id(t.param)]] * t.expand_mask(
                binary_concrete(logits[t.name], temperature, generator, stretch)) for t in targets}
            buffers = {n: b.clone() for n, b in model.named_buffers()}
            out = functional_call(model, {**params, **masked, **buffers}, (x,))
            if objective == "reverse_kl":
                loss = reverse_kl(out, dense)
            else:
                if y is None:
                    raise ValueError("objective='task' needs (inputs, labels) batches")
                loss = F.cross_entropy(out, y.to(out.device))
            grads = torch.autograd.grad(loss, list(logits.values()))
            rho = expected_density(logits, weights)
            density_grads = torch.autograd.grad(rho, list(logits.values()))
            combined = balance.combine(grads, density_grads, float(rho.detach()), kappa)
            for s, g in zip(logits.values(), combined):
                s.grad = g
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    finally:
        model.train(was_training)
    return ConcreteScores({k: v.detach() for k, v in logits.items()})


def search_report(scores: ConcreteScores, sparsity: float) -> Dict[str, float]:
    """Expected density of the learned relaxation vs the target density (for logs and tests)."""
    rho = float(expected_density(scores.logits))
    return {"expected_density": rho, "target_density": 1.0 - sparsity}
