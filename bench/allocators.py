"""Layer-wise budget allocators: one-shot Wanda pruning of a ViT trained on MNIST or CIFAR-10 (JPEG).

``--data cifar10``: the same layout with 3 channels, 32x32 images and patch 4 (64 tokens),
trained on the 50k CIFAR-10 (JPEG) training images for 5 epochs (quick: 10k x 2), tested on
10k (quick: 2k) test images. On MNIST the dense model is within 3 pt of uniform pruning at 70%,
so the first target cannot be met there whatever the allocator; CIFAR-10 leaves room.

Model: timm ``VisionTransformer`` (pretrained=False) for 28x28 MNIST, patch 7 (16 tokens),
1 input channel, embed 64, depth 4, 2 heads, MLP ratio 4, average pooling; a vit_tiny-like
layout scaled down so it trains on 2 CPU cores. AdamW (lr 2e-3, wd 0.05, one-cycle), batch
128, trained once on the first N MNIST training images (full: 60k x 3 epochs; quick: 12k x 2)
and cached in ``<tmp>/sparsity_suite_bench/`` (reruns load it).

Pruned: every Linear weight of the blocks (qkv, proj, fc1, fc2: 16 targets, 197k weights);
patch embedding and head stay dense. Calibration: the first 256 training images (quick:
128) through the core's ``ActivationObserver`` (with Gram matrices). Every allocator gets the
same per-weight score, Wanda's ``|W|·‖X‖₂`` (``criterion="wanda"``), through
``one_shot_prune(..., activations=...)`` at 50/60/70/80% of the weights (quick: 60/70%), and
the test accuracy (full: 10k images; quick: 2k) is printed without any fine-tuning.

Allocators (library defaults unless a method needs an input): uniform, global, erk, lamp;
owl (λ 0.08, M 5, outliers of ``|W|·‖X‖`` from the observer); ecoflap (probe = calibration
cross-entropy, 8 SPSA directions); knapsack (levels 0-95% step 5%, exact Gram reconstruction
error); softmax (energy importance, T 1); mirror_descent (100 steps); search (Týr-style,
calibration cross-entropy of the masked model, at most 120 evaluations; quick 24); random
search with the evaluation count the search used at the same level.

Timing: every allocator's ``allocate`` on 100 synthetic targets of 128x128 (1.6M units,
scores |N(0,1)|·(1 + i mod 7)), median of 3 after a warm-up (quick: 1). ECoFLaP's probe and
the searches' evaluation there are cheap stand-ins (a weight norm; the pruned score energy),
so its time is the allocator's own; the searches' time is evaluations × evaluation cost and
is reported per evaluation, not held to the 1 s target (the issue exempts search; random
search runs the same evaluation count).

Targets (issue 17): at 70% at least one non-uniform allocator beats uniform by >= 3 pt;
search beats random search (test accuracy at 70%); every allocator < 1 s on 100 targets
except search.
"""
from __future__ import annotations

import os
import tempfile
import time

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from _common import median, parser, progress, result, start, table, target
from _data import cifar10_split, mnist_split
from _train import accuracy
from sparsity_core.allocators import (ECoFLaP, Knapsack, MirrorDescent, OWL, RandomSearch, Search, Softmax,
                                      loss_probe)
from sparsity_core.allocators.budget import Budget
from sparsity_core.discovery import discover_targets
from sparsity_core.observe import observe
from sparsity_core.oneshot import one_shot_prune
from sparsity_core.registry import ALLOCATORS
from sparsity_core.targets import Target

NAMES = ("uniform", "global", "erk", "lamp", "owl", "ecoflap", "knapsack", "softmax", "mirror_descent", "search",
         "random_search")
SEARCHES = ("search", "random_search")
ARCHS = {"mnist": dict(img_size=28, patch_size=7, in_chans=1, num_classes=10, embed_dim=64, depth=4, num_heads=2,
                       mlp_ratio=4.0, class_token=False, global_pool="avg"),
         "cifar10": dict(img_size=32, patch_size=4, in_chans=3, num_classes=10, embed_dim=64, depth=4, num_heads=2,
                         mlp_ratio=4.0, class_token=False, global_pool="avg")}
ARCH = dict(ARCHS["mnist"])
CACHE = os.path.join(tempfile.gettempdir(), "sparsity_suite_bench")


def make_vit() -> nn.Module:
    return VisionTransformer(**ARCH)


def trained_vit(train, epochs: int, seed: int = 0) -> nn.Module:
    """The ViT trained on ``train`` for ``epochs`` (loaded from the cache when it is there)."""
    x, y = train
    key = "_".join(f"{k}{v}" for k, v in ARCH.items() if k not in ("img_size", "in_chans", "num_classes"))
    data = "mnist" if ARCH["in_chans"] == 1 else "cifar10"
    path = os.path.join(CACHE, f"vit_{data}_{key}_n{len(y)}_e{epochs}_s{seed}.pt")
    model = make_vit()
    if os.path.exists(path):
        model.load_state_dict(torch.load(path, weights_only=True))
        progress(f"loaded the trained ViT from {path}")
        return model.eval()
    torch.manual_seed(seed)
    model = make_vit()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    steps = epochs * ((len(y) + 127) // 128)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps, pct_start=0.15)
    gen = torch.Generator().manual_seed(seed)
    began = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y), 128):
            idx = perm[i:i + 128]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        progress(f"ViT epoch {epoch + 1}/{epochs}: loss {loss.item():.3f}, {time.perf_counter() - began:.0f} s")
    os.makedirs(CACHE, exist_ok=True)
    torch.save(model.state_dict(), path)
    return model.eval()


def ce_loss(model: nn.Module, batch) -> torch.Tensor:
    return F.cross_entropy(model(batch[0]), batch[1])


def build(name: str, acts, probe, max_evals: int, evals_used: dict, level: float):
    if name == "owl":
        return OWL(activations=acts)
    if name == "ecoflap":
        return ECoFLaP(probe=probe)
    if name == "knapsack":
        return Knapsack(activations=acts)
    if name == "softmax":
        return Softmax()
    if name == "mirror_descent":
        return MirrorDescent()
    if name == "search":
        return Search(probe=probe, max_evals=max_evals)
    if name == "random_search":
        return RandomSearch(probe=probe, evaluations=evals_used[level])
    return name


# -- timing on synthetic targets --------------------------------------------------------------
def synthetic_timing(repeats: int):
    gen = torch.Generator().manual_seed(0)
    ts = [Target(f"layer{i}.weight", param=nn.Parameter(torch.randn(128, 128, generator=gen) * (1 + i % 7)))
          for i in range(100)]
    scores = {t.name: t.param.detach().abs().reshape(-1) for t in ts}
    sq = {k: v.pow(2) for k, v in scores.items()}

    def probe() -> float:  # a stand-in calibration loss: cheap, reads the (perturbed) weights
        return float(sum(t.param.detach()[:8].pow(2).sum() for t in ts))

    def evaluate(masks) -> float:  # the score energy the masks prune
        return float(sum((sq[t.name] * (~masks[t.name].reshape(-1))).sum() for t in ts))

    made = {"ecoflap": lambda: ECoFLaP(probe=probe), "search": lambda: Search(evaluate=evaluate, max_evals=40),
            "random_search": lambda: RandomSearch(evaluate=evaluate, evaluations=40)}
    budget = Budget(sparsity=0.7)
    times, evals = {}, {}
    for name in NAMES:
        alloc = made[name]() if name in made else ALLOCATORS.build(name)
        alloc.allocate(ts, scores, budget)  # warm-up
        runs = []
        for _ in range(repeats):
            began = time.perf_counter()
            alloc.allocate(ts, scores, budget)
            runs.append(time.perf_counter() - began)
        times[name] = median(runs)
        evals[name] = getattr(alloc, "evaluations", 0)
        progress(f"synthetic 100 targets: {name} {times[name]:.3f} s")
    return times, evals


def main():
    p = parser(__doc__)
    p.add_argument("--data", choices=sorted(ARCHS), default="mnist",
                   help="mnist (patch 7) or cifar10 (CIFAR-10 (JPEG), patch 4, 5 epochs)")
    args = p.parse_args()
    start(args)
    ARCH.clear()
    ARCH.update(ARCHS[args.data])
    quick = args.quick
    if args.data == "mnist":
        n_train, epochs = (12000, 2) if quick else (60000, 3)
    else:
        n_train, epochs = (10000, 2) if quick else (50000, 5)
    n_calib, n_test = (128, 2000) if quick else (256, 10000)
    levels = (0.6, 0.7) if quick else (0.5, 0.6, 0.7, 0.8)
    max_evals = 24 if quick else 120
    began = time.perf_counter()
    if args.data == "mnist":
        train, test = mnist_split(n_train)
        test = (test[0][:n_test], test[1][:n_test])
    else:
        train, test = cifar10_split(n_train, n_test)
    model = trained_vit(train, epochs)
    dense_acc = accuracy(model, *test)
    targets = discover_targets(model, include=r"^blocks\.\d+\.(attn|mlp)\.")
    assert all(isinstance(dict(model.named_modules())[t.module_name], nn.Linear) for t in targets)
    calib = [(train[0][i:i + 64], train[1][i:i + 64]) for i in range(0, n_calib, 64)]
    acts = observe(model, targets, [b[0] for b in calib], gram=True)
    probe = loss_probe(model, calib, ce_loss)
    dense = {k: v.clone() for k, v in model.state_dict().items()}
    progress(f"dense ViT: {dense_acc:.2f}% on {n_test} test images; {len(targets)} targets, "
             f"{sum(t.num_units for t in targets)} weights")

    acc, wall, calib_loss, evals_used = {}, {}, {}, {}
    for level in levels:
        for name in NAMES:
            model.load_state_dict(dense)
            alloc = build(name, acts, probe, max_evals, evals_used, level)
            t0 = time.perf_counter()
            res = one_shot_prune(model, targets, None, level, criterion="wanda", allocator=alloc, activations=acts)
            wall[(name, level)] = time.perf_counter() - t0
            got = res.report["global"]
            assert abs(got - level) < 1e-3, (name, level, got)
            acc[(name, level)] = accuracy(model, *test)
            calib_loss[(name, level)] = probe()
            if name == "search":
                evals_used[level] = alloc.evaluations
            progress(f"{level:.0%} {name}: {acc[(name, level)]:.2f}% (calibration loss {calib_loss[(name, level)]:.3f},"
                     f" {wall[(name, level)]:.2f} s)")
    model.load_state_dict(dense)
    times, syn_evals = synthetic_timing(1 if quick else 3)

    name = "MNIST ViT (embed 64, depth 4, patch 7)" if args.data == "mnist" else \
        "CIFAR-10 (JPEG) ViT (embed 64, depth 4, patch 4)"
    print(f"\n{name}, {n_train} training images x {epochs} epochs, dense "
          f"{dense_acc:.2f}% on {n_test} test images; {len(targets)} Linear targets; Wanda scores; calibration "
          f"{n_calib} images; no fine-tuning; {args.threads} threads, load average "
          f"{os.getloadavg()[0]:.1f}; {time.perf_counter() - began:.0f} s\n")
    rows = []
    for name in NAMES:
        row = [name] + [f"{acc[(name, s)]:.2f}" for s in levels]
        row += [f"{calib_loss[(name, 0.7)]:.3f}", f"{wall[(name, 0.7)]:.2f}", f"{times[name]:.3f}"]
        row.append(str(evals_used.get(0.7, "")) if name in SEARCHES else "-")
        rows.append(row)
    table(["allocator"] + [f"acc {s:.0%}" for s in levels]
          + ["calib loss 70%", "prune s 70%", "alloc s (100 synth.)", "evals 70%"], rows)
    per_eval = {n: times[n] / max(syn_evals[n], 1) for n in SEARCHES}
    print(f"\nsearches on the synthetic targets: {syn_evals['search']} / {syn_evals['random_search']} evaluations, "
          f"{per_eval['search'] * 1e3:.1f} / {per_eval['random_search'] * 1e3:.1f} ms per evaluation (allocator + "
          "stand-in evaluation)\n")

    uni70 = acc[("uniform", 0.7)]
    others = {n: acc[(n, 0.7)] for n in NAMES if n != "uniform"}
    best = max(others, key=others.get)
    target("at 70% a non-uniform allocator beats uniform by >= 3 pt", others[best] - uni70 >= 3.0,
           f"{best} {others[best]:.2f}% vs uniform {uni70:.2f}% = {others[best] - uni70:+.2f} pt", "+3.00 pt")
    s70, r70 = acc[("search", 0.7)], acc[("random_search", 0.7)]
    target("search beats random search (70%, same evaluation count)", s70 > r70,
           f"search {s70:.2f}% vs random {r70:.2f}%; calibration loss {calib_loss[('search', 0.7)]:.3f} vs "
           f"{calib_loss[('random_search', 0.7)]:.3f}", "search > random search")
    slow = {n: t for n, t in times.items() if n not in SEARCHES and t >= 1.0}
    worst = max((n for n in NAMES if n not in SEARCHES), key=times.get)
    target("every allocator < 1 s on 100 targets except search", not slow,
           f"slowest {worst} {times[worst]:.3f} s" + (f"; over: {', '.join(sorted(slow))}" if slow else ""), "< 1 s")

    values = {"dense": dense_acc}
    values.update({f"{name}_70": acc[(name, 0.7)] for name in NAMES})
    values.update({"best_70_alloc": best, "best_minus_uniform_70": others[best] - uni70,
                   "evals_70": evals_used.get(0.7, 0), "slowest_nonsearch": worst,
                   "slowest_nonsearch_s": times[worst]})
    result("allocators", values)


if __name__ == "__main__":
    main()
