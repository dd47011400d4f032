"""Pure-torch CPU splat renderer: projection agreement with gsplat, step time per tile size.

Random scenes: N Gaussians uniform in [-1, 1]³ (N = 1k, 10k, 30k; quick: 1k, 10k), random
rotations, scales ``0.5·(8/N)^(1/3)·exp(0.3·z)`` (about the nearest-neighbour spacing, as a
3DGS point initialisation), opacities U(0.05, 0.95), RGB colours; one pinhole camera 4 units
away, 40° field of view, 100×100 pixels, float32.

1. Projection: ``means2d`` and ``conics`` of :func:`sparsity_plugins.splat.render.rasterize`
   against gsplat's pure-torch ``_fully_fused_projection`` (``gsplat.cuda._torch_impl``, the
   reference the issue names) on every Gaussian both keep, 3 seeds per size, 2 cameras.
2. Step time: forward + L1 loss to a fixed random image + backward (gradients to means,
   quats, scales, opacities, colours and ``means2d``), tile sizes 4/8/16 interleaved
   (rotated order per repeat), one warm-up step each, median of repeats, threads stated.
   The images of the three tile sizes are compared too (they must agree).

Target (issue): projected means/conics agree with gsplat's pure-torch projection to 1e-5.
"""
from __future__ import annotations

import math
import os
import time

import torch

from _common import median, parser, progress, result, rotations, start, table, target
from gsplat.cuda._torch_impl import _fully_fused_projection, _quat_scale_to_covar_preci
from sparsity_plugins.splat.render import rasterize

SIZE = 100
TILES = (4, 8, 16)
GOAL = 1e-5


def scene(n: int, seed: int, cameras: int = 1):
    g = torch.Generator().manual_seed(seed)
    means = torch.rand(n, 3, generator=g) * 2 - 1
    quats = torch.randn(n, 4, generator=g)
    scales = 0.5 * (8.0 / n) ** (1 / 3) * torch.exp(0.3 * torch.randn(n, 3, generator=g))
    opacities = 0.05 + 0.9 * torch.rand(n, generator=g)
    colors = torch.rand(n, 3, generator=g)
    f = 0.5 * SIZE / math.tan(math.radians(20))
    viewmats, Ks = [], []
    for c in range(cameras):
        a = 0.5 * c
        v = torch.eye(4)
        v[:3, :3] = torch.tensor([[math.cos(a), 0, -math.sin(a)], [0, 1, 0], [math.sin(a), 0, math.cos(a)]])
        v[2, 3] = 4.0
        viewmats.append(v)
        Ks.append(torch.tensor([[f, 0, SIZE / 2], [0, f, SIZE / 2], [0, 0, 1]]))
    return means, quats, scales, opacities, colors, torch.stack(viewmats), torch.stack(Ks)


def projection_gap(n: int, seed: int):
    means, quats, scales, opacities, colors, viewmats, Ks = scene(n, seed, cameras=2)
    with torch.no_grad():
        _, _, info = rasterize(means, quats, scales, opacities, colors, viewmats, Ks, SIZE, SIZE)
        covars, _ = _quat_scale_to_covar_preci(quats, scales, True, False)
        radii, means2d, _, conics, _ = _fully_fused_projection(means, covars, viewmats, Ks, SIZE, SIZE)
    both = (info["radii"] > 0).all(-1) & (radii > 0).all(-1)
    d_means = (info["means2d"] - means2d)[both].abs().max().item()
    d_conics = (info["conics"] - conics)[both].abs().max().item()
    return d_means, d_conics, int(both.sum())


def step(params, viewmats, Ks, target_img, tile):
    for p in params:
        p.grad = None
    img, _, info = rasterize(*params, viewmats, Ks, SIZE, SIZE, tile_size=tile)
    (img - target_img).abs().mean().backward()
    assert info["means2d"].grad is not None
    return img.detach(), info["n_isects"]


def main():
    p = parser(__doc__)
    p.add_argument("--repeats", type=int, default=None, help="timed steps per tile size (default 5, quick 3)")
    args = p.parse_args()
    start(args)
    sizes = (1000, 10000) if args.quick else (1000, 10000, 30000)
    repeats = args.repeats or (3 if args.quick else 5)

    proj_rows, worst_means, worst_conics = [], 0.0, 0.0
    for n in sizes:
        gaps = [projection_gap(n, seed) for seed in range(3)]
        dm, dc = max(g[0] for g in gaps), max(g[1] for g in gaps)
        worst_means, worst_conics = max(worst_means, dm), max(worst_conics, dc)
        proj_rows.append([n, sum(g[2] for g in gaps), f"{dm:.2e}", f"{dc:.2e}"])
        progress(f"projection N={n}: means2d {dm:.2e}, conics {dc:.2e}")

    time_rows, ms = [], {}
    load_before = os.getloadavg()[0]
    for n in sizes:
        means, quats, scales, opacities, colors, viewmats, Ks = scene(n, seed=0)
        params = [t.clone().requires_grad_() for t in (means, quats, scales, opacities, colors)]
        target_img = torch.rand(1, SIZE, SIZE, 3, generator=torch.Generator().manual_seed(1))
        images, isects, samples = {}, {}, {t: [] for t in TILES}
        for t in TILES:  # warm-up
            images[t], isects[t] = step(params, viewmats, Ks, target_img, t)
        for order in rotations(list(TILES), repeats):
            for t in order:
                t0 = time.perf_counter()
                step(params, viewmats, Ks, target_img, t)
                samples[t].append(time.perf_counter() - t0)
        for t in TILES:
            ms[(n, t)] = 1e3 * median(samples[t])
            gap = (images[t] - images[TILES[0]]).abs().max().item()
            time_rows.append([n, f"{t}x{t}", isects[t], f"{isects[t] / n:.1f}", f"{ms[(n, t)]:.1f}",
                              f"{ms[(n, t)] / ms[(n, TILES[0])]:.2f}", f"{gap:.1e}"])
        progress(f"timing N={n}: " + ", ".join(f"{t}x{t} {ms[(n, t)]:.0f} ms" for t in TILES))

    print(f"\nProjection vs gsplat _fully_fused_projection (float32, {SIZE}x{SIZE}, 2 cameras, 3 seeds, "
          "Gaussians both keep):")
    table(["N", "compared", "max |Δ means2d| px", "max |Δ conics|"], proj_rows)
    print(f"\nForward + backward per step ({SIZE}x{SIZE}, 1 camera, float32, {args.threads} threads, "
          f"median of {repeats}, tile sizes interleaved)")
    print(f"1-min load average {load_before:.1f} -> {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (other work "
          "slows multi-thread steps several-fold: compare rows of one run only):")
    table(["N", "tile", "(tile, Gaussian) rows", "rows/Gaussian", "ms/step", "x 4x4", "max |Δ image| vs 4x4"],
          time_rows)
    print()
    target("projected means2d vs gsplat pure-torch projection", worst_means <= GOAL, f"{worst_means:.2e}",
           f"<= {GOAL:.0e}")
    target("projected conics vs gsplat pure-torch projection", worst_conics <= GOAL, f"{worst_conics:.2e}",
           f"<= {GOAL:.0e}")
    values = {"means2d_maxdiff": worst_means, "conics_maxdiff": worst_conics}
    for (n, t), v in ms.items():
        values[f"ms_{n // 1000}k_t{t}"] = v
    values.update(threads=args.threads, repeats=repeats)
    result("splat_render", values)


if __name__ == "__main__":
    main()
