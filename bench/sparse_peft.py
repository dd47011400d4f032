"""Sparse PEFT against LoRA: accuracy at matched trainable budgets, and what each method costs in memory.

Text (issue 16): all-MiniLM-L6-v2 (real pretrained weights) on SST-2 through
``recipes/sparse_peft.py``: 2,000 training sentences (quick: 256), 2 epochs (quick: 1), dev
accuracy on the 872 dev sentences (quick: 200), seeds 0-2 (quick: 0). Methods: full
fine-tuning (lr 3e-5), HF peft's LoRA r=8 on query/value (the baseline), SNELL r=8 (sparsity
0.5), PST r=4/3 (weights pruned to 50% on a cubic ramp), DSEE r=6 + 1,536 sparse entries;
every adapter method at 73,728 trainable adapter entries and lr 1e-3, the classifier (770)
trained by all. Memory (one batch of 32 sentences, AdamW, :func:`sparsity_plugins.peft.compare_memory`):
trainable parameters, optimizer-state bytes, adapter bytes on disk, peak tensor bytes of a
training step (torch.profiler memory timeline), step time.

Vision: a timm ViT (32x32, patch 4, width 96, depth 4, 3 heads) pre-trained here on MNIST
(20,000 images, 2 epochs; quick: 5,000, 1), then adapted to CIFAR-10 (JPEG) (5,000 training
images, 3 epochs, 2,000 test images; quick: 1,000, 1, 500) by each method on the ``qkv``
projections (3,072 trainable adapter entries per block; the new head trains in all); full
fine-tuning at lr 3e-4, adapters at 1e-3.

Learning rates (``--select-lr``, on by default): each method's learning rate is chosen from a
grid (full: 1e-5 / 3e-5 / 1e-4 text, 1e-4 / 3e-4 / 1e-3 vision; adapters: 1e-3 / 3e-3 / 1e-2 / 3e-2) by
accuracy on *held-out training data* (text: 400 training sentences not trained on, seed 0;
vision: 1,000 CIFAR-10 training images not trained on), never on dev or test; the seeded runs
then use the chosen rate. ``--no-select-lr`` uses the fixed rates above.

Targets (issue 16): SNELL accuracy >= LoRA's at the same rank with optimizer-state bytes <=
LoRA's; every sparse method (SNELL, PST, DSEE) >= LoRA - 1 pt (means over seeds).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F

from _common import parser, progress, result, select_lr, start, table, target
from _data import cifar10_split, mnist_split

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "recipes"))
import sparse_peft as recipe  # noqa: E402

from sparsity_core.schedules import Cubic  # noqa: E402
from sparsity_plugins.peft import AdapterConfig, PeftLoRA, compare_memory, inject_adapters, memory_table  # noqa: E402
from sparsity_plugins.peft.memory import optimizer_state_bytes  # noqa: E402

METHODS = ["full", "peft_lora", "snell", "pst", "dsee"]
SPARSE = ["snell", "pst", "dsee"]
VIT_QKV = r"blocks\.\d+\.attn\.qkv"
VIT_PARAMS = {"snell": {"r": 8, "sparsity": 0.5}, "pst": {"r": 4, "r_score": 3}, "dsee": {"r": 6, "n_sparse": 768}}


TEXT_LR = {"full": 3e-5, "adapter": 1e-3}
VISION_LR = {"full": 3e-4, "adapter": 1e-3}
TEXT_GRID = {"full": [1e-5, 3e-5, 1e-4], "adapter": [1e-3, 3e-3, 1e-2, 3e-2]}
VISION_GRID = {"full": [1e-4, 3e-4, 1e-3], "adapter": [1e-3, 3e-3, 1e-2, 3e-2]}


def kind(method: str) -> str:
    return "full" if method == "full" else "adapter"


def text_run(method: str, seed: int, lr: float, n_train: int, epochs: int, n_dev: int = 0,
             holdout: int = 0) -> Dict[str, float]:
    args = [f"--model.method={method}", f"--model.seed={seed}", f"--model.lr={lr}", f"--data.seed={seed}",
            f"--data.train_subset={n_train}", f"--data.dev_subset={n_dev}", f"--data.holdout={holdout}",
            f"--trainer.max_epochs={epochs}", "--trainer.enable_progress_bar=false", f"--seed_everything={seed}"]
    return recipe.main(args)


def text_runs(quick: bool, seeds: List[int], select: bool):
    n_train, epochs, n_dev = (256, 1, 200) if quick else (2000, 2, 0)
    lrs = {m: TEXT_LR[kind(m)] for m in METHODS}
    rows: List[list] = []
    if select:
        held = (64, 1, 64) if quick else (1600, 2, 400)
        lrs, rows = select_lr("text", METHODS, lambda m: TEXT_GRID[kind(m)],
                              lambda m, lr: text_run(m, 0, lr, held[0], held[1], holdout=held[2])["dev_accuracy"])
    out: Dict[str, List[Dict[str, float]]] = {m: [] for m in METHODS}
    for seed in seeds:
        for method in METHODS:
            out[method].append(text_run(method, seed, lrs[method], n_train, epochs, n_dev))
            progress(f"text {method} seed {seed}: {100 * out[method][-1]['dev_accuracy']:.2f}%")
    return out, lrs, rows


def text_memory():
    """``(rows, markdown table)`` of :func:`compare_memory` on one batch of 32 training sentences."""
    data = recipe.SST2Data(train_subset=32, dev_subset=32)
    data.setup()
    batch = next(iter(data.train_dataloader()))

    def loss_fn(model, b):
        return F.cross_entropy(model(b["input_ids"], b["attention_mask"]), b["labels"])

    specs = {"full": "full", "peft_lora": PeftLoRA(r=8, target_modules=recipe.LAYERS, modules_to_save=["head"])}
    for m in SPARSE:
        specs[m] = AdapterConfig(method=m, target_modules=recipe.LAYERS, modules_to_save="head", params=recipe.METHODS[m])
    rows = compare_memory(lambda: recipe.SentimentModel(method="full"), batch, loss_fn, specs)
    return rows, memory_table(rows, baseline="peft_lora")


def vit():
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(img_size=32, patch_size=4, embed_dim=96, depth=4, num_heads=3, mlp_ratio=2.0,
                             num_classes=10)


def to_rgb32(x: torch.Tensor) -> torch.Tensor:
    return F.pad(x, (2, 2, 2, 2), value=float(x.min())).expand(-1, 3, -1, -1).contiguous()


def train(model, params, x, y, epochs, lr, seed, per_step=None) -> Tuple[float, int]:
    """AdamW epochs over ``(x, y)`` in batches of 64 (``per_step(step)`` before each step);
    returns the median step time in ms and the optimizer-state bytes."""
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    g = torch.Generator().manual_seed(seed)
    times, step = [], 0
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=g).split(64):
            if per_step is not None:
                per_step(step)
            t0 = time.perf_counter()
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            times.append(time.perf_counter() - t0)
            step += 1
    return 1000 * statistics.median(times), optimizer_state_bytes(opt)


@torch.no_grad()
def accuracy(model, x, y) -> float:
    model.eval()
    return sum(int((model(x[i:i + 500]).argmax(-1) == y[i:i + 500]).sum()) for i in range(0, len(x), 500)) / len(x)


def adapt(method: str, pretrained, data, epochs: int, seed: int, lr: float) -> Dict[str, float]:
    (xt, yt), (xe, ye) = data
    torch.manual_seed(seed)
    model = vit()
    model.load_state_dict(pretrained)
    model.reset_classifier(10)  # a fresh head for the new task
    per_step = None
    if method == "full":
        params = list(model.parameters())
    elif method == "peft_lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=8, lora_alpha=8, target_modules=VIT_QKV, modules_to_save=["head"]))
        params = [p for p in model.parameters() if p.requires_grad]
    else:
        adapters = inject_adapters(model, method=method, target_modules=VIT_QKV, modules_to_save="head",
                                   **VIT_PARAMS[method])
        params = list(adapters.trainable_parameters().values())
        if method == "pst":
            ramp = Cubic(start_step=0, end_step=max(2, epochs * len(xt) // 64 // 2), final_sparsity=0.5)
            per_step = lambda step: adapters.set_sparsity(ramp.value(step))  # noqa: E731
    ms, state = train(model, params, xt, yt, epochs, lr, seed, per_step)
    return {"accuracy": accuracy(model, xe, ye), "trainable": float(sum(p.numel() for p in params)), "step_ms": ms,
            "state_bytes": float(state)}


def vision_runs(quick: bool, seeds: List[int], select: bool):
    n_mnist, mnist_epochs, n_train, n_test, epochs = (5000, 1, 1000, 500, 1) if quick else (20000, 2, 5000, 2000, 3)
    n_held = 250 if quick else 1000
    (xm, ym), _ = mnist_split(n_mnist)
    torch.manual_seed(0)
    base = vit()
    train(base, list(base.parameters()), to_rgb32(xm), ym, mnist_epochs, 1e-3, 0)
    pretrained = {k: v.clone() for k, v in base.state_dict().items()}
    (xt, yt), test = cifar10_split(n_train + n_held, n_test)
    data = ((xt[:n_train], yt[:n_train]), test)
    lrs = {m: VISION_LR[kind(m)] for m in METHODS}
    rows: List[list] = []
    if select:  # the held-out images are training images never trained on
        held = ((xt[:n_train], yt[:n_train]), (xt[n_train:], yt[n_train:]))
        lrs, rows = select_lr("vision", METHODS, lambda m: VISION_GRID[kind(m)],
                              lambda m, lr: adapt(m, pretrained, held, epochs, 0, lr)["accuracy"])
    out: Dict[str, List[Dict[str, float]]] = {m: [] for m in METHODS}
    for seed in seeds:
        for method in METHODS:
            out[method].append(adapt(method, pretrained, data, epochs, seed, lrs[method]))
            progress(f"vision {method} seed {seed}: {100 * out[method][-1]['accuracy']:.2f}%")
    return out, lrs, rows


def summarize(runs: Dict[str, List[Dict[str, float]]], key: str) -> Dict[str, float]:
    return {m: 100 * statistics.mean(r[key] for r in rs) for m, rs in runs.items()}


def main() -> None:
    p = parser(__doc__, seeds=True)
    p.add_argument("--select-lr", action=argparse.BooleanOptionalAction, default=True,
                   help="choose each method's learning rate on held-out training data first")
    args = p.parse_args()
    start(args)
    seeds = list(range(args.seeds or (1 if args.quick else 3)))
    text, text_lrs, text_sel = text_runs(args.quick, seeds, args.select_lr)
    rows, mem = text_memory()
    vision, vision_lrs, vision_sel = vision_runs(args.quick, seeds, args.select_lr)
    for name, sel, grid in (("SST-2", text_sel, TEXT_GRID), ("CIFAR-10", vision_sel, VISION_GRID)):
        if sel:
            print(f"\nLearning rate chosen on held-out training data ({name}, seed 0): accuracy per grid rate (%)")
            width = max(len(r) for r in sel)
            table(["method"] + [f"rate {i + 1}" for i in range(width - 2)] + ["chosen"],
                  [r[:-1] + ["-"] * (width - len(r)) + r[-1:] for r in sel])
    text_acc, vis_acc = summarize(text, "dev_accuracy"), summarize(vision, "accuracy")
    sd = lambda rs, k: 100 * statistics.stdev(r[k] for r in rs) if len(rs) > 1 else 0.0  # noqa: E731
    print(f"\nSST-2 dev accuracy, MiniLM, {len(seeds)} seed(s), {args.threads} thread(s)")
    table(["method", "lr", "dev acc (%)", "std", "trainable", "step (ms)"],
          [[m, f"{text_lrs[m]:g}", f"{text_acc[m]:.2f}", f"{sd(text[m], 'dev_accuracy'):.2f}",
            f"{int(text[m][0]['trainable']):,}", f"{statistics.median(r['step_ms'] for r in text[m]):.0f}"]
           for m in METHODS])
    print("\nMemory of one training step (MiniLM, batch 32, AdamW)\n" + mem)
    print(f"\nCIFAR-10 (JPEG) test accuracy, ViT pre-trained on MNIST, {len(seeds)} seed(s)")
    table(["method", "lr", "test acc (%)", "std", "trainable", "step (ms)"],
          [[m, f"{vision_lrs[m]:g}", f"{vis_acc[m]:.2f}", f"{sd(vision[m], 'accuracy'):.2f}",
            f"{int(vision[m][0]['trainable']):,}", f"{statistics.median(r['step_ms'] for r in vision[m]):.0f}"]
           for m in METHODS])
    states = {"text": {r.method: r.optimizer_state_bytes for r in rows},
              "vision": {m: int(vision[m][0]["state_bytes"]) for m in METHODS}}
    for name, acc in (("text", text_acc), ("vision", vis_acc)):
        state = states[name]
        ok = acc["snell"] >= acc["peft_lora"] and state["snell"] <= state["peft_lora"]
        target(f"SNELL >= LoRA r=8 with optimizer state <= LoRA's ({name})", ok,
               f"{acc['snell']:.2f} vs {acc['peft_lora']:.2f}%, {state['snell']:,} vs {state['peft_lora']:,} B",
               ">= and <=")
        worst = min(SPARSE, key=lambda m: acc[m])
        target(f"every sparse method >= LoRA - 1 pt ({name})", acc[worst] >= acc["peft_lora"] - 1.0,
               f"worst {worst} {acc[worst]:.2f} vs {acc['peft_lora'] - 1.0:.2f}", ">= LoRA - 1")
    result("sparse_peft", {**{f"text_{m}": round(text_acc[m], 2) for m in METHODS},
                           **{f"vision_{m}": round(vis_acc[m], 2) for m in METHODS},
                           "snell_state_bytes": states["text"]["snell"], "lora_state_bytes": states["text"]["peft_lora"]})


if __name__ == "__main__":
    main()
