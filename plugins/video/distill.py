"""Distilling learned block gates (:mod:`.gates`) from a frozen video transformer, through Lightning.

:class:`GateDistillation` is a ``LightningModule`` holding the frozen transformer and a learned
method (:class:`~.gates.SeerAttention`, :class:`~.gates.TrainableDynamicMask`). Each
``training_step`` runs the transformer on a batch of forward keyword arguments with
:func:`.processors.install` in observer mode: every self-attention call of layer ``l`` computes
the dense block target ``t_l`` from its q / k (no grad) and the gate's prediction ``p_l`` (with
grad), and returns ``None`` so the layer runs dense (the model's forward is the dense one).
The step's loss is the mean over the observed calls of ``KL(t_l ‖ p_l)`` (averaged over batch,
heads and query blocks); only the gates' parameters are optimised, the transformer is frozen
(``requires_grad_(False)``, kept in eval mode, run under ``no_grad``). The processors are
installed for one step and removed after it. The module's ``state_dict`` is the gates' state
dict (what a checkpoint holds; the transformer's weights are not copied into it).

Calibration data: :func:`calibration_inputs` builds forward kwargs with :func:`.tiny.tiny_inputs`
over seeds × timesteps (or any list of kwargs dicts); :func:`calibration_loader` wraps them in a
``DataLoader`` whose :func:`collate_kwargs` keeps the dict (tensors concatenated along the
batch axis, other values taken from the first item).
"""
from __future__ import annotations

from typing import Any, Dict, Iterable, List, Optional, Sequence

import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from sparsity_core.validation import check_int, check_range

from .gates import LearnedGates
from .processors import install

Kwargs = Dict[str, Any]


def calibration_inputs(model: nn.Module, seeds: Iterable[int] = range(4),
                       timesteps: Sequence[float] = (900.0, 500.0, 100.0), **kw: Any) -> List[Kwargs]:
    """Forward kwargs of :func:`.tiny.tiny_inputs` for every seed × timestep (``kw``: its sizes)."""
    from .tiny import tiny_inputs
    return [tiny_inputs(model, seed=s, timestep=float(t), **kw) for s in seeds for t in timesteps]


class CalibrationInputs(Dataset):
    """A list of forward-kwargs dicts as a map-style dataset."""

    def __init__(self, inputs: Sequence[Kwargs]) -> None:
        if not inputs or not all(isinstance(x, dict) for x in inputs):
            raise ValueError("inputs must be a non-empty sequence of forward-kwargs dicts")
        self.inputs = list(inputs)

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, i: int) -> Kwargs:
        return self.inputs[i]


def collate_kwargs(items: Sequence[Kwargs]) -> Kwargs:
    """One forward-kwargs dict from several: tensors concatenated along dim 0, the rest from the first."""
    first = items[0]
    if len(items) == 1:
        return dict(first)
    return {key: torch.cat([x[key] for x in items], 0) if isinstance(value, Tensor) and value.dim() else value
            for key, value in first.items()}


def calibration_loader(inputs: Sequence[Kwargs], batch_size: int = 1) -> DataLoader:
    """A ``DataLoader`` over forward-kwargs dicts, in order, collated by :func:`collate_kwargs`."""
    check_int(batch_size, "batch_size", minimum=1)
    return DataLoader(CalibrationInputs(inputs), batch_size=batch_size, shuffle=False, collate_fn=collate_kwargs)


class GateDistillation(pl.LightningModule):
    """Train ``method``'s gates on ``transformer``'s dense attention (see the module).

    Args:
        transformer: a supported diffusers video transformer (frozen here).
        method: a :class:`~.gates.LearnedGates` method built for it (layers, heads).
        block_size: tokens per attention block.
        lr: Adam learning rate of the gates.
    """

    def __init__(self, transformer: nn.Module, method: LearnedGates, block_size: int = 16, lr: float = 1e-2) -> None:
        super().__init__()
        if not isinstance(method, LearnedGates):
            raise ValueError(f"method must be a learned-gates method (SeerAttention, TrainableDynamicMask), "
                             f"got {type(method).__name__}")
        check_int(block_size, "block_size", minimum=1)
        check_range(lr, "lr", 0.0, float("inf"), low_open=True)
        method.check_model(transformer)
        self.transformer = transformer.requires_grad_(False).eval()
        self.gates = method.gates
        self.method, self.block_size, self.lr = method, int(block_size), float(lr)
        self.losses: List[float] = []  # the loss of every training step, in order

    def train(self, mode: bool = True) -> "GateDistillation":
        super().train(mode)
        self.transformer.eval()
        return self

    def distill_loss(self, batch: Kwargs) -> Tensor:
        """Mean over the observed self-attention calls of the gates' KL loss on ``batch``."""
        losses: List[Tensor] = []

        def observe(layer: int, q: Tensor, k: Tensor, v: Tensor, scale: Optional[float]) -> None:
            with torch.enable_grad():
                losses.append(self.method.distill_loss(layer, q, k, v, scale, self.block_size))
            return None

        session = install(self.transformer, block_size=self.block_size)
        session.observer = observe
        try:
            with torch.no_grad():
                self.transformer(**batch)
        finally:
            session.uninstall()
        if not losses:
            raise ValueError("no self-attention call was observed; check the forward kwargs and block_size")
        return torch.stack(losses).mean()

    def training_step(self, batch: Kwargs, batch_idx: int) -> Tensor:
        loss = self.distill_loss(batch)
        self.losses.append(float(loss.detach()))
        self.log("distill_loss", loss.detach(), on_step=True, batch_size=1)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.gates.parameters(), lr=self.lr)

    # checkpoints hold the gates only
    def state_dict(self, *args: Any, **kwargs: Any) -> Dict[str, Any]:
        return self.gates.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict: Dict[str, Any], strict: bool = True, assign: bool = False) -> Any:
        return self.gates.load_state_dict(state_dict, strict=strict, assign=assign)
