"""Accuracy vs sparsity on CIFAR-10: gradual magnitude pruning (SparsityCallback) vs
Lightning's ModelPruning, same epochs, same seeds.

Data: a seeded random 8,000 of the 50k CIFAR-10 (JPEG) training images from ../shared/data
(bench/_data.py), tested on all 10k test images (quick: 2,000 x 2 epochs, 2,000 test
images). Augmentation: per-sample horizontal flip and random crop after 4-pixel zero
padding, drawn from a generator seeded per run, so every method of a seed sees the same
initialisation, batches and augmentations (paired runs).

Model: a narrow CIFAR ResNet (stem conv 3->16 at 32x32, then three basic blocks 16->32,
32->64, 64->128, each downsampling by 2; global average pooling; linear classifier): 304k
parameters, 11M MACs per image, so one run costs ~1-2 minutes on one thread. Every conv
weight is pruned (stem, blocks, 1x1 shortcuts: 302k weights); BN and the classifier stay
dense. AdamW (lr 2e-3, weight decay 5e-4), batch 64, cosine learning-rate decay to 0 over
the run (``--lr constant`` keeps the issue-2 recipe's constant rate).

Methods (same tensors, same final sparsity):

- ours: global magnitude ranking (no per-layer floor), Zhu & Gupta (2017) cubic schedule
  s_t = s_f (1 - (1 - (t - t0)/(t1 - t0))^3) from t0 = 1/6 to t1 = 5/6 of the optimizer steps,
  masks recomputed at every step along the ramp, hard masks, then the last sixth fine-tunes
  at the final mask. The issue-2 recipe (t1 = 2/3 of training, 40 mask updates) is the
  ``issue2`` row of bench/gradual_ablation.py, which measures what each setting is worth
  (ending later and updating every step were the two changes that helped).
- ModelPruning: global L1 unstructured at the end of each of the first E-1 epochs with
  amount a = 1 - (1 - s)^(1/(E-1)) (its amount compounds on what remains, so the final
  sparsity is exactly s), no pruning after the last epoch so it also fine-tunes, no
  lottery-ticket reset (its default would rewind weights to initialization every epoch).

Reported: mean +- standard error over seeds of the test accuracy, and of the paired
difference ours - ModelPruning (same seed); targets compare means.

Targets (issue 2; issue 13 moved the task to CIFAR-10): ours >= ModelPruning at every level;
ours within 0.5 pt of dense at 90%.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.callbacks import ModelPruning
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from _common import parser, progress, result, start, table, target
from _data import cifar10_split
from _train import accuracy, weight_sparsity
from sparsity_core import Cubic, SparsityCallback
from sparsity_core.allocators.global_rank import GlobalRank

LEVELS = (0.5, 0.8, 0.9, 0.95)


# -- the model ----------------------------------------------------------------------------
class Block(nn.Module):
    """Basic residual block: conv3x3 -> BN -> ReLU -> conv3x3 -> BN, plus the input (through
    a 1x1 conv + BN where the shape changes), then ReLU (He et al., 2016)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
        self.shortcut = nn.Identity() if stride == 1 and cin == cout else \
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """Stem conv 3->16 at full resolution, blocks to w, 2w, 4w channels each halving the
    resolution (32 -> 16 -> 8 -> 4), average pooling, linear classifier."""

    def __init__(self, width: int = 32, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.blocks = nn.Sequential(Block(16, width, 2), Block(width, 2 * width, 2), Block(2 * width, 4 * width, 2))
        self.fc = nn.Linear(4 * width, classes)

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(self.blocks(self.stem(x)), 1).flatten(1))


def pruned_convs(net: nn.Module) -> List[nn.Conv2d]:
    return [m for m in net.modules() if isinstance(m, nn.Conv2d)]


# -- training -------------------------------------------------------------------------------
def augment(x: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Per-sample horizontal flip and random crop after ``pad`` pixels of zero padding."""
    n, _, h, w = x.shape
    flip = torch.rand(n, generator=generator) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    padded = F.pad(x, (pad, pad, pad, pad))
    dy, dx = torch.randint(0, 2 * pad + 1, (2, n), generator=generator).tolist()
    return torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])


class Classifier(pl.LightningModule):
    def __init__(self, net: nn.Module, lr: float, weight_decay: float, lr_schedule: str, seed: int) -> None:
        super().__init__()
        self.net, self.lr, self.weight_decay, self.lr_schedule = net, lr, weight_decay, lr_schedule
        self.generator = torch.Generator().manual_seed(10_007 + seed)
        self.total_steps = 1

    def forward(self, x):
        return self.net(x.contiguous(memory_format=torch.channels_last))

    def training_step(self, batch, batch_idx):
        return F.cross_entropy(self(augment(batch[0], self.generator)), batch[1])

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        if self.lr_schedule == "constant":
            return opt
        total = self.total_steps
        cosine = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total) / total)))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": cosine, "interval": "step"}}


@dataclass(frozen=True)
class Setup:
    """What every method of a run shares."""

    n_train: int = 8000
    n_test: int = 10000
    epochs: int = 4
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 5e-4
    lr_schedule: str = "cosine"


@dataclass(frozen=True)
class Gradual:
    """Our gradual magnitude pruning recipe; ``start`` and ``end`` are fractions of the run's
    optimizer steps. The defaults are what bench/gradual_ablation.py measured best."""

    start: float = 1 / 6
    end: float = 5 / 6
    update_every: Optional[int] = 1  # optimizer steps between mask updates
    updates: Optional[int] = None  # or: this many updates along the ramp
    floor: float = 0.0  # per-layer floor: min_keep_fraction of the global allocator
    enforcement: object = "hard"  # a registered name or an Enforcement class (a fresh one per run)

    def callback(self, sparsity: float, total: int) -> SparsityCallback:
        begin, end = int(round(self.start * total)), int(round(self.end * total))
        every = self.update_every if self.updates is None else max(1, (end - begin) // self.updates)
        enforcement = self.enforcement if isinstance(self.enforcement, str) else self.enforcement()
        return SparsityCallback(Cubic(start_step=begin, end_step=end, final_sparsity=sparsity),
                                criterion="magnitude", allocator=GlobalRank(min_keep_fraction=self.floor),
                                enforcement=enforcement, update_every=every, finalize=True, log_per_target=False)

    def key(self) -> dict:
        out = dataclasses.asdict(self)
        if not isinstance(self.enforcement, str):
            out["enforcement"] = self.enforcement.__name__
        return out


def model_pruning(module: Classifier, sparsity: float, epochs: int) -> ModelPruning:
    amount = 1.0 - (1.0 - sparsity) ** (1.0 / (epochs - 1))
    return ModelPruning("l1_unstructured", amount=lambda epoch: amount if epoch < epochs - 1 else 0.0,
                        parameters_to_prune=[(m, "weight") for m in pruned_convs(module.net)],
                        use_global_unstructured=True, use_lottery_ticket_hypothesis=False, verbose=0)


def run(method: str, sparsity: float, seed: int, setup: Setup, data, recipe: Gradual = Gradual(),
        width: int = 32) -> Dict[str, float]:
    """One training run; ``method`` is ``dense``, ``ours`` or ``ModelPruning``. Returns test
    accuracy (%), measured sparsity of the conv weights, wall and CPU seconds."""
    (x, y), (xt, yt) = data
    began, cpu = time.perf_counter(), time.process_time()
    pl.seed_everything(seed, verbose=False)
    net = ResNet(width)
    module = Classifier(net, setup.lr, setup.weight_decay, setup.lr_schedule, seed)
    loader = DataLoader(TensorDataset(x, y), batch_size=setup.batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(seed))
    module.total_steps = total = setup.epochs * len(loader)
    callbacks: List[pl.Callback] = []
    if method == "ours":
        callbacks = [recipe.callback(sparsity, total)]
    elif method == "ModelPruning":
        callbacks = [model_pruning(module, sparsity, setup.epochs)]
    elif method != "dense":
        raise ValueError(f"unknown method {method!r}")
    trainer = pl.Trainer(max_epochs=setup.epochs, accelerator="cpu", devices=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=callbacks)
    trainer.fit(module, loader)
    if method == "ours":
        targets = {t.param for t in callbacks[0].controller.targets}
        assert targets == {m.weight for m in pruned_convs(net)}, "ours and ModelPruning must prune the same tensors"
    acc = accuracy(module, xt, yt)
    return {"acc": acc, "sparsity": weight_sparsity([m.weight for m in pruned_convs(net)]),
            "wall": time.perf_counter() - began, "cpu": time.process_time() - cpu}


# -- stored runs -------------------------------------------------------------------------------
class Runs:
    """Runs stored as JSON lines in ``path`` (``None``: nothing stored), keyed by everything
    that decides their result (method, level, seed, setup, recipe, width), so this bench and
    bench/gradual_ablation.py share them and a call can pick up another process's runs. Data
    are loaded on the first run that is not stored."""

    def __init__(self, path: Optional[str], data_setup: Setup) -> None:
        self.path, self.data_setup, self.data = path, data_setup, None

    @staticmethod
    def key(method: str, sparsity: float, seed: int, setup: Setup, recipe: Gradual, width: int) -> str:
        return json.dumps([method, 0.0 if method == "dense" else sparsity, seed, dataclasses.asdict(setup),
                           recipe.key() if method == "ours" else None, width], sort_keys=True)

    def stored(self) -> Dict[str, dict]:
        if self.path is None or not os.path.exists(self.path):
            return {}
        with open(self.path) as f:
            return {r["key"]: r for r in map(json.loads, filter(None, (line.strip() for line in f)))}

    def get(self, method: str, sparsity: float, seed: int, setup: Setup, recipe: Gradual = Gradual(),
            width: int = 32) -> Tuple[Dict[str, float], bool]:
        """The run's result and whether it was computed now (``False``: read back)."""
        k = self.key(method, sparsity, seed, setup, recipe, width)
        found = self.stored().get(k)
        if found is not None:
            return found, False
        if self.data is None:
            self.data = load(self.data_setup)
        r = run(method, sparsity, seed, setup, self.data, recipe, width)
        if self.path is not None:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            with open(self.path, "a") as f:
                f.write(json.dumps(dict(r, key=k)) + "\n")
        return r, True


# -- statistics -------------------------------------------------------------------------------
def mean_se(values: Sequence[float]) -> Tuple[float, float]:
    """Mean and standard error of the mean (sample std / sqrt(n); 0 for one value)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, 0.0
    return mean, (sum((v - mean) ** 2 for v in values) / (n - 1) / n) ** 0.5


def fmt(values: Sequence[float], signed: bool = False) -> str:
    m, se = mean_se(values)
    return f"{m:+.2f} ± {se:.2f}" if signed else f"{m:.2f} ± {se:.2f}"


def load(setup: Setup):
    return cifar10_split(setup.n_train, setup.n_test)


STORE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "out", "accuracy_vs_sparsity.jsonl")


def main():
    p = parser(__doc__, seeds=True)
    p.add_argument("--lr", choices=("cosine", "constant"), default="cosine", help="learning-rate schedule")
    p.add_argument("--store", action="store_true",
                   help=f"store runs in {os.path.relpath(STORE)} and reuse those found there (shared with "
                        "bench/gradual_ablation.py); lets --seed split the work over processes")
    p.add_argument("--seed", type=int, default=None, help="run only this seed (with --store)")
    args = p.parse_args()
    start(args)
    setup = Setup(lr_schedule=args.lr)
    if args.quick:
        setup = dataclasses.replace(setup, n_train=2000, n_test=2000, epochs=2)
    seeds = list(range(args.seeds or (1 if args.quick else 3)))
    if args.seed is not None:
        if not args.store:
            raise SystemExit("--seed splits work over processes through the store: pass --store too")
        seeds = [args.seed]
    runs = Runs(STORE if args.store else None, setup)
    began = time.perf_counter()
    acc: Dict[Tuple[str, float], List[float]] = {}
    real: Dict[Tuple[str, float], float] = {}
    cpu, fresh = [], 0
    for seed in seeds:
        configs = [("dense", 0.0)] + [(m, s) for s in LEVELS for m in ("ours", "ModelPruning")]
        for method, s in configs:
            r, new = runs.get(method, s, seed, setup)
            fresh += new
            progress(f"seed {seed} {method} {s:.0%}: {r['acc']:.2f}% (sparsity {r['sparsity']:.3f}, "
                     f"{r['wall']:.0f} s wall, {r['cpu']:.0f} s CPU{'' if new else ', stored'})")
            acc.setdefault((method, s), []).append(r["acc"])
            real[(method, s)] = r["sparsity"]
            cpu.append(r["cpu"])
    dense = acc[("dense", 0.0)]
    dense_mean = mean_se(dense)[0]
    print(f"\nCIFAR-10 ResNet (304k params), {setup.n_train} training / {setup.n_test} test images, {setup.epochs} "
          f"epochs, {setup.lr_schedule} lr, seeds {seeds}, {args.threads} thread(s); {len(cpu)} runs "
          f"({fresh} run now, {time.perf_counter() - began:.0f} s wall), {sum(cpu):.0f} s CPU in all "
          f"({sum(cpu) / len(cpu):.0f} s a run)\n")
    rows = [["dense", "0", fmt(dense), "-", "-", "-"]]
    for s in LEVELS:
        ours, mp = acc[("ours", s)], acc[("ModelPruning", s)]
        rows.append([f"{s:.0%}", f"{real[('ours', s)]:.3f}/{real[('ModelPruning', s)]:.3f}", fmt(ours), fmt(mp),
                     fmt([a - b for a, b in zip(ours, mp)], signed=True),
                     fmt([a - d for a, d in zip(ours, dense)], signed=True)])
    table(["level", "sparsity ours/MP", "ours acc %", "ModelPruning acc %", "ours - MP (paired)",
           "ours - dense (paired)"], rows)
    print("\n(mean ± standard error over seeds)\n")
    means = {k: mean_se(v)[0] for k, v in acc.items()}
    wins = [means[("ours", s)] >= means[("ModelPruning", s)] for s in LEVELS]
    target("ours >= ModelPruning at every level", all(wins), f"{sum(wins)}/{len(LEVELS)} levels",
           f"{len(LEVELS)}/{len(LEVELS)}")
    ours90 = means[("ours", 0.9)]
    target("ours within 0.5 pt of dense at 90%", dense_mean - ours90 <= 0.5, f"ours {ours90:.2f}%",
           f">= dense {dense_mean:.2f}% - 0.5 pt")
    values = {"dense": dense_mean, "epochs": setup.epochs, "seeds": len(seeds)}
    for s in LEVELS:
        values[f"ours_{int(s * 100)}"] = means[("ours", s)]
        values[f"mp_{int(s * 100)}"] = means[("ModelPruning", s)]
    result("accuracy_vs_sparsity", values)


if __name__ == "__main__":
    main()
