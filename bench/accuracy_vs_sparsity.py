"""Accuracy vs sparsity on MNIST: SparsityCallback vs Lightning's ModelPruning, same epochs.

Small CNN (LeNet-5-Caffe: conv 1->20 5x5, pool, conv 20->50 5x5, pool, fc 800->500, fc
500->10; 431k parameters; Han et al., 2015 prune it), Adam, batch 128, E epochs, MNIST from
../shared/data (torchvision loader, local root). Both methods prune the same tensors (conv1,
conv2, fc1 weights; the classifier stays dense) to the same final sparsity:

- ours: global magnitude ranking, Zhu & Gupta cubic schedule from 1/6 to 2/3 of training
  (pruning starts after a warm-up, as in their recipe), masks recomputed ~40 times along
  the ramp, hard masks, then fine-tuning at the final mask for the last third.
- ModelPruning: global L1 unstructured at the end of each of the first E-1 epochs with
  amount a = 1 - (1 - s)^(1/(E-1)) (its amount compounds on what remains, so the final
  sparsity is exactly s), no pruning after the last epoch so it also fine-tunes, no
  lottery-ticket reset (its default would rewind weights to initialization every epoch).

Targets (issue 2): ours >= ModelPruning at every level; ours within 0.5 pt of dense at 90%.
"""
from __future__ import annotations

import time

import torch.nn.functional as F
from pytorch_lightning.callbacks import ModelPruning
from torch import nn

from _common import median, parser, progress, result, start, table, target
from _data import mnist_split
from _train import fit_eval, weight_sparsity
from sparsity_core import Cubic, SparsityCallback

LEVELS = (0.5, 0.8, 0.9, 0.95)
PRUNED = ("conv1", "conv2", "fc1")


class LeNet5(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 20, 5), nn.Conv2d(20, 50, 5)
        self.fc1, self.fc2 = nn.Linear(800, 500), nn.Linear(500, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


def callbacks_for(method, module, sparsity, epochs, total):
    if method == "dense":
        return []
    if method == "ours":
        start, end = total // 6, (2 * total) // 3
        return [SparsityCallback(Cubic(start_step=start, end_step=end, final_sparsity=sparsity),
                                 criterion="magnitude", allocator="global", include=list(PRUNED),
                                 update_every=max(1, (end - start) // 40), finalize=True, log_per_target=False)]
    amount = 1.0 - (1.0 - sparsity) ** (1.0 / (epochs - 1))
    return [ModelPruning("l1_unstructured", amount=lambda epoch: amount if epoch < epochs - 1 else 0.0,
                         parameters_to_prune=[(getattr(module.net, n), "weight") for n in PRUNED],
                         use_global_unstructured=True, use_lottery_ticket_hypothesis=False, verbose=0)]


def run(method, sparsity, seed, epochs, train, test):
    acc, module = fit_eval(LeNet5, lambda m, total: callbacks_for(method, m, sparsity, epochs, total),
                           train, test, epochs, seed)
    return acc, weight_sparsity([getattr(module.net, n).weight for n in PRUNED])


def main():
    args = parser(__doc__, seeds=True).parse_args()
    start(args)
    n_train, epochs, seeds = (6000, 3, args.seeds or 1) if args.quick else (60000, 3, args.seeds or 2)
    train, test = mnist_split(n_train)
    began = time.perf_counter()
    acc = {}
    real = {}
    for seed in range(seeds):
        acc.setdefault(("dense", 0.0), []).append(run("dense", 0.0, seed, epochs, train, test)[0])
        for s in LEVELS:
            for method in ("ours", "ModelPruning"):
                a, z = run(method, s, seed, epochs, train, test)
                progress(f"seed {seed} {method} {s:.0%}: {a:.2f}% (sparsity {z:.3f})")
                acc.setdefault((method, s), []).append(a)
                real[(method, s)] = z
    dense = median(acc[("dense", 0.0)])
    print(f"\nMNIST LeNet-5-Caffe, {n_train} training images, {epochs} epochs, {seeds} seed(s), "
          f"{args.threads} threads, {time.perf_counter() - began:.0f} s\n")
    rows = [["dense", "0%", f"{dense:.2f}", "-", "-", "-"]]
    for s in LEVELS:
        ours, mp = median(acc[("ours", s)]), median(acc[("ModelPruning", s)])
        rows.append([f"{s:.0%}", f"{real[('ours', s)]:.3f}/{real[('ModelPruning', s)]:.3f}", f"{ours:.2f}",
                     f"{mp:.2f}", f"{ours - mp:+.2f}", f"{ours - dense:+.2f}"])
    table(["level", "measured sparsity ours/MP", "ours acc %", "ModelPruning acc %", "ours - MP", "ours - dense"],
          rows)
    print()
    wins = [median(acc[("ours", s)]) >= median(acc[("ModelPruning", s)]) for s in LEVELS]
    target("ours >= ModelPruning at every level", all(wins), f"{sum(wins)}/{len(LEVELS)} levels", f"{len(LEVELS)}/{len(LEVELS)}")
    ours90 = median(acc[("ours", 0.9)])
    target("ours within 0.5 pt of dense at 90%", dense - ours90 <= 0.5, f"ours {ours90:.2f}%",
           f">= dense {dense:.2f}% - 0.5 pt")
    values = {"dense": dense, "epochs": epochs, "seeds": seeds}
    for s in LEVELS:
        values[f"ours_{int(s * 100)}"] = median(acc[("ours", s)])
        values[f"mp_{int(s * 100)}"] = median(acc[("ModelPruning", s)])
    result("accuracy_vs_sparsity", values)


if __name__ == "__main__":
    main()
