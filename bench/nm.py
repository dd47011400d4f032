"""N:M sparse training from scratch: STE vs SR-STE vs progressive gradient flow.

MNIST (../shared/data, torchvision loader), two models trained from scratch with AdamW at
the same epochs for every method:
- CNN: conv 1->16 5x5 (dense: 1 input channel), pool, conv 16->32 5x5, pool, fc 1568->128,
  fc 128->10 (classifier, dense). N:M on conv2 and fc1 along the input dimension.
- ViT: timm VisionTransformer, 28x28, patch 7 (16 tokens), dim 64, depth 4, 4 heads, MLP
  ratio 2. N:M on every qkv/proj/fc1/fc2 weight (patch embedding and head dense).

Methods (masks re-selected from the dense weights every optimizer step, as the N:M papers do):
- STE: forward with the N:M mask, dense weights updated straight through.
- SR-STE (Zhou et al., 2021): STE plus λ(1−m)⊙w on pruned weights, λ = 2e-4.
- progressive (Bambhaniya et al., 2024, mask-decay gradient flow): pruned weights scaled by
  β(t) decaying linearly 1 -> 0 over the first 2/3 of training, with the SR-STE term.

Targets (issue 3): SR-STE >= STE at 2:4; progressive >= SR-STE at 1:8 (means over seeds,
both models pooled).
"""
from __future__ import annotations

import time

import timm
from torch import nn

from _common import mean_std, parser, progress, result, start, table, target
from _data import mnist_split
from _train import fit_eval, weight_sparsity
from sparsity_core import SRSTE, Constant, DecayingMask, Regime, SparsityCallback

PATTERNS = ("2:4", "1:4", "1:8")
METHODS = ("STE", "SR-STE", "progressive")


def cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(1568, 128), nn.ReLU(), nn.Linear(128, 10))


def vit() -> nn.Module:
    return timm.models.vision_transformer.VisionTransformer(
        img_size=28, patch_size=7, in_chans=1, num_classes=10, embed_dim=64, depth=4, num_heads=4, mlp_ratio=2.0)


MODELS = {"cnn": (cnn, r"^net\.0$"), "vit": (vit, "patch_embed")}  # first layers: 1 input channel


def callbacks(method: str, pattern: str, exclude, total: int):
    if method == "STE":
        enforcement = "ste"
    elif method == "SR-STE":
        enforcement = SRSTE(decay=2e-4)
    else:
        enforcement = Regime(DecayingMask(decay="linear", start_step=0, end_step=max(1, 2 * total // 3)), SRSTE(2e-4))
    n, m = (int(v) for v in pattern.split(":"))
    return [SparsityCallback(Constant(sparsity=1 - n / m, start_step=0, end_step=total), layout=pattern,
                             enforcement=enforcement, exclude=exclude, update_every=1, finalize=True,
                             log_per_target=False)]


def main():
    args = parser(__doc__, seeds=True).parse_args()
    start(args)
    n_train, epochs, seeds = (3000, 2, args.seeds or 1) if args.quick else (12000, 3, args.seeds or 3)
    train, test = mnist_split(n_train)
    if args.quick:  # the first 2,000 test images suffice for a smoke run
        test = (test[0][:2000], test[1][:2000])
    began = time.perf_counter()
    acc = {}
    for seed in range(seeds):
        for model, (make, exclude) in MODELS.items():
            for pattern in PATTERNS:
                for method in METHODS:
                    a, module = fit_eval(make, lambda mod, total: callbacks(method, pattern, exclude, total),
                                         train, test, epochs, seed)
                    cb = next(c for c in module.trainer.callbacks if isinstance(c, SparsityCallback))
                    sp = weight_sparsity([t.param for t in cb.controller.targets])
                    acc.setdefault((model, pattern, method), []).append(a)
                    progress(f"seed {seed} {model} {pattern} {method}: {a:.2f}%")
                    acc.setdefault(("sparsity", model, pattern, method), []).append(sp)
    mean, std = mean_std(acc)
    print(f"\nMNIST, {n_train} training images, {epochs} epochs, {seeds} seed(s), {args.threads} threads, "
          f"{time.perf_counter() - began:.0f} s; test accuracy % (mean ± std)\n")
    rows = []
    for model in MODELS:
        for pattern in PATTERNS:
            rows.append([model, pattern] + [f"{mean[(model, pattern, m)]:.2f} ± {std[(model, pattern, m)]:.2f}"
                                            for m in METHODS]
                        + [f"{mean[('sparsity', model, pattern, 'STE')]:.3f}"])
    table(["model", "pattern", *METHODS, "weight sparsity"], rows)
    print()

    def pooled(pattern, method):
        return sum(mean[(mo, pattern, method)] for mo in MODELS) / len(MODELS)

    sr24, ste24 = pooled("2:4", "SR-STE"), pooled("2:4", "STE")
    pg18, sr18 = pooled("1:8", "progressive"), pooled("1:8", "SR-STE")
    target("SR-STE >= STE at 2:4", sr24 >= ste24, f"SR-STE {sr24:.2f}%", f">= STE {ste24:.2f}%")
    target("progressive >= SR-STE at 1:8", pg18 >= sr18, f"progressive {pg18:.2f}%", f">= SR-STE {sr18:.2f}%")
    values = {"seeds": seeds, "epochs": epochs}
    for model in MODELS:
        for pattern in PATTERNS:
            for method in METHODS:
                key = f"{model}_{pattern.replace(':', 'of')}_{method.replace('-', '').lower()}"
                values[key] = mean[(model, pattern, method)]
    result("nm", values)


if __name__ == "__main__":
    main()
