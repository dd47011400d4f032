"""What a run function gets: its grid point, its folder, and helpers for one Lightning fit.

Each run has its own folder (``<output>/runs/<run id>/``); checkpoints go to its
``checkpoints/`` through :meth:`RunContext.model_checkpoint` (Lightning's ``ModelCheckpoint``
with ``save_last=True``), and ``trainer.fit(..., ckpt_path=ctx.ckpt_path)`` resumes an
interrupted run from its last checkpoint (``ckpt_path="last"`` when one exists, else a fresh
start).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple

from .config import RunSpec


@dataclass
class RunContext:
    """One run of a sweep, as its run function sees it."""

    spec: RunSpec
    attempt: int = 1

    # -- the grid point -----------------------------------------------------------------
    @property
    def run_id(self) -> str:
        return self.spec.run_id

    @property
    def method(self) -> str:
        return self.spec.method

    @property
    def method_config(self) -> Dict[str, Any]:
        return self.spec.method_config

    @property
    def sparsity(self) -> float:
        return self.spec.sparsity

    @property
    def seed(self) -> int:
        return self.spec.seed

    @property
    def tasks(self) -> Tuple[str, ...]:
        return self.spec.tasks

    @property
    def params(self) -> Dict[str, Any]:
        return self.spec.params

    @property
    def threads(self) -> int:
        """CPU threads this run may use (the sweep already set ``torch.set_num_threads``)."""
        return self.spec.threads

    # -- files ----------------------------------------------------------------------------
    @property
    def run_dir(self) -> Path:
        return Path(self.spec.run_dir)

    @property
    def checkpoint_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    @property
    def last_checkpoint(self) -> Optional[Path]:
        """``checkpoints/last.ckpt`` if an earlier attempt saved one."""
        path = self.checkpoint_dir / "last.ckpt"
        return path if path.exists() else None

    @property
    def ckpt_path(self) -> Optional[str]:
        """For ``trainer.fit(ckpt_path=...)``: ``"last"`` when a last checkpoint exists, else ``None``."""
        return "last" if self.last_checkpoint is not None else None

    # -- Lightning helpers ----------------------------------------------------------------
    def model_checkpoint(self, every_n_train_steps: Optional[int] = None, **kwargs: Any) -> Any:
        """A ``ModelCheckpoint`` keeping only ``last.ckpt`` in this run's folder (every
        ``every_n_train_steps`` optimizer steps, and at every epoch's end)."""
        from pytorch_lightning.callbacks import ModelCheckpoint

        options = dict(dirpath=str(self.checkpoint_dir), save_last=True, save_top_k=0,
                       every_n_train_steps=every_n_train_steps)
        options.update(kwargs)
        return ModelCheckpoint(**options)

    def program(self, total_steps: Optional[int] = None, defaults: Optional[Mapping[str, Any]] = None) -> Any:
        """The method's program at this run's sparsity (see :func:`~sparsity_core.sweep.methods.build_method`)."""
        from .methods import build_method

        return build_method(self.method_config, self.sparsity, total_steps, defaults)

    def sparsity_callback(self, total_steps: Optional[int] = None, defaults: Optional[Mapping[str, Any]] = None,
                          **callback_kwargs: Any) -> Any:
        """A ``SparsityCallback`` driving the method's program (``total_steps``: the fit's
        optimizer steps, for schedules given in fractions; ``defaults``: program arguments
        used where the method does not set them)."""
        from ..lightning import SparsityCallback

        callback_kwargs.setdefault("log_per_target", False)
        return SparsityCallback(programs=[self.program(total_steps, defaults)], **callback_kwargs)
