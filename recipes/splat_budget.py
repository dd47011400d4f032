"""Fit the lego scene on the CPU with gsplat's DefaultStrategy and with BudgetedStrategy at
a budget; print PSNR, Gaussian count and time; save the held-out renders.

    .venv/bin/python recipes/splat_budget.py                        # 1500 steps, budget = default's count / 4
    .venv/bin/python recipes/splat_budget.py --steps 3000 --budget 5000
    .venv/bin/python recipes/splat_budget.py --data ../shared/data/nerf_synthetic_lego/lego --size 100

Data: the 100×100 lego npz (``--data`` a ``.npz``) or a NeRF-synthetic folder
(``transforms_train.json`` + PNGs, resized to ``--size``); views 90–99 (or the last 10 %)
are held out. Both fits start from the same random Gaussians and see the same views in the
same order. ``--budget 0`` (default) sets the budget to a quarter of the count the default
strategy ends with. Renders (prediction | ground truth) go to ``--output``/<strategy>/.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import time
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytorch_lightning as pl
import torch

from sparsity_plugins.splat import BudgetedStrategy, GaussianSplatModule, load_nerf_synthetic, load_npz

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SPARSITY_SHARED_DATA", REPO.parent / "shared" / "data"))
OUT = REPO / "recipes" / "out" / "splat_budget"


def parse(args: Optional[List[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(SHARED / "nerf_synthetic_lego" / "lego_100x100_white.npz"),
                   help="lego npz or NeRF-synthetic folder")
    p.add_argument("--size", type=int, default=100, help="image side when loading a NeRF-synthetic folder")
    p.add_argument("--steps", type=int, default=1500, help="training steps (one view each)")
    p.add_argument("--points", type=int, default=5000, help="random starting Gaussians")
    p.add_argument("--budget", type=int, default=0, help="Gaussians allowed (0: the default's count / 4)")
    p.add_argument("--test-views", type=int, default=10, help="held-out views (the last ones)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--output", default=str(OUT), help="folder of the renders and report.json")
    a = p.parse_args(args)
    if a.steps < 10 or a.points < 1 or a.budget < 0 or a.test_views < 1:
        p.error("need --steps >= 10, --points >= 1, --budget >= 0, --test-views >= 1")
    return a


def fit(train, test, strategy, a: argparse.Namespace, stats: bool) -> Dict[str, Any]:
    module = GaussianSplatModule(train, test, strategy, steps=a.steps, num_points=a.points, with_stats=stats)
    t0 = time.perf_counter()
    pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
               enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0).fit(module)
    seconds = time.perf_counter() - t0
    name = "default" if not isinstance(strategy, BudgetedStrategy) else "budgeted"
    module.save_renders(Path(a.output) / name, test)
    return {**module.evaluate(test), "fit_s": seconds}


def main(args: Optional[List[str]] = None) -> Dict[str, Any]:
    from gsplat.strategy import DefaultStrategy

    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*LeafSpec.*is deprecated.*")
    a = parse(args)
    torch.set_num_threads(a.threads)
    data = load_npz(a.data) if a.data.endswith(".npz") else load_nerf_synthetic(a.data, size=a.size)
    if a.test_views >= len(data):
        raise ValueError(f"--test-views {a.test_views} leaves no training view of {len(data)}")
    train, test = data.split(range(len(data) - a.test_views, len(data)))
    refine = dict(refine_start_iter=a.steps // 6, refine_stop_iter=5 * a.steps // 6, refine_every=max(1, a.steps // 30))
    default = fit(train, test, DefaultStrategy(**refine), a, stats=False)
    budget = a.budget or max(1, default["num_gaussians"] // 4)
    ours = fit(train, test, BudgetedStrategy(budget=budget, **refine), a, stats=True)
    report = {"steps": a.steps, "points": a.points, "budget": budget, "threads": torch.get_num_threads(),
              "default": default, "budgeted": ours}
    Path(a.output).mkdir(parents=True, exist_ok=True)
    (Path(a.output) / "report.json").write_text(json.dumps(report, indent=2))
    print(f"\n{len(train)} training / {len(test)} held-out views, {train.width}x{train.height}, {a.steps} steps, "
          f"{a.points} starting Gaussians, {torch.get_num_threads()} threads")
    for name, r in (("default", default), (f"budgeted (B={budget})", ours)):
        print(f"{name:22s} PSNR {r['psnr']:.2f} dB  SSIM {r['ssim']:.3f}  {r['num_gaussians']:6d} Gaussians  "
              f"{r['fit_s']:.0f} s")
    print(f"wrote {a.output}/report.json and renders in {a.output}/default, {a.output}/budgeted")
    return report


if __name__ == "__main__":
    main()
