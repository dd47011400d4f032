"""Speed from unstructured and 2:4 sparsity: ``sparsity_core.sparse_export`` vs dense.

Cases (random weights, magnitude-masked to the sparsity; inference, no gradients):

- a 4096x4096 ``nn.Linear`` (input ``[batch, 4096]``);
- an MLP-Mixer-B/16 channel MLP (timm ``Mlp`` 768 -> 3072 -> 768, GELU) on 196 tokens;
- a ViT-S/16 MLP block (timm ``Mlp`` 384 -> 1536 -> 384) on 197 tokens;
- end to end: timm ``vit_small_patch16_224`` (``pretrained=False``), every ``nn.Linear`` in its
  blocks masked (quick: 90 % only, batch 1).

Sparsities 80 / 90 / 95 % unstructured (per-layer magnitude) and 2:4 (per group of four
inputs, the two largest kept); batch 1 and 32 (quick: the 95 % and 2:4 rows, batch 1 for
the blocks). For each row the export measures every masked layer (dense vs CSR / BSR on this
CPU) and keeps a sparse format only where it is at least 1.1x faster, then times the whole model
both ways and puts every layer back if the sparse one is not faster end to end; the table then
times the dense masked model against the exported one end to end, in a separate run, interleaved after warm-up, median of
repeats, threads stated, and checks their outputs agree to 1e-5 (relative).

Targets (issue): >= 1.5x at 95 % for Linear layers >= 1024 wide at batch 1 on the CPU; never
slower than dense end to end (judged as exported / dense <= 1.05, the timing noise here).
"""
from __future__ import annotations

import time

import torch
from torch import nn

from _common import median, parser, progress, result, rotations, start, table, target
from sparsity_core.sparse_export import relative_error, export_sparse

SPARSITIES = ("80%", "90%", "95%", "2:4")
GOAL_SPEEDUP, GOAL_NOT_SLOWER = 1.5, 1.05


def mask_(model: nn.Module, sparsity: str) -> None:
    """Magnitude-mask every ``nn.Linear`` in place: a fraction per layer, or 2:4 on inputs."""
    with torch.no_grad():
        for m in model.modules():
            if not isinstance(m, nn.Linear):
                continue
            w = m.weight
            if sparsity == "2:4":
                groups = w.abs().reshape(-1, 4)
                keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(1, groups.topk(2, dim=1).indices, True)
                w.mul_(keep.reshape(w.shape))
            else:
                k = int(round(float(sparsity.rstrip("%")) / 100 * w.numel()))
                if k:
                    w.view(-1)[w.abs().flatten().argsort()[:k]] = 0.0


def cases(quick: bool):
    """``(name, builder, input builder(batch), batches, sparsities)``."""
    from timm.layers import Mlp
    from timm.models import create_model

    def linear():  # inside a container: the export replaces layers in place, not the model object itself
        return nn.Sequential(nn.Linear(4096, 4096))

    def mixer():
        return Mlp(768, 3072, act_layer=nn.GELU)

    def vit_mlp():
        return Mlp(384, 1536, act_layer=nn.GELU)

    def vit():
        return create_model("vit_small_patch16_224", pretrained=False)

    all_s = ("95%", "2:4") if quick else SPARSITIES
    return [
        ("linear 4096x4096", linear, lambda b: torch.randn(b, 4096), (1, 32), all_s),
        ("mixer-b16 channel MLP 768-3072", mixer, lambda b: torch.randn(b, 196, 768), (1,) if quick else (1, 32), all_s),
        ("vit-s16 MLP 384-1536", vit_mlp, lambda b: torch.randn(b, 197, 384), (1,) if quick else (1, 32), all_s),
        ("vit_small end to end", vit, lambda b: torch.randn(b, 3, 224, 224), (1,), ("90%",) if quick else ("90%", "95%")),
    ]


def timed(models: dict, x: torch.Tensor, repeats: int) -> dict:
    times = {k: [] for k in models}
    with torch.no_grad():
        for m in models.values():
            for _ in range(2):
                m(x)
        for order in rotations(list(models), repeats):
            for k in order:
                t0 = time.perf_counter()
                models[k](x)
                times[k].append(time.perf_counter() - t0)
    return {k: 1e3 * median(v) for k, v in times.items()}


def main() -> None:
    p = parser(__doc__)
    args = p.parse_args()
    start(args)
    began = time.perf_counter()
    repeats = 7 if args.quick else 21
    rows, speedups, worst = [], {}, 0.0
    for name, build, make_input, batches, sparsities in cases(args.quick):
        for sparsity in sparsities:
            torch.manual_seed(0)
            dense = build().eval()
            mask_(dense, sparsity)
            for batch in batches:
                x = make_input(batch)
                exported = build().eval()
                exported.load_state_dict(dense.state_dict())
                with torch.no_grad():
                    ref = dense(x)
                    report = export_sparse(exported, x, repeats=max(5, repeats // 2))
                    err = relative_error(exported(x), ref)
                t = timed({"dense": dense, "exported": exported}, x, repeats)
                ratio = t["exported"] / t["dense"]
                worst = max(worst, ratio)
                chosen = sorted({c.chosen for c in report.layers})
                widest = max((max(c.shape) for c in report.layers), default=0)
                if sparsity == "95%" and batch == 1 and widest >= 1024 and "end to end" not in name:
                    speedups[name] = 1.0 / ratio
                rows.append([name, sparsity, batch, f"{len(report.replaced)}/{len(report.layers)}", ",".join(chosen),
                             f"{t['dense']:.2f}", f"{t['exported']:.2f}", f"{1 / ratio:.2f}x", f"{err:.1e}"])
                progress(f"{name} {sparsity} batch {batch}: {1 / ratio:.2f}x ({time.perf_counter() - began:.0f} s)")
    print(f"sparse export vs dense masked model, CPU, {torch.get_num_threads()} threads, median of {repeats} "
          f"interleaved repeats after warm-up; per-layer choice needs >= 1.1x measured at export, "
          "and the whole exported model must not be slower at export")
    table(["case", "sparsity", "batch", "layers sparse", "formats", "dense ms", "exported ms", "speed-up",
           "rel. error"], rows)
    print(f"total time {time.perf_counter() - began:.0f} s")
    best = min(speedups.values(), default=0.0)
    target(f"sparse export >= {GOAL_SPEEDUP}x at 95% for Linear layers >= 1024 wide, batch 1",
           bool(speedups) and best >= GOAL_SPEEDUP,
           ", ".join(f"{k} {v:.2f}x" for k, v in speedups.items()), f">= {GOAL_SPEEDUP}x each")
    target("sparse export never slower than dense end to end", worst <= GOAL_NOT_SLOWER,
           f"worst exported/dense {worst:.2f}", f"<= {GOAL_NOT_SLOWER} (noise)")
    result("sparse_inference", {"min_speedup_95_batch1": best, "worst_ratio": worst, "rows": len(rows),
                                "threads": torch.get_num_threads()})


if __name__ == "__main__":
    main()
