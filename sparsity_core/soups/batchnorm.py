"""BatchNorm recalibration: fresh running statistics for an averaged model.

The running mean and variance of an average of models are not the statistics of the
average's activations (Zimmer et al., 2024, Sparse Model Soups, §3; Izmailov et al., 2018,
SWA). Recalibration resets them and recomputes them over ``batches`` with the cumulative
average (``momentum=None``)::

    μ = (1/B) Σ_b mean_b(x),   σ² = (1/B) Σ_b var_b(x)   (B batches, per channel)

with the model in training mode under ``torch.no_grad()``. Only the running statistics
(``running_mean``, ``running_var``, ``num_batches_tracked``) change: parameters, the other
buffers, the momentum and every module's train/eval flag are as before.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, List, Optional

import torch
from torch import nn

Forward = Callable[[nn.Module, Any], Any]


def _default_forward(model: nn.Module, batch: Any) -> Any:
    """``model(x)`` with ``x = batch[0]`` for a (inputs, labels) tuple, else ``model(batch)``."""
    return model(batch[0] if isinstance(batch, (tuple, list)) else batch)


def batchnorm_layers(model: nn.Module) -> List[nn.modules.batchnorm._BatchNorm]:
    """BatchNorm modules of ``model`` that keep running statistics."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batches: Iterable, forward: Optional[Forward] = None) -> int:
    """Recompute the running statistics of every BatchNorm of ``model`` over ``batches``.

    Returns the number of batches seen (0 and nothing changed when the model has no
    BatchNorm). ``forward(model, batch)`` runs one batch (default: ``model(batch[0])`` for a
    tuple, else ``model(batch)``). An empty ``batches`` is an error, before any change.
    """
    layers = batchnorm_layers(model)
    if not layers:
        return 0
    forward = forward or _default_forward
    batches = list(batches) if not isinstance(batches, list) else batches
    if not batches:
        raise ValueError("recalibrate_batchnorm needs at least one batch")
    modes = {m: m.training for m in model.modules()}
    momenta = {m: m.momentum for m in layers}
    saved = [{k: v.clone() for k, v in m.state_dict().items()} for m in layers]
    try:
        for m in layers:
            m.reset_running_stats()
            m.momentum = None  # cumulative moving average over the batches
        model.train()
        for batch in batches:
            forward(model, batch)
    except Exception:  # a failed recalibration leaves the statistics as they were
        for m, state in zip(layers, saved):
            m.load_state_dict(state)
        raise
    finally:
        for m, momentum in momenta.items():
            m.momentum = momentum
        for m, mode in modes.items():
            m.training = mode
    return len(batches)
