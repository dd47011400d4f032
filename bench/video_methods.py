"""Sparse attention methods for video DiTs side by side: error vs density, iso-density, end to end.

In the spirit of The Sparse Frontier (Nawrot et al., 2025): every method of the video plugin
runs on the same captured self-attention inputs, and is compared by the relative L2 error of
its attention output against dense SDPA at the density it computed (the fraction of the
``S²`` query-key pairs), then end to end at one common density.

Model: a random-init ``WanTransformer3DModel`` (8 heads × 64, 2 layers, fp32), latent
8 × 32 × 32 → 8 × 16 × 16 = 2048 video tokens (quick: 4 × 32 × 32 → 1024), blocks of 64
tokens. Two cases, labelled in every row: ``random`` (the plain random-init model; its
attention has no spatio-temporal structure) and ``structured`` (after ``add_rope_locality``:
heads local in space and time, in the frame, or across frames, like trained video DiTs').

1. **Error vs density**: q / k / v of every self-attention call of one forward at each of
   three timesteps (900, 500, 100) are captured with an observer; per method and setting,
   the mean relative L2 of the attention output over those calls, and the mean computed
   density. Methods and their knob:

   - ``pattern``: each static Sparse-vDiT pattern (one for every head), density fixed;
   - ``searched``: ``PatternSearch`` per-head plans at global budgets of measured attention
     cost (sparsity 0.5 / 0.7 / 0.85; a budget no plan fits is reported and skipped);
   - ``oracle``: the top ``d`` of key blocks per query block by true block attention mass
     (needs the dense map: the best a selector with the same number of blocks for every
     head can do by mass; methods with per-head budgets can beat it at lower density);
   - ``blasst``: threshold ``λ``; ``proxyattn``: mass ``γ`` with 2 proxy heads (groups of 4
     heads), ``proxyattn-G8``: every head its own proxy; ``s2o``: stopping ``ε``;
   - ``seer`` / ``tdma``: gates distilled with ``GateDistillation`` (Lightning, Adam), then
     run at density ``d``.
2. **Iso-density** (iso-FLOP for the attention product): per method, its lowest-error setting
   whose density is at most 30 %, ranked by attention error (a method with no such setting
   is named as such).
3. **End to end**: that setting installed in the model for a full denoising loop (same seed);
   relative L2 of the final latent against the dense run.

No numeric target in issue 14 for this evaluation; the RESULT line carries each method's
attention error at density <= 30 % (structured case). Dynamic methods here are CPU references
of their decision rules: this benchmark measures accuracy, not speed (``bench/attention_kernel``
and ``bench/video_e2e`` time the kernels).
"""
from __future__ import annotations

import math
import time
from typing import Dict, List, Optional, Tuple

import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from _common import parser, progress, result, start, table
from sparsity_core.allocators.knapsack import InfeasibleBudget
from sparsity_core.program import Host
from sparsity_plugins.video import (AttentionPlan, Blasst, PatternSearch, ProxyAttn, S2O, SeerAttention,
                                    TrainableDynamicMask, calibration_inputs, calibration_loader, install,
                                    tiny_inputs, tiny_model)
from sparsity_plugins.video.distill import GateDistillation
from sparsity_plugins.video.dynamic import DynamicAttention, per_head_attention
from sparsity_plugins.video.evaluation import add_rope_locality, denoise, relative_l2
from sparsity_plugins.video.layout import TokenLayout
from sparsity_plugins.video.patterns import block_mask, density

BLOCK, BUDGET = 64, 0.3
TIMESTEPS = (900.0, 500.0, 100.0)
PATTERNS = ["stripe", "diagonal", "diagonal(t=1)", "diagonal+stripe", "diagonal(h=1,w=1)", "diagonal(h=2,w=2)",
            "diagonal(h=4,w=4)", "diagonal(h=2,w=2)+stripe", "multidiagonal(h=1,w=1)", "multidiagonal(h=2,w=2)"]
Call = Tuple[int, torch.Tensor, torch.Tensor, torch.Tensor, Optional[float], TokenLayout]


class Oracle(DynamicAttention):
    """Top ``density`` of the key blocks per query block by the dense map's block mass
    (``Σ`` of the softmax weights in the tile), per head, the same count for every head."""

    name = "oracle"

    def __init__(self, density: float) -> None:
        super().__init__()
        self.density = density

    def select(self, layer, q, k, v, scale, layout, block_size):
        b, h, s, _ = q.shape
        nb = -(-s // block_size)
        scale = q.shape[-1] ** -0.5 if scale is None else scale
        mass = q.new_zeros(b, h, nb, nb)
        for j in range(h):  # one head at a time: [B, S, S] at most
            a = F.pad(torch.softmax(q[:, j] @ k[:, j].transpose(-1, -2) * scale, -1), (0, nb * block_size - s))
            a = F.pad(a, (0, 0, 0, nb * block_size - s))
            mass[:, j] = a.view(b, nb, block_size, nb, block_size).sum((2, 4))
        top = mass.topk(max(1, math.ceil(self.density * nb - 1e-9)), -1).indices  # as the gates' keep
        return torch.zeros_like(mass, dtype=torch.bool).scatter_(-1, top, True)


def capture(model, inputs) -> List[Call]:
    """q / k / v of every self-attention call of one forward per timestep."""
    calls: List[Call] = []
    with install(model, block_size=BLOCK) as session:
        def observe(layer, q, k, v, scale):
            calls.append((layer, q.clone(), k.clone(), v.clone(), scale, session.call_layout))
        session.observer = observe
        with torch.no_grad():
            for t in TIMESTEPS:
                model(**dict(inputs, timestep=torch.tensor([t])))
    return calls


def reference(calls: List[Call]) -> List[torch.Tensor]:
    return [F.scaled_dot_product_attention(q, k, v, scale=scale) for _, q, k, v, scale, _ in calls]


def masked_error(calls, refs, masks_of) -> float:
    """Mean relative L2 of attention under ``masks_of(layer) -> [H, nb, nb]`` masks."""
    errs = []
    for (layer, q, k, v, scale, _), ref in zip(calls, refs):
        masks = masks_of(layer).unsqueeze(0).expand(q.shape[0], -1, -1, -1)
        errs.append(relative_l2(per_head_attention(q, k, v, masks, BLOCK, scale), ref))
    return sum(errs) / len(errs)


def method_error(method: DynamicAttention, calls, refs) -> Tuple[float, float]:
    """Mean relative L2 and mean computed density of a dynamic method over the calls."""
    method.reset_stats()
    with torch.no_grad():
        errs = [relative_l2(method.attend(layer, q, k, v, scale, layout, BLOCK), ref)
                for (layer, q, k, v, scale, layout), ref in zip(calls, refs)]
    return sum(errs) / len(errs), method.stats["density"]


def search_plan(model, inputs, sparsity: float, calib: int) -> AttentionPlan:
    search = PatternSearch(block_size=BLOCK, error_budget=0.05, sparsity=sparsity)
    search.attach(Host(model))
    denoise(model, inputs, calib, on_step=search.after_optimizer_step, seed=1)
    return search.finalize()


def plan_masks(plan: AttentionPlan, layout: TokenLayout):
    cache = {layer: torch.stack([block_mask(p, layout, BLOCK) for p in plan.parsed[layer]])
             for layer in range(plan.layers)}
    return lambda layer: cache[layer]


def distilled(cls, model, inputs_kw, steps: int):
    torch.manual_seed(0)
    method = cls(2, 8, 64, density=0.25)
    data = calibration_inputs(model, seeds=range(2), timesteps=TIMESTEPS, **inputs_kw)
    trainer = pl.Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(GateDistillation(model, method, block_size=BLOCK, lr=1e-2), calibration_loader(data))
    return method


def curves(model, inputs, inputs_kw, args) -> Tuple[List[dict], TokenLayout]:
    """Rows ``{method, setting, density, error, install}`` (``install``: what end to end runs)
    and the token layout."""
    calls = capture(model, inputs)
    refs = reference(calls)
    layout = calls[0][5]
    s = layout.total
    rows = []
    for p in PATTERNS:
        mask = block_mask(p, layout, BLOCK)
        rows.append(dict(method="pattern", setting=p, density=density(mask, s, BLOCK),
                         error=masked_error(calls, refs, lambda layer, m=mask: m.expand(8, -1, -1)),
                         install=("plan", AttentionPlan.uniform(type(model).__name__, layout, 2, 8, p, block_size=BLOCK))))
    for sp in args.search:
        try:
            plan = search_plan(model, inputs, sp, args.calib)
        except InfeasibleBudget as e:  # the budget is on measured cost: small sequences carry overhead
            progress(f"  search at sparsity {sp}: {e}")
            continue
        rows.append(dict(method="searched", setting=f"sparsity={sp}", density=plan.mean_density(),
                         error=masked_error(calls, refs, plan_masks(plan, layout)), install=("plan", plan)))
    progress(f"  patterns and searched plans done ({len(rows)} rows)")
    grids = {"oracle": (lambda d: Oracle(d), args.densities, "d"),
             "blasst": (lambda lam: Blasst(lam), args.lambdas, "λ"),
             "proxyattn": (lambda g: ProxyAttn(proxy_heads=2, gamma=g), args.gammas, "γ"),
             "proxyattn-G8": (lambda g: ProxyAttn(proxy_heads=8, gamma=g), args.gammas, "γ"),
             "s2o": (lambda e: S2O(e), args.epsilons, "ε")}
    for name, (make, grid, knob) in grids.items():
        for value in grid:
            method = make(value)
            err, dens = method_error(method, calls, refs)
            rows.append(dict(method=name, setting=f"{knob}={value}", density=dens, error=err,
                             install=("method", method)))
        progress(f"  {name} done")
    for cls in (SeerAttention, TrainableDynamicMask):
        t0 = time.perf_counter()
        method = distilled(cls, model, inputs_kw, args.distill_steps)
        for d in args.densities:
            method.density = d
            err, dens = method_error(method, calls, refs)
            rows.append(dict(method=method.name, setting=f"d={d}", density=dens, error=err,
                             install=("method", (method, d))))
        progress(f"  {method.name} distilled in {time.perf_counter() - t0:.0f}s")
    return rows, layout


def end_to_end(model, inputs, row, dense, steps) -> float:
    kind, what = row["install"]
    if kind == "plan":
        session = install(model, what)
    else:
        method = what[0] if isinstance(what, tuple) else what
        if isinstance(what, tuple):
            method.density = what[1]
        session = install(model, block_size=BLOCK, method=method)
    with session:
        latent = denoise(model, inputs, steps, seed=0)
    return relative_l2(latent, dense)


def main() -> None:
    p = parser(__doc__)
    args = p.parse_args()
    start(args)
    frames = 4 if args.quick else 8
    args.calib, args.steps = (1, 3) if args.quick else (2, 6)
    args.distill_steps = 12 if args.quick else 60
    args.search = [0.5, 0.7] if args.quick else [0.5, 0.7, 0.85]
    args.densities = [0.1, 0.2, 0.3, 0.5] if not args.quick else [0.1, 0.2, 0.5]
    args.lambdas = [0.25, 0.5, 1.0, 2.0] if args.quick else [0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0]
    args.gammas = [0.3, 0.6, 0.9] if args.quick else [0.2, 0.3, 0.5, 0.7, 0.9, 0.95]
    args.epsilons = [0.3, 0.03, 0.003] if args.quick else [0.3, 0.1, 0.03, 0.01, 0.003, 0.001]
    inputs_kw = dict(frames=frames, height=32, width=32)
    out: Dict[str, Dict[str, float]] = {}
    for label in ("random", "structured"):
        model = tiny_model("wan", heads=8, head_dim=64, layers=2, ffn_mult=4, seed=0)
        if label == "structured":
            add_rope_locality(model, ["window", "frame", "temporal"])
        inputs = tiny_inputs(model, **inputs_kw)
        t0 = time.perf_counter()
        rows, layout = curves(model, inputs, inputs_kw, args)
        progress(f"{label}: error vs density in {time.perf_counter() - t0:.0f}s")
        print(f"\n== {label}: attention error vs density (mean over {len(TIMESTEPS)} timesteps × 2 layers, "
              f"S={layout.total} tokens, block {BLOCK})")
        table(["method", "setting", "density", "attn rel-L2"],
              [[r["method"], r["setting"], r["density"], r["error"]] for r in rows])
        dense = denoise(model, inputs, args.steps, seed=0)
        iso = {}
        for r in rows:  # per method: its lowest-error setting within the density budget
            best = iso.get(r["method"])
            if r["density"] <= BUDGET and (best is None or r["error"] < best["error"]):
                iso[r["method"]] = r
        ranked = sorted(iso.values(), key=lambda r: r["error"])
        for r in ranked:
            r["latent"] = end_to_end(model, inputs, r, dense, args.steps)
        print(f"\n== {label}: iso-density, each method's best setting at density <= {BUDGET:.0%}, "
              f"end to end over {args.steps} denoising steps")
        table(["method", "setting", "density", "attn rel-L2", "latent rel-L2"],
              [[r["method"], r["setting"], r["density"], r["error"], r["latent"]] for r in ranked])
        missing = sorted({r["method"] for r in rows} - set(iso))
        if missing:
            print(f"no setting at density <= {BUDGET:.0%}: {', '.join(missing)}")
        out[label] = {r["method"]: r for r in ranked}
    print(f"\nthreads={args.threads} fp32; distillation {args.distill_steps} Lightning steps on "
          f"{2 * len(TIMESTEPS)} calibration inputs; search calibration steps {args.calib}")
    s = out["structured"]
    result("video_methods", {**{f"err_{m}": r["error"] for m, r in s.items()},
                             **{f"density_{m}": r["density"] for m, r in s.items()},
                             "best_structured": min(s, key=lambda m: s[m]["error"]),
                             "best_random": min(out["random"], key=lambda m: out["random"][m]["error"]),
                             "threads": args.threads})


if __name__ == "__main__":
    main()
