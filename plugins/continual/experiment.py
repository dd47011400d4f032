"""One continual run from a plain configuration: the protocol the recipe and the benchmark
share (a stream, a rehearsal method, optionally SparCL's parts, one ``Trainer`` per task).

    result = run_experiment(stream, ExperimentConfig(method="derpp", sparsity=0.9))
    result["average_accuracy"], result["macs"], result["matrix"]

``sparsity=None`` trains dense. With a sparsity, SparCL is TDM (+ DGM unless
``gradient_keep=None``, + DDR unless ``ddr_fraction=None``) and task-aware logit masking. The
update cadences are in epochs of the task's full training set (SparCL: TDM every 5 epochs,
DDR every 5 epochs until epoch 20) and converted to optimizer steps here.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any, Dict, Optional, Sequence

import pytorch_lightning as pl
import torch
from torch import nn

from sparsity_core.lightning import SparsityCallback
from sparsity_core.validation import check_int, check_sparsity

from .ddr import DynamicDataRemoval
from .evaluation import StreamEvaluation
from .flops import TrainingFlops
from .module import ContinualModule, mlp
from .stream import run_stream
from .tdm import TaskAwareDynamicMasks


@dataclass
class ExperimentConfig:
    """Args:
        method: ``"none"``, ``"er"`` or ``"derpp"``; ``buffer_size``, ``alpha``, ``beta``, ``lr``.
        epochs: epochs per task. ``hidden``: the MLP's hidden widths; ``norm``: LayerNorm after them.
        sparsity: SparCL's weight sparsity (``None``: dense); ``prune_sparsity`` its lower
            density bound (default: a tenth of the kept weights move per update).
        tdm_every: epochs between TDM updates (may be fractional); ``lam``: λ of |w| + λ|g|;
            ``regrow``: TDM's regrowth, ``"random"`` (SparCL) or ``"gradient"``; ``allocator``: how
            the sparsity splits over layers (a registered allocator name, e.g. ``"uniform"``, ``"erk"``).
        gradient_keep, gradient_every: DGM (``None``: off); its refresh interval in steps.
        ddr_fraction, ddr_every, ddr_rounds: DDR (``None``: off); the interval in epochs.
        task_aware: task-aware logit masking (default: on with SparCL).
        seed: seed of the weights, the buffer and the data order.
    """

    method: str = "derpp"
    buffer_size: int = 200
    alpha: float = 0.1
    beta: float = 0.5
    lr: float = 0.03
    epochs: int = 1
    hidden: Sequence[int] = (100, 100)
    norm: bool = False
    sparsity: Optional[float] = None
    prune_sparsity: Optional[float] = None
    tdm_every: float = 0.5
    lam: float = 0.5
    regrow: str = "random"
    allocator: str = "uniform"
    gradient_keep: Optional[float] = 0.2
    gradient_every: int = 30
    ddr_fraction: Optional[float] = 0.3
    ddr_every: float = 0.5
    ddr_rounds: int = 2
    task_aware: Optional[bool] = None
    seed: int = 0

    def __post_init__(self) -> None:
        check_int(self.epochs, "epochs", 1)
        if self.sparsity is not None:
            check_sparsity(self.sparsity, "sparsity")
        for name in ("tdm_every", "ddr_every"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0 epochs, got {getattr(self, name)!r}")


def _steps(epochs: float, stream: Any) -> int:
    smallest = min(range(stream.num_tasks), key=stream.train_size)
    return max(1, int(round(epochs * stream.batches_per_epoch(smallest))))


def build(stream: Any, cfg: ExperimentConfig, input_shape: Sequence[int], net: Optional[nn.Module] = None):
    """The module and the callbacks of one run (nothing trained yet)."""
    torch.manual_seed(cfg.seed)
    if net is None:
        net = mlp(int(torch.Size(input_shape).numel()), cfg.hidden, stream.num_classes, cfg.norm)
    sparse = cfg.sparsity is not None
    task_aware = sparse if cfg.task_aware is None else cfg.task_aware
    module = ContinualModule(net, stream.num_classes, input_shape, method=cfg.method, buffer_size=cfg.buffer_size,
                             alpha=cfg.alpha, beta=cfg.beta, lr=cfg.lr, task_aware=task_aware, seed=cfg.seed)
    callbacks: list = []
    sources: list = []
    if sparse:
        programs: list = [TaskAwareDynamicMasks(sparsity=cfg.sparsity, prune_sparsity=cfg.prune_sparsity,
                                                every=_steps(cfg.tdm_every, stream), lam=cfg.lam,
                                                gradient_keep=cfg.gradient_keep, gradient_every=cfg.gradient_every,
                                                regrow=cfg.regrow, allocator=cfg.allocator)]
        sources.append(programs[0])
        if cfg.ddr_fraction is not None:
            programs.append(DynamicDataRemoval(cfg.ddr_fraction, every=_steps(cfg.ddr_every, stream),
                                               rounds=cfg.ddr_rounds))
        callbacks.append(SparsityCallback(programs=programs, log_per_target=False))
    callbacks += [TrainingFlops(sources), StreamEvaluation()]
    return module, callbacks


def run_experiment(stream: Any, cfg: ExperimentConfig, input_shape: Sequence[int] = (1, 28, 28),
                   trainer_kwargs: Optional[Dict[str, Any]] = None,
                   net: Optional[nn.Module] = None) -> Dict[str, Any]:
    """Train on every task of ``stream`` (from task 0) and return the metrics and counts."""
    stream.set_task(0)
    stream.seed = cfg.seed
    stream.example_filter = None
    module, callbacks = build(stream, cfg, input_shape, net)
    kwargs = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                  enable_model_summary=False, num_sanity_val_steps=0)
    kwargs.update(trainer_kwargs or {})

    def make() -> pl.Trainer:
        return pl.Trainer(max_epochs=cfg.epochs, callbacks=callbacks, **kwargs)

    start = time.perf_counter()
    run_stream(module, stream, make)
    flops, evaluation = callbacks[-2], callbacks[-1]
    matrix = evaluation.matrix(stream.scenario)
    return {"config": asdict(cfg), "matrix": matrix.rows, "matrix_text": matrix.format(), **matrix.summary(),
            "task_il": evaluation.task_il.summary()["average_accuracy"], "macs": flops.total(),
            "dense_macs_same_examples": flops.total(dense=True), "examples": sum(flops.examples.values()),
            "per_task_macs": [flops.sparse[k] for k in sorted(flops.sparse)], "seconds": time.perf_counter() - start}
