"""Evaluation helpers: a plain denoising loop, output errors, and built-in locality.

* :func:`denoise` runs a flow-matching Euler loop (diffusers' ``FlowMatchEulerDiscreteScheduler``,
  the scheduler of Wan and HunyuanVideo) straight on a transformer, calling
  ``on_step(i)`` after each step (the denoising clock of :class:`~.search.PatternSearch`).
* :func:`relative_l2` ``‖x − y‖₂ / ‖y‖₂`` and :func:`psnr` ``10·log10(range² / MSE)`` of a
  final latent against the dense run (The Sparse Frontier, Nawrot et al., 2025, reports
  end-to-end error next to density).
* :func:`add_rope_locality`: random-init attention has no spatio-temporal structure, so a
  search has nothing to find. With rotary embeddings, a query and key that share a constant
  component ``c`` score ``Σ_f |c_f|² cos(θ_f Δ)``, a kernel peaked at ``Δ = 0`` along the
  axes whose rotary bands hold ``c``'s energy. Adding such a ``c`` to the query and key
  biases of a head makes it local: in every axis (a 3D window), in time only (the whole
  frame: a diagonal head) or in space only (the same position in every frame: a
  multi-diagonal head), the head shapes Sparse-vDiT reports in trained video DiTs.
  Results on such models are labelled *structured*, on plain random-init models *random*.
  Heads of width 64 or more give clean locality; narrow heads have too few rotary
  frequencies between ``min_theta`` and 1, and the kernel has periodic side lobes.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, Optional, Sequence

import torch
from torch import Tensor, nn

from .models import attention_layers, num_heads

#: head kinds of :func:`add_rope_locality` -> the rotary axes (t, h, w) holding the shared component
LOCALITY = {"window": (0, 1, 2), "frame": (0,), "temporal": (1, 2)}


def denoise(model: nn.Module, inputs: Dict[str, object], steps: int,
            on_step: Optional[Callable[[int], None]] = None, seed: int = 0) -> Tensor:
    """The final latent of ``steps`` Euler flow-matching steps from seeded noise shaped like
    ``inputs['hidden_states']`` (the other inputs are passed to every call)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    scheduler.set_timesteps(steps)
    x = inputs["hidden_states"]
    latents = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        for i, t in enumerate(scheduler.timesteps):
            call = dict(inputs, hidden_states=latents, timestep=t.expand(latents.shape[0]), return_dict=False)
            pred = model(**call)[0]
            latents = scheduler.step(pred, t, latents, return_dict=False)[0]
            if on_step is not None:
                on_step(i + 1)
    return latents


def relative_l2(x: Tensor, reference: Tensor) -> float:
    return float((x - reference).double().norm() / reference.double().norm().clamp_min(1e-30))


def psnr(x: Tensor, reference: Tensor) -> float:
    mse = float((x - reference).double().pow(2).mean())
    peak = float(reference.double().max() - reference.double().min())
    return math.inf if mse == 0 else 10 * math.log10(peak ** 2 / mse)


def _rope_pairs(head_dim: int, axis: int, min_theta: float, theta: float = 10000.0) -> list:
    """Channels of the rotary pairs of ``axis`` (Wan's split of a head into t, h, w bands,
    pair ``i`` of a band of width ``n`` rotating at ``θ_i = theta^(−2i/n)``) with ``θ_i ≥ min_theta``."""
    h = w = 2 * (head_dim // 6)
    widths = (head_dim - h - w, h, w)
    start = sum(widths[:axis])
    n = widths[axis]
    return [start + c for i in range(n // 2) if theta ** (-2 * i / n) >= min_theta for c in (2 * i, 2 * i + 1)]


@torch.no_grad()
def add_rope_locality(model: nn.Module, kinds: Sequence[str], sharpness: float = 3.0, min_theta: float = 0.1,
                      seed: int = 0) -> None:
    """Give every self-attention head of a Wan model a local shape (see the module): head
    ``h`` gets kind ``kinds[h % len(kinds)]`` of :data:`LOCALITY`; its query/key biases get a
    shared component on the rotary pairs of that kind's axes turning at ``θ ≥ min_theta``
    (fast enough to decorrelate within a few positions), large enough to dominate after the
    q/k RMS norm, and the norm weights of the head are scaled by ``sharpness`` (logits by its
    square) so the kernel's peak at ``Δ = 0`` dominates the softmax."""
    unknown = sorted(set(kinds) - set(LOCALITY))
    if unknown or not kinds:
        raise ValueError(f"unknown locality kinds {unknown}; valid: {sorted(LOCALITY)}")
    if type(model).__name__ != "WanTransformer3DModel":
        raise ValueError(f"add_rope_locality follows Wan's rotary layout; got {type(model).__name__}")
    g = torch.Generator().manual_seed(seed)
    heads = num_heads(model)
    for layer in attention_layers(model):
        d = layer.to_q.out_features // heads
        for h in range(heads):
            channels = [c for axis in LOCALITY[kinds[h % len(kinds)]] for c in _rope_pairs(d, axis, min_theta)]
            c = torch.zeros(d)
            c[channels] = torch.randn(len(channels), generator=g).abs() + 1.0
            c *= 10.0 * math.sqrt(d) / c.norm()
            sl = slice(h * d, (h + 1) * d)
            for proj, norm in ((layer.to_q, layer.norm_q), (layer.to_k, layer.norm_k)):
                proj.bias[sl] += c
                norm.weight[sl] *= sharpness
