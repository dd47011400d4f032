"""Multi-task pruning on MNIST, run as a sweep (methods x sparsities x seeds x task sets).

    .venv/bin/python recipes/multitask_pruning.py --quick               # a few minutes on 2 cores
    .venv/bin/python recipes/multitask_pruning.py --workers 4           # the full grid of the YAML
    .venv/bin/python recipes/multitask_pruning.py --config my.yaml --report-only

One LightningModule with a shared CNN backbone and one head per task, trained on the sum of
the per-task cross-entropies, with per-task test accuracy:

- ``digit``: the digit class (10 classes);
- ``parity``: even or odd (2 classes);
- ``ge5``: digit >= 5 (2 classes);
- ``rotation``: how many quarter turns the image was given (4 classes; see
  :func:`rotate_quarter_turns`);
- ``texture``: the orientation of faint background stripes (4 classes; see
  :func:`overlay_stripes`): a feature the digit classifier has no use for.

The backbone's weights are pruned by the core's ``SparsityCallback`` with each method of the
YAML (``recipes/multitask_pruning.yaml``: gradual magnitude pruning with a global or a uniform
allocation, static random ERK sparsity); the heads stay dense (``get_classifier()`` returns
them, and the weight program skips classifier heads). Each run is one ``Trainer.fit``
through ``sparsity_core.sweep``: results in ``recipes/out/multitask_pruning[_quick]/
results.jsonl``, ``table.md`` (test accuracy per method x sparsity, mean ± std over seeds, per
task) and ``plots/``. Interrupt it and run the same command again: finished runs are
skipped, the interrupted ones resume from their last checkpoint.

``params`` of the YAML has the sections ``model`` (:class:`MultiTaskNet`), ``data``
(:class:`MnistTasks`) and ``trainer`` (``pl.Trainer`` arguments), each an ``__init__``'s
arguments as in a LightningCLI config; they are checked before any run. MNIST comes from
``../shared/data/mnist/MNIST/raw/*.gz`` (or ``$SPARSITY_SHARED_DATA``, or ``data.root``),
gunzipped once into ``recipes/out/data`` and read with torchvision's ``MNIST``.
"""
from __future__ import annotations

import argparse
import gzip
import inspect
import logging
import math
import os
import shutil
import sys
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO))

from sparsity_core.sweep import RunContext, sweep_run  # noqa: E402 - after the sys.path line above

CONFIG = REPO / "recipes" / "multitask_pruning.yaml"
SHARED = Path(os.environ.get("SPARSITY_SHARED_DATA", REPO.parent / "shared" / "data"))
CACHE = REPO / "recipes" / "out" / "data"
TASKS = {"digit": 10, "parity": 2, "ge5": 2, "rotation": 4, "texture": 4}  # task -> classes
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
DEFAULT_TASKS = ("digit", "parity", "ge5")


def rotate_quarter_turns(x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Image ``i`` turned by ``(i mod 4)`` quarter turns, and that count: the ``rotation`` task's
    input and label (an orientation feature the digit does not determine)."""
    turns = torch.arange(len(x)) % 4
    out = x.clone()
    for k in range(1, 4):
        out[turns == k] = torch.rot90(x[turns == k], k, dims=(2, 3))
    return out, turns


def overlay_stripes(x: torch.Tensor, intensity: float = 0.35, period: int = 4) -> Tuple[torch.Tensor, torch.Tensor]:
    """Image ``i`` (normalized MNIST) under faint stripes of orientation ``(i // 4) mod 4``
    (0°, 45°, 90°, 135°; ``period`` pixels, half of each period lit at ``intensity`` of full
    ink, the digit's own strokes drawn over them), and that orientation: the ``texture`` task's
    input and label. The label is independent of the digit and of :func:`rotate_quarter_turns`'
    ``i mod 4``; the stripes are drawn after any rotation, so they keep their orientation."""
    labels = (torch.arange(len(x)) // 4) % 4
    rows, cols = torch.meshgrid(torch.arange(x.shape[-2]), torch.arange(x.shape[-1]), indexing="ij")
    phases = (cols, rows + cols, rows, rows - cols)  # 0°, 45°, 90°, 135°: lines of constant phase
    stripes = torch.stack([(p % period < period // 2).float() * intensity for p in phases])
    raw = x * MNIST_STD + MNIST_MEAN
    out = torch.maximum(raw, stripes[labels].unsqueeze(1).to(x.dtype))
    return (out - MNIST_MEAN) / MNIST_STD, labels


SET_BY_RECIPE = ("callbacks", "logger", "enable_checkpointing", "default_root_dir", "accelerator", "devices")


def task_labels(task: str, digits: torch.Tensor) -> torch.Tensor:
    """The label of ``task`` for each digit (``rotation``: see :func:`rotate_quarter_turns`)."""
    if task == "digit":
        return digits
    if task == "parity":
        return digits % 2
    if task == "ge5":
        return (digits >= 5).long()
    if task in ("rotation", "texture"):
        raise ValueError(f"{task} labels come with the images: use rotate_quarter_turns / overlay_stripes(images)")
    raise ValueError(f"unknown task {task!r}. Valid: {', '.join(TASKS)}.")


# -- data --------------------------------------------------------------------------------
@lru_cache(maxsize=2)
def mnist(root: str, train: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """Normalized images ``[N, 1, 28, 28]`` and digits through torchvision's ``MNIST``; the
    shared ``.gz`` files are gunzipped once into ``recipes/out/data`` (atomically: several
    workers may start at once)."""
    from torchvision.datasets import MNIST

    src = Path(root) / "mnist" / "MNIST" / "raw"
    if not src.is_dir():
        raise FileNotFoundError(f"MNIST not found at {src}: set params.data.root (the folder holding mnist/) "
                                "or $SPARSITY_SHARED_DATA")
    raw = CACHE / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for gz in src.glob("*.gz"):
        if not (raw / gz.stem).exists():
            tmp = raw / f".{gz.stem}.{os.getpid()}"
            with gzip.open(gz) as fin, open(tmp, "wb") as fout:
                shutil.copyfileobj(fin, fout)
            os.replace(tmp, raw / gz.stem)
    ds = MNIST(str(CACHE), train=train, download=False)
    return (ds.data.unsqueeze(1).float() / 255.0 - MNIST_MEAN) / MNIST_STD, ds.targets.clone()


class MnistTasks(pl.LightningDataModule):
    """MNIST with one label per task: batches are ``(images, {task: labels})``.

    Args:
        root: folder holding ``mnist/MNIST/raw`` (default ``../shared/data`` or
            ``$SPARSITY_SHARED_DATA``).
        train_subset, test_subset: the first this many images of each split (``None``: all).
        batch_size: training batch size.
    """

    def __init__(self, root: Optional[str] = None, train_subset: Optional[int] = 20000,
                 test_subset: Optional[int] = None, batch_size: int = 128, tasks: Sequence[str] = DEFAULT_TASKS,
                 seed: int = 0) -> None:
        super().__init__()
        self.root = str(root or SHARED)
        self.train_subset, self.test_subset, self.batch_size = train_subset, test_subset, batch_size
        self.tasks, self.seed = tuple(tasks), seed

    def _split(self, train: bool, n: Optional[int]) -> TensorDataset:
        x, digits = mnist(self.root, train)
        x, digits = x[:n], digits[:n]
        labels = {}
        if "rotation" in self.tasks:
            x, labels["rotation"] = rotate_quarter_turns(x)
        if "texture" in self.tasks:
            x, labels["texture"] = overlay_stripes(x)
        return TensorDataset(x, *(labels[t] if t in labels else task_labels(t, digits) for t in self.tasks))

    def setup(self, stage: str) -> None:
        self.train = self._split(True, self.train_subset)
        self.test = self._split(False, self.test_subset)

    def _batches(self, ds: TensorDataset, batch_size: int, shuffle: bool) -> DataLoader:
        g = torch.Generator().manual_seed(self.seed)
        return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=g, collate_fn=self._collate)

    def _collate(self, items: List[Tuple[torch.Tensor, ...]]):
        cols = list(zip(*items))
        return torch.stack(cols[0]), {t: torch.stack(c) for t, c in zip(self.tasks, cols[1:])}

    def train_dataloader(self) -> DataLoader:
        return self._batches(self.train, self.batch_size, shuffle=True)

    def test_dataloader(self) -> DataLoader:
        return self._batches(self.test, 1000, shuffle=False)


# -- model -------------------------------------------------------------------------------
class MultiTaskNet(pl.LightningModule):
    """A shared CNN backbone (two conv blocks and a hidden layer) and one linear head per task.

    Args:
        tasks: the heads (names of :data:`TASKS`); the loss is the sum of their cross-entropies.
        width: channels of the first conv block (the second has twice as many).
        hidden: width of the shared hidden layer the heads read.
        lr, weight_decay: AdamW, with a cosine decay over the fit.
    """

    def __init__(self, tasks: Sequence[str] = DEFAULT_TASKS, width: int = 16, hidden: int = 64, lr: float = 3e-3,
                 weight_decay: float = 1e-4) -> None:
        super().__init__()
        self.tasks, self.lr, self.weight_decay = tuple(tasks), lr, weight_decay
        self.backbone = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(2 * width * 7 * 7, hidden), nn.ReLU())
        self.heads = nn.ModuleDict({t: nn.Linear(hidden, TASKS[t]) for t in self.tasks})
        self.example_input_array = torch.zeros(1, 1, 28, 28)

    def get_classifier(self) -> nn.Module:
        """The heads (what the weight program leaves dense)."""
        return self.heads

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        z = self.backbone(x)
        return {t: head(z) for t, head in self.heads.items()}

    def training_step(self, batch, batch_idx):
        x, labels = batch
        logits = self(x)
        return sum(F.cross_entropy(logits[t], labels[t]) for t in self.tasks)

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        steps = max(1, int(self.trainer.estimated_stepping_batches))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps),
                                                   "interval": "step"}}

    @torch.no_grad()
    def evaluate(self, loader: DataLoader) -> Dict[str, Dict[str, float]]:
        """Per-task accuracy and loss."""
        self.eval()
        correct = {t: 0 for t in self.tasks}
        loss = {t: 0.0 for t in self.tasks}
        n = 0
        for x, labels in loader:
            logits = self(x)
            for t in self.tasks:
                correct[t] += int((logits[t].argmax(1) == labels[t]).sum())
                loss[t] += float(F.cross_entropy(logits[t], labels[t], reduction="sum"))
            n += len(x)
        return {"acc": {t: correct[t] / n for t in self.tasks}, "loss": {t: loss[t] / n for t in self.tasks}}


# -- one run of the sweep ----------------------------------------------------------------
def check_params(params: Dict[str, Any]) -> List[str]:
    """Unknown keys of the ``model``, ``data`` and ``trainer`` sections, with the valid ones."""
    from sparsity_core.sweep.config import unknown_key

    problems = []
    sections = {"model": (MultiTaskNet, ("tasks",)), "data": (MnistTasks, ("tasks", "seed")),
                "trainer": (pl.Trainer, SET_BY_RECIPE)}
    for name, (cls, fixed) in sections.items():
        given = params.get(name) or {}
        if not isinstance(given, dict):
            problems.append(f"params.{name} must be a mapping, got {given!r}")
            continue
        valid = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", *fixed)]
        for key in given:
            if key in fixed:
                problems.append(f"params.{name}.{key} is set by the recipe (from the grid or the sweep)")
            elif key not in valid:
                problems.append(f"params.{name}: " + unknown_key(key, valid, "parameter"))
    return problems


@sweep_run(tasks=TASKS, params=("model", "data", "trainer"), check=check_params)
def run_one(ctx: RunContext) -> Dict[str, Any]:
    """One fit: the method of ``ctx`` at its sparsity, on its task set, with its seed."""
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*dataloader is not resumable.*")
    warnings.filterwarnings("ignore", ".*LeafSpec.*")  # Lightning's own use of a deprecated torch API
    pl.seed_everything(ctx.seed, verbose=False)
    tasks = ctx.tasks or DEFAULT_TASKS
    params = ctx.params
    trainer_args = {"max_epochs": 2, **(params.get("trainer") or {})}
    data = MnistTasks(**(params.get("data") or {}), tasks=tasks, seed=ctx.seed)
    model = MultiTaskNet(tasks=tasks, **(params.get("model") or {}))
    data.setup("fit")
    per_epoch = math.ceil(len(data.train_dataloader()) / trainer_args.get("accumulate_grad_batches", 1))
    total = per_epoch * trainer_args["max_epochs"]
    if trainer_args.get("max_steps", -1) > 0:
        total = min(total, trainer_args["max_steps"])
    sparsity = ctx.sparsity_callback(total_steps=total)
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=str(ctx.run_dir),
                         callbacks=[sparsity, ctx.model_checkpoint(every_n_train_steps=max(1, per_epoch // 2))],
                         **trainer_args)
    trainer.fit(model, datamodule=data, ckpt_path=ctx.ckpt_path)
    data.setup("test")
    metrics: Dict[str, Any] = model.evaluate(data.test_dataloader())
    metrics["sparsity"] = sparsity.sparsity_report()["global"]
    metrics["steps"] = trainer.global_step
    return metrics


# -- the sweep ---------------------------------------------------------------------------
def main(argv: Optional[List[str]] = None):
    from sparsity_core.sweep.cli import add_run_options, run_from_args
    from sparsity_core.sweep.config import SweepConfigError

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(CONFIG), help="the sweep's YAML (default: %(default)s)")
    add_run_options(p)
    args = p.parse_args(argv)
    try:
        result = run_from_args(args.config, args)
    except SweepConfigError as err:
        raise SystemExit(str(err)) from None
    print()
    print(result.table)
    return result


if __name__ == "__main__":
    main()
