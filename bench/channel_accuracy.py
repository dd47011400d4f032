"""Accuracy of channel pruning at 2x fewer MACs: dense vs ours vs Torch-Pruning one-shot.

MNIST (20k train / 10k test; quick: 3k / 1k), timm resnet10t (1 input channel, random init),
AdamW lr 2e-3, batch 128, the same total epochs E for every method (default 3), CPU. MACs
counted with Torch-Pruning's counter; the pruned models of both methods have half the dense
MACs (ours exactly by its MAC budget, Torch-Pruning's by a bisection on its channel ratio).

- dense: E epochs.
- Torch-Pruning: 1 epoch dense, its ``BasePruner`` one-shot (group magnitude, uniform ratio,
  classifier ignored), then E - 1 epochs of fine-tuning (a fresh optimizer).
- ours (``ChannelPruning``): 1 epoch dense; then BN-scale masks at half the MACs and
  MaskSparsity's pruning-aware L1 on the marked BatchNorm scales for E - 2 epochs (nothing
  zeroed yet); then the channels are removed (optimizer rebound with its moments) and the
  last epoch fine-tunes the smaller model.

Targets (issue 4): ours >= Torch-Pruning; ours within 1 pt of dense.
"""
from __future__ import annotations

import copy

import pytorch_lightning as pl
import timm
import torch
import torch_pruning as tp
from torch.utils.data import DataLoader, TensorDataset

from _common import mean_std, parser, progress, result, start, table, target
from _data import mnist_split
from _train import Classifier, accuracy
from sparsity_core.lightning import SparsityCallback
from sparsity_core.schedules.constant import Constant
from sparsity_plugins.vision import ChannelPruning, MaskSparsity
from sparsity_plugins.vision.report import count_macs_params

LR, BATCH = 2e-3, 128


def net() -> torch.nn.Module:
    return timm.create_model("resnet10t", pretrained=False, num_classes=10, in_chans=1)


def fit(module, data, epochs, seed, callbacks=()):
    loader = DataLoader(TensorDataset(*data), batch_size=BATCH, shuffle=True,
                        generator=torch.Generator().manual_seed(seed))
    pl.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
               enable_progress_bar=False, enable_model_summary=False, callbacks=list(callbacks)).fit(module, loader)
    return len(loader)


def tp_prune_to_half(model, x):
    dense = count_macs_params(model, x)["macs"]
    lo, hi, best = 0.0, 0.9, None
    for _ in range(12):
        ratio = (lo + hi) / 2
        trial = copy.deepcopy(model)
        tp.pruner.BasePruner(trial, x, importance=tp.importance.GroupMagnitudeImportance(p=2), pruning_ratio=ratio,
                             ignored_layers=[trial.get_classifier()]).step()
        macs = count_macs_params(trial, x)["macs"]
        if macs <= dense / 2:
            hi, best = ratio, trial
        else:
            lo = ratio
    return best


class RemoveAfter(pl.Callback):
    """Removes the channels of a ChannelPruning program at the end of a given epoch."""

    def __init__(self, program: ChannelPruning, remove_epoch: int):
        self.program, self.remove_epoch = program, remove_epoch

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch == self.remove_epoch:
            self.program.remove_now(trainer)


def run(method, train, test, epochs, seed):
    pl.seed_everything(seed, verbose=False)
    module = Classifier(net(), lr=LR)
    x = train[0][:1]
    module.example_input_array = x
    dense_macs = count_macs_params(module.net, x)["macs"]
    if method == "dense":
        fit(module, train, epochs, seed)
    elif method == "torch-pruning":
        fit(module, train, 1, seed)
        module = Classifier(tp_prune_to_half(module.net, x), lr=LR)
        fit(module, train, epochs - 1, seed + 1)
    else:
        steps = (len(train[1]) + BATCH - 1) // BATCH
        program = ChannelPruning(Constant(sparsity=0.5, start_step=steps), criterion="bn_scale",
                                 enforcement=MaskSparsity(strength=5e-3), measure="macs", finalize=False)
        fit(module, train, epochs, seed, [SparsityCallback(programs=[program]), RemoveAfter(program, epochs - 2)])
    macs = count_macs_params(module.net, x)["macs"]
    return accuracy(module.net, *test), dense_macs / macs


def main() -> None:
    args = parser(__doc__, seeds=True).parse_args()
    start(args)
    n_train, n_test, epochs = (3000, 1000, 3) if args.quick else (20000, 10000, 3)
    seeds = args.seeds or (1 if args.quick else 2)
    train, test = mnist_split(n_train)
    test = (test[0][:n_test], test[1][:n_test])
    methods = ["dense", "torch-pruning", "ours"]
    acc = {m: [] for m in methods}
    ratio = {m: [] for m in methods}
    for seed in range(seeds):
        for m in methods:
            a, r = run(m, train, test, epochs, seed)
            acc[m].append(a)
            ratio[m].append(r)
            progress(f"seed {seed} {m}: {a:.2f}% at {r:.2f}x fewer MACs")
    mean, std = mean_std(acc)
    rmean, _ = mean_std(ratio)
    print(f"MNIST {n_train} train / {n_test} test, timm resnet10t, {epochs} epochs, {seeds} seed(s), "
          f"{torch.get_num_threads()} threads")
    table(["method", "accuracy %", "std", "MACs reduction"],
          [[m, f"{mean[m]:.2f}", f"{std[m]:.2f}", f"{rmean[m]:.2f}x"] for m in methods])
    target("ours >= Torch-Pruning one-shot at 2x fewer MACs", mean["ours"] >= mean["torch-pruning"],
           f"{mean['ours']:.2f}%", f">= {mean['torch-pruning']:.2f}%")
    target("ours within 1 pt of dense", mean["ours"] >= mean["dense"] - 1.0, f"{mean['ours']:.2f}%",
           f">= {mean['dense'] - 1:.2f}% (dense {mean['dense']:.2f}%)")
    result("channel_accuracy", {"dense": mean["dense"], "torch_pruning": mean["torch-pruning"], "ours": mean["ours"],
                                "ours_macs_x": rmean["ours"], "tp_macs_x": rmean["torch-pruning"]})


if __name__ == "__main__":
    main()
