"""Searched sparse attention for a diffusers video transformer, end to end on CPU, offline.

    .venv/bin/python recipes/video_sparse_attention.py                  # small random Wan, structured heads
    .venv/bin/python recipes/video_sparse_attention.py --kind cogvideox --no-structured
    .venv/bin/python recipes/video_sparse_attention.py --kind all --steps 4

Builds a small random-init transformer (no download), runs the per-head pattern search
(``PatternSearch``, a program on the denoising clock) over calibration denoising steps,
saves the plan as JSON and loads it back (no code executed), then runs the same denoising
loop dense and with the plan installed, and prints time, the plan's attention density and
the final latent's error against the dense run (relative L2 and PSNR).

``--dynamic s2o|proxyattn|blasst`` also runs that dynamic method (block masks chosen per call,
no plan; ``--knob`` sets its ε, γ or λ) in the same denoising loop and prints its computed
density and error beside the plan's.

``--structured`` (default for Wan): random-init attention has no spatio-temporal structure,
so the Wan heads get a shared rotary component in their query/key biases that makes them
local in space and time, in the whole frame, or at the same position across frames
(``add_rope_locality``); ``--no-structured`` keeps the plain random model.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from sparsity_core.program import Host
from sparsity_plugins.video import (S2O, AttentionPlan, Blasst, PatternSearch, ProxyAttn, install, tiny_inputs,
                                    tiny_model)
from sparsity_plugins.video.evaluation import add_rope_locality, denoise, psnr, relative_l2
from sparsity_plugins.video.tiny import KINDS


def run(kind: str, args: argparse.Namespace) -> dict:
    model = tiny_model(kind, heads=args.heads, head_dim=args.head_dim, layers=args.layers, seed=args.seed)
    inputs = tiny_inputs(model, frames=args.frames, height=args.size, width=args.size, seed=args.seed)
    structured = args.structured and kind == "wan"
    if structured:
        add_rope_locality(model, ["window", "frame", "temporal"])
    search = PatternSearch(block_size=args.block_size, error_budget=args.error_budget, sparsity=args.sparsity,
                           dense_fraction=args.dense_fraction)
    search.attach(Host(model))
    denoise(model, inputs, args.calib_steps, on_step=search.after_optimizer_step, seed=args.seed + 1)
    plan = search.finalize()
    path = Path(args.out) / f"{kind}_plan.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    plan.save(path)
    plan = AttentionPlan.load(path)

    t0 = time.perf_counter()
    dense = denoise(model, inputs, args.steps, seed=args.seed)
    t_dense = time.perf_counter() - t0
    with install(model, plan):
        t0 = time.perf_counter()
        sparse = denoise(model, inputs, args.steps, seed=args.seed)
        t_sparse = time.perf_counter() - t0
    layout = plan.layout
    print(f"\n{type(model).__name__} ({'structured' if structured else 'random'} heads): "
          f"{args.layers} layers x {args.heads} heads x {args.head_dim}, {layout.frames}x{layout.height}x"
          f"{layout.width} video + {layout.text} text tokens, block {plan.block_size}")
    for i, row in enumerate(plan.patterns):
        print(f"  layer {i}: {row}")
    print(f"  plan: {path} (mean attention density {plan.mean_density():.3f}, dense steps {plan.dense_steps}, "
          f"effective error budget {search.tolerance:.3g})")
    print(f"  denoising {args.steps} steps: dense {t_dense:.2f}s, sparse {t_sparse:.2f}s "
          f"({t_dense / t_sparse:.2f}x); final latent rel-L2 {relative_l2(sparse, dense):.4f}, "
          f"PSNR {psnr(sparse, dense):.1f} dB")
    out = {"density": plan.mean_density(), "speedup": t_dense / t_sparse, "psnr": psnr(sparse, dense)}
    if args.dynamic:
        method = DYNAMIC[args.dynamic](args.knob)
        with install(model, block_size=plan.block_size, method=method):
            t0 = time.perf_counter()
            latent = denoise(model, inputs, args.steps, seed=args.seed)
            t_dyn = time.perf_counter() - t0
        print(f"  {method.name} at {args.knob}: computed density {method.stats['density']:.3f} over "
              f"{method.stats['calls']} calls, {t_dyn:.2f}s (a CPU reference of its decision rule); final latent "
              f"rel-L2 {relative_l2(latent, dense):.4f}, PSNR {psnr(latent, dense):.1f} dB")
        out[args.dynamic] = {"density": method.stats["density"], "psnr": psnr(latent, dense)}
    return out


#: dynamic methods the recipe can run beside the plan, built from their one knob
DYNAMIC = {"s2o": lambda eps: S2O(epsilon=eps), "proxyattn": lambda g: ProxyAttn(proxy_heads=8, gamma=g),
           "blasst": lambda lam: Blasst(threshold=lam)}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kind", default="wan", choices=sorted(KINDS) + ["all"])
    p.add_argument("--heads", type=int, default=6)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--size", type=int, default=32, help="latent height and width (before patching)")
    p.add_argument("--block-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--calib-steps", type=int, default=4)
    p.add_argument("--error-budget", type=float, default=0.1)
    p.add_argument("--sparsity", type=float, default=None, help="global attention budget (fraction removed)")
    p.add_argument("--dense-fraction", type=float, default=0.25)
    p.add_argument("--structured", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--dynamic", choices=sorted(DYNAMIC), default=None, help="also run this dynamic method")
    p.add_argument("--knob", type=float, default=0.003, help="its epsilon / gamma / lambda (default %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="recipes/out/video_sparse_attention")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    return {kind: run(kind, args) for kind in (sorted(KINDS) if args.kind == "all" else [args.kind])}


if __name__ == "__main__":
    main()
