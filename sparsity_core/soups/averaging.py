"""Soups of sparse models that share one mask: uniform and greedy averaging.

Sparse Model Soups (Zimmer, Spiegel & Pokutta, ICLR 2024, "Sparse Model Soups: A Recipe for
Improved Pruning via Model Averaging") average models retrained from one pruned model with
one mask. For ingredients ``θ_1 .. θ_m`` that share the mask ``M``:

- uniform soup: ``θ = (1/m) Σ_i θ_i``; every θ_i is zero outside ``M``, so θ is too: the
  soup has the ingredients' sparsity;
- greedy soup (Wortsman et al., 2022, "Model soups"): order the ingredients by held-out
  accuracy ``a(θ_i)`` (best first), start from the best and add the next one to the average
  only if the held-out accuracy of the new average does not drop:
  ``S ← S ∪ {i}  iff  a(mean(S ∪ {i})) ≥ a(mean(S))``.

Masks are never averaged: ingredients with different masks are refused (``ValueError``),
since averaging them would produce a denser model. Integer buffers (BatchNorm's
``num_batches_tracked``) are taken from the first ingredient; running statistics are
averaged like weights and should be recalibrated afterwards
(:func:`~sparsity_core.soups.batchnorm.recalibrate_batchnorm`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

State = Dict[str, torch.Tensor]


@dataclass
class Ingredient:
    """One retrained model: its ``state`` (a model ``state_dict``), the ``masks`` it was trained
    with (``{target name: bool mask}``, True = kept), the ``config`` that made it (seed, weight
    decay, schedule...) and its held-out ``score`` once measured."""

    state: State
    masks: Dict[str, torch.Tensor]
    config: Dict[str, Any] = field(default_factory=dict)
    score: Optional[float] = None


def check_shared_masks(ingredients: Sequence[Ingredient]) -> None:
    """Raise ``ValueError`` unless every ingredient has the first one's masks and state layout."""
    if not ingredients:
        raise ValueError("a soup needs at least one ingredient")
    first = ingredients[0]
    for i, ing in enumerate(ingredients[1:], start=1):
        if set(ing.masks) != set(first.masks):
            raise ValueError(f"soups never average masks: ingredient {i} masks targets {sorted(ing.masks)}, "
                             f"ingredient 0 masks {sorted(first.masks)}")
        for name, mask in first.masks.items():
            other = ing.masks[name]
            if other.shape != mask.shape or not torch.equal(other.bool().cpu(), mask.bool().cpu()):
                diff = int((other.bool().cpu() != mask.bool().cpu()).sum()) if other.shape == mask.shape else "all"
                raise ValueError(f"soups never average masks: ingredient {i}'s mask for {name!r} differs from "
                                 f"ingredient 0's ({diff} units); retrain every ingredient with the same mask")
        if set(ing.state) != set(first.state):
            raise ValueError(f"ingredient {i} has state keys {sorted(set(ing.state) ^ set(first.state))[:5]} "
                             "that ingredient 0 lacks (or the reverse): not the same model")
        for key, value in first.state.items():
            if ing.state[key].shape != value.shape:
                raise ValueError(f"ingredient {i}: {key!r} has shape {tuple(ing.state[key].shape)}, "
                                 f"ingredient 0 has {tuple(value.shape)}")


def average_states(ingredients: Sequence[Ingredient], weights: Optional[Sequence[float]] = None) -> State:
    """The weighted average ``Σ_i w_i θ_i / Σ_i w_i`` of the ingredients' floating-point
    tensors (uniform without ``weights``); other tensors are the first ingredient's. The
    shared mask is checked first and kept: entries pruned in every ingredient stay zero."""
    check_shared_masks(ingredients)
    if weights is None:
        weights = [1.0] * len(ingredients)
    if len(weights) != len(ingredients) or any(not (w >= 0) for w in weights) or sum(weights) <= 0:
        raise ValueError(f"weights must be {len(ingredients)} numbers >= 0 with a positive sum, got {list(weights)}")
    total = float(sum(weights))
    out: State = {}
    for key, value in ingredients[0].state.items():
        if not torch.is_floating_point(value):
            out[key] = value.detach().clone()
            continue
        acc = torch.zeros_like(value, dtype=torch.float64)
        for w, ing in zip(weights, ingredients):
            if w:
                acc.add_(ing.state[key].detach().to(torch.float64), alpha=float(w) / total)
        out[key] = acc.to(value.dtype)
    for ing in ingredients:  # an ingredient trained outside its mask would leak density into the soup
        for name, mask in ing.masks.items():
            if name in out and mask.shape == out[name].shape and bool((out[name].cpu()[~mask.bool().cpu()] != 0).any()):
                raise ValueError(f"ingredient weights {name!r} are nonzero outside the shared mask; train every "
                                 "ingredient under its mask (hard enforcement) before making a soup")
    return out


def uniform_soup(ingredients: Sequence[Ingredient]) -> State:
    """``(1/m) Σ_i θ_i`` over ingredients that share one mask."""
    return average_states(ingredients)


Evaluate = Callable[[nn.Module], float]


def score_state(model: nn.Module, state: Mapping[str, torch.Tensor], evaluate: Evaluate,
                prepare: Optional[Callable[[nn.Module], None]] = None) -> float:
    """Load ``state`` into ``model``, run ``prepare(model)`` (BatchNorm recalibration) and
    return ``evaluate(model)`` (held-out accuracy; higher is better)."""
    model.load_state_dict(state)
    if prepare is not None:
        prepare(model)
    return float(evaluate(model))


def greedy_soup(model: nn.Module, ingredients: Sequence[Ingredient], evaluate: Evaluate,
                prepare: Optional[Callable[[nn.Module], None]] = None) -> Tuple[State, List[int], float]:
    """The greedy soup of ``ingredients`` (see the module doc), scored by ``evaluate`` on held-out data.

    Ingredients without a ``score`` are scored as they are (their own BatchNorm statistics);
    each candidate average is scored after ``prepare`` (BatchNorm recalibration). Returns the
    soup's state (after ``prepare``), the indices of the chosen ingredients in the order they
    were added, and the soup's held-out score. ``model`` holds the soup on return.
    """
    check_shared_masks(ingredients)
    for ing in ingredients:
        if ing.score is None:
            ing.score = score_state(model, ing.state, evaluate)
    order = sorted(range(len(ingredients)), key=lambda i: (-float(ingredients[i].score), i))
    chosen = [order[0]]
    best_state = {k: v.clone() for k, v in ingredients[order[0]].state.items()}
    best = float(ingredients[order[0]].score)
    for i in order[1:]:
        candidate = average_states([ingredients[j] for j in chosen + [i]])
        score = score_state(model, candidate, evaluate, prepare)
        if score >= best:
            chosen.append(i)
            best = score
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    return best_state, chosen, best
