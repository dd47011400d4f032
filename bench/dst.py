"""Sparse training from scratch at 90% and 95%: static random ERK vs SET vs RigL vs Hebbian
regrowth vs dense.

MNIST (../shared/data), LeNet-300-100 MLP (784-300-100-10; SET's MLP setting), AdamW at
the same epochs for every method. All sparse runs start from the same random ERK mask
(random scores, Erdős–Rényi-kernel layer densities; Liu et al., 2022) at step 0 on the two
hidden layers (the classifier stays dense); the dynamic ones then prune-and-regrow every
1/25 of training (93 optimizer steps at full size; RigL uses 100) with a drop fraction of
0.3, cosine-decayed to 0 at 75% of training (RigL's recipe), regrowing by random scores
(SET), dense-gradient magnitude (RigL) or input/output activation correlation (Hebbian).

Target (issue 3): RigL >= static random ERK at 95% (RigL's claim).
"""
from __future__ import annotations

import time

from torch import nn

from _common import mean_std, parser, progress, result, start, table, target
from _data import mnist_split
from _train import fit_eval, weight_sparsity
from sparsity_core import PruneRegrow, RandomScores, SparsityCallback

LEVELS = (0.9, 0.95)
METHODS = ("static ERK", "SET", "RigL", "Hebbian")
REGROW = {"SET": "random", "RigL": "gradient", "Hebbian": "hebbian"}


def mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU(),
                         nn.Linear(100, 10))


def callbacks(method: str, sparsity: float, total: int, seed: int):
    if method == "dense":
        return []
    if method == "static ERK":
        enforcement = "hard"
    else:
        every = max(10, total // 25)  # 93 steps at full size, as RigL's 100
        enforcement = PruneRegrow(regrow=REGROW[method], every=every, drop_fraction=0.3, end_step=max(every, 3 * total // 4))
    return [SparsityCallback(sparsity, criterion=RandomScores(seed=seed), allocator="erk",
                             enforcement=enforcement, finalize=True, log_per_target=False)]


def main():
    args = parser(__doc__, seeds=True).parse_args()
    start(args)
    n_train, epochs, seeds = (8000, 3, args.seeds or 1) if args.quick else (60000, 3, args.seeds or 2)
    train, test = mnist_split(n_train)
    began = time.perf_counter()
    acc, layer = {}, {}
    for seed in range(seeds):
        acc.setdefault(("dense", 0.0), []).append(fit_eval(mlp, lambda m, t: [], train, test, epochs, seed)[0])
        for s in LEVELS:
            for method in METHODS:
                a, module = fit_eval(mlp, lambda m, total: callbacks(method, s, total, seed), train, test, epochs, seed)
                acc.setdefault((method, s), []).append(a)
                progress(f"seed {seed} {method} {s:.0%}: {a:.2f}%")
                weights = [module.net[1].weight, module.net[3].weight]
                layer[(method, s)] = [1 - weight_sparsity([w]) for w in weights] + [weight_sparsity(weights)]
    mean, std = mean_std(acc)
    print(f"\nMNIST LeNet-300-100, {n_train} training images, {epochs} epochs, {seeds} seed(s), {args.threads} "
          f"threads, {time.perf_counter() - began:.0f} s; test accuracy % (mean ± std)\n")
    rows = [["dense", "0%", f"{mean[('dense', 0.0)]:.2f} ± {std[('dense', 0.0)]:.2f}", "1.000 / 1.000", "0.000"]]
    for s in LEVELS:
        for method in METHODS:
            d1, d2, sp = layer[(method, s)]
            rows.append([method, f"{s:.0%}", f"{mean[(method, s)]:.2f} ± {std[(method, s)]:.2f}",
                         f"{d1:.3f} / {d2:.3f}", f"{sp:.3f}"])
    table(["method", "sparsity", "test acc %", "density fc1 / fc2 (last seed)", "measured sparsity"], rows)
    print()
    rigl, static = mean[("RigL", 0.95)], mean[("static ERK", 0.95)]
    target("RigL >= static random ERK at 95%", rigl >= static, f"RigL {rigl:.2f}%", f">= static ERK {static:.2f}%")
    values = {"dense": mean[("dense", 0.0)], "seeds": seeds, "epochs": epochs}
    for s in LEVELS:
        for method in METHODS:
            values[f"{method.split()[0].lower()}_{int(s * 100)}"] = mean[(method, s)]
    result("dst", values)


if __name__ == "__main__":
    main()
