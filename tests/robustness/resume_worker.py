"""Run by test_crash_resume.py: one case of ``resume_cases`` in a fresh process.

    python tests/robustness/resume_worker.py CASE OUT straight-then-crash
    python tests/robustness/resume_worker.py CASE OUT resume
    python tests/robustness/resume_worker.py CASE OUT ddp

``straight-then-crash`` runs the case uninterrupted and writes what it ended with to
``OUT/straight.pt``, then runs it again with the plan's checkpoints in ``OUT/ckpt`` and kills
itself with SIGKILL after the plan's step (nothing is flushed or closed: a preempted node).
``resume`` resumes from the latest checkpoint there in a new process and writes
``OUT/resumed.pt``. One thread, so both runs reduce in the same order. ``ddp`` runs the
case on 2 CPU processes (gloo) and each rank writes ``OUT/rank<r>.pt``, with its sparsity
state after every step.
"""
from __future__ import annotations

import os
import re
import signal
import sys
from typing import Any, Dict, List

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402
from pytorch_lightning.callbacks import ModelCheckpoint  # noqa: E402

from tests.robustness.resume_cases import CASES  # noqa: E402


class KillAfter(pl.Callback):
    """SIGKILL this process at the end of the batch that makes ``global_step == step``."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class StartStep(pl.Callback):
    """The global step a fit starts from (after a resume: the checkpoint's)."""

    def __init__(self) -> None:
        self.step = None

    def on_train_start(self, trainer, pl_module) -> None:
        self.step = trainer.global_step


class StateTrace(pl.Callback):
    """Every step's sparsity state (callbacks' and the module's checkpoint state), for DDP."""

    def __init__(self) -> None:
        self.steps: List[Dict[str, Any]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.steps.append({"step": trainer.global_step, **sparsity_state(trainer, pl_module)})


HARNESS = (ModelCheckpoint, KillAfter, StartStep, StateTrace)


def trainer_factory(extra: List[pl.Callback], root: str, **device):
    """``make(callbacks, harness=True, **trainer_kwargs)``: a Trainer with the case's callbacks,
    ``extra`` (unless ``harness=False``: a fit before the one under test) and ``device``."""
    def make(callbacks, harness: bool = True, **kwargs) -> pl.Trainer:
        added = extra if harness else []
        args: Dict[str, Any] = dict(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                                    enable_model_summary=False, num_sanity_val_steps=0, deterministic=True,
                                    enable_checkpointing=any(isinstance(cb, ModelCheckpoint) for cb in added),
                                    default_root_dir=root)
        args.update(device)
        args.update(kwargs)
        return pl.Trainer(callbacks=list(callbacks) + list(added), **args)
    return make


def plain(value: Any) -> Any:
    """``value`` with tensors detached and cloned, containers copied; other leaves as they are."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def sparsity_state(trainer: pl.Trainer, module: pl.LightningModule) -> Dict[str, Any]:
    """The state every callback would checkpoint (masks, schedule positions, budgets,
    buffers, counters) and what the module itself adds to a checkpoint (a 3DGS strategy)."""
    callbacks = {type(cb).__name__ + f"[{i}]": plain(cb.state_dict()) for i, cb in enumerate(trainer.callbacks)
                 if not isinstance(cb, HARNESS) and cb.state_dict()}
    extra: Dict[str, Any] = {}
    module.on_save_checkpoint(extra)
    return {"callbacks": callbacks, "module": plain(extra)}


def outcome(trainer: pl.Trainer, module: pl.LightningModule) -> Dict[str, Any]:
    """Where the run ended: weights, logged metrics, step, sparsity and data-module state."""
    datamodule = getattr(trainer, "datamodule", None)
    return {"weights": plain(module.state_dict()), "global_step": trainer.global_step,
            "params": [name for name, _ in module.named_parameters()],
            "metrics": {k: float(v) for k, v in trainer.callback_metrics.items()},
            **sparsity_state(trainer, module),
            "datamodule": plain(datamodule.state_dict()) if datamodule is not None else {}}


def latest_checkpoint(folder: str) -> str:
    steps = {int(m.group(1)): f for f in os.listdir(folder) if (m := re.search(r"step=(\d+)", f))}
    if not steps:
        raise SystemExit(f"no checkpoint in {folder}")
    return os.path.join(folder, steps[max(steps)])


def main(name: str, out: str, mode: str) -> None:
    torch.set_num_threads(1)
    plan = CASES[name]
    root = os.path.join(out, "root")
    if mode == "straight-then-crash":
        trainer, module = plan.case(trainer_factory([], root), None)
        torch.save(outcome(trainer, module), os.path.join(out, "straight.pt"))
        saver = ModelCheckpoint(dirpath=os.path.join(out, "ckpt"), save_top_k=-1, **plan.checkpoint)
        plan.case(trainer_factory([saver, KillAfter(plan.kill_after)], root), None)
        raise SystemExit("the crash run was not killed: it ended before its kill step")
    if mode == "resume":
        ckpt = latest_checkpoint(os.path.join(out, "ckpt"))
        start = StartStep()
        trainer, module = plan.case(trainer_factory([start], root), ckpt)
        result = outcome(trainer, module)
        result["resumed_from"], result["started_at"] = os.path.basename(ckpt), start.step
        torch.save(result, os.path.join(out, "resumed.pt"))
        return
    if mode == "ddp":  # Lightning re-runs this script for rank 1
        trace = StateTrace()
        trainer, module = plan.case(trainer_factory([trace], root, devices=2, strategy="ddp"), None)
        result = outcome(trainer, module)
        result["trace"] = trace.steps
        torch.save(result, os.path.join(out, f"rank{trainer.global_rank}.pt"))
        return
    raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(*sys.argv[1:4])
