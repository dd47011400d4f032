"""Run functions for the sweep tests: a pure fake (no torch) and a tiny Lightning MLP.

``fake_run`` "trains" ``params["steps"]`` steps, saving ``{"step": k}`` to
``checkpoints/last.ckpt`` after each, and resumes from it; it appends one line per call to
``calls.txt`` in its run folder. Per-method behaviour from ``params``:
``crash_once`` (raise on the first attempt), ``crash_always``, ``die`` (the process kills
itself with SIGKILL), ``hang`` (on the first attempt, after ``hang_at`` steps, write
``hanging`` and sleep: the test kills the sweep).
"""
from __future__ import annotations

import json
import os
import signal
import time

from sparsity_core.sweep import sweep_run

TASKS = ("digit", "parity", "ge5")
BASE = {"gmp": 0.95, "rand": 0.90, "b": 0.80}


def _log_call(ctx) -> None:
    with open(ctx.run_dir / "calls.txt", "a") as f:
        f.write(f"{ctx.attempt} {os.getpid()}\n")


@sweep_run(tasks=TASKS)
def fake_run(ctx):
    _log_call(ctx)
    p = ctx.params
    steps = p.get("steps", 3)
    ckpt = ctx.checkpoint_dir / "last.ckpt"
    start = json.loads(ckpt.read_text())["step"] if ckpt.exists() else 0
    if ctx.method in p.get("crash_always", []):
        raise RuntimeError(f"{ctx.method} always crashes")
    if ctx.method in p.get("die", []):
        os.kill(os.getpid(), signal.SIGKILL)
    ctx.checkpoint_dir.mkdir(parents=True, exist_ok=True)
    for step in range(start + 1, steps + 1):
        time.sleep(p.get("step_s", 0.0))
        ckpt.write_text(json.dumps({"step": step}))
        if ctx.attempt == 1 and ctx.method in p.get("crash_once", []) and step == p.get("crash_at", 2):
            raise RuntimeError(f"{ctx.method} crashes on its first attempt")
        if ctx.attempt == 1 and ctx.method in p.get("hang", []) and step == p.get("hang_at", 2):
            (ctx.run_dir / "hanging").write_text(str(os.getpid()))
            time.sleep(600)
    metrics = {"acc": {t: BASE.get(ctx.method, 0.5) - 0.5 * ctx.sparsity + 0.01 * ctx.seed + 0.001 * i
                       for i, t in enumerate(ctx.tasks or ("all",))},
               "start_step": start}
    return metrics


class CrashOnce:
    """A Lightning callback raising once at ``step`` (first attempt only)."""

    def __new__(cls, step: int):
        import pytorch_lightning as pl

        class _Crash(pl.Callback):
            def on_train_batch_end(self, trainer, *args):
                if trainer.global_step == step:
                    raise RuntimeError(f"crash at step {step}")

        return _Crash()


def mlp_run(ctx):
    """A 2-layer MLP (plus head) on random data, pruned by the method; crashes once at step
    ``crash_at`` for the methods in ``params["crash_once"]``."""
    import pytorch_lightning as pl
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    _log_call(ctx)
    p = ctx.params
    pl.seed_everything(ctx.seed, verbose=False)
    x = torch.randn(64, 8)
    y = (x[:, 0] > 0).long()

    class MLP(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 2))
            self.start_step = None

        def on_train_start(self):
            self.start_step = self.trainer.global_step

        def training_step(self, batch, _):
            return nn.functional.cross_entropy(self.net(batch[0]), batch[1])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    steps = p.get("steps", 8)
    callbacks = [ctx.sparsity_callback(total_steps=steps), ctx.model_checkpoint(every_n_train_steps=2)]
    if ctx.attempt == 1 and ctx.method in p.get("crash_once", []):
        callbacks.append(CrashOnce(p.get("crash_at", 5)))
    model = MLP()
    trainer = pl.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=callbacks)
    trainer.fit(model, DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True), ckpt_path=ctx.ckpt_path)
    weights = [model.net[0].weight, model.net[2].weight]  # the pruned layers (the head stays dense)
    with torch.no_grad():
        loss = float(nn.functional.cross_entropy(model.net(x), y))
        zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
    return {"loss": loss, "start_step": model.start_step, "step": trainer.global_step, "sparsity": zeros}
