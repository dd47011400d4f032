"""GaussianSplatModule inside Trainer.fit on a tiny synthetic scene: it learns, the budget
holds at every step with BudgetedStrategy, gsplat's DefaultStrategy runs too, bad input is
refused before training."""
import math

import pytest
import pytorch_lightning as pl
import torch

pytest.importorskip("gsplat", reason="the splat extra (gsplat) is not installed")
from gsplat.strategy import DefaultStrategy  # noqa: E402

from sparsity_plugins.splat import BudgetedStrategy, GaussianSplatModule, PosedImages  # noqa: E402
from sparsity_plugins.splat.data import intrinsics, viewmats_from_blender  # noqa: E402
from sparsity_plugins.splat.module import random_splats  # noqa: E402
from sparsity_plugins.splat.render import rasterize  # noqa: E402

SIZE = 16


def cameras(n):
    poses = []
    for i in range(n):
        a = 2 * math.pi * i / n
        eye = torch.tensor([3 * math.cos(a), 3 * math.sin(a), 1.0])
        fwd = -eye / eye.norm()  # look at the origin; Blender camera looks along −z
        right = torch.linalg.cross(fwd, torch.tensor([0.0, 0.0, 1.0]))
        right = right / right.norm()
        up = torch.linalg.cross(right, fwd)
        c2w = torch.eye(4)
        c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, up, -fwd, eye
        poses.append(c2w)
    return viewmats_from_blender(torch.stack(poses)), intrinsics(20.0, SIZE, SIZE, n)


def scene(n_views=6):
    torch.manual_seed(0)
    truth = random_splats(30, 0.6, seed=1, opacity=0.8)
    truth["colors"] = torch.randn(30, 3) * 2
    view, K = cameras(n_views)
    with torch.no_grad():
        img, _, _ = rasterize(truth["means"], truth["quats"], torch.exp(truth["scales"] + 0.5),
                              torch.sigmoid(truth["opacities"]), torch.sigmoid(truth["colors"]), view, K, SIZE, SIZE,
                              backgrounds=torch.ones(n_views, 3))
    return PosedImages(img.clamp(0, 1), view, K)


def trainer(callbacks=()):
    return pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0, callbacks=list(callbacks))


class CountWatch(pl.Callback):
    def __init__(self):
        self.counts = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.counts.append(len(pl_module.splats["means"]))


def test_budgeted_fit_learns_and_never_exceeds_the_budget():
    data = scene()
    train, test = data.split([5])
    strategy = BudgetedStrategy(budget=60, refine_start_iter=5, refine_stop_iter=50, refine_every=5,
                                grow_grad2d=1e-6)
    module = GaussianSplatModule(train, test, strategy, steps=60, num_points=20, extent=0.8, with_stats=True,
                                 lrs={"means": 1e-3})
    before = module.evaluate()["psnr"]
    watch = CountWatch()
    trainer([watch]).fit(module)
    after = module.evaluate()
    assert after["psnr"] > before + 1.0
    assert len(watch.counts) == 60 and max(watch.counts) <= 60 and watch.counts[-1] > 20  # it grew, within budget
    assert module.iteration == 60


def test_default_strategy_runs_and_renders_are_saved(tmp_path):
    data = scene()
    train, test = data.split([5])
    module = GaussianSplatModule(train, test, DefaultStrategy(refine_start_iter=5, refine_every=5), steps=12,
                                 num_points=20, extent=0.8)
    trainer().fit(module)
    paths = module.save_renders(tmp_path)
    from PIL import Image

    assert len(paths) == 1 and Image.open(paths[0]).size == (2 * SIZE, SIZE)


def test_a_budget_below_the_starting_count_is_reached_by_scored_pruning_before_the_first_step():
    data = scene()
    train, test = data.split([5])
    init = random_splats(10, 0.5)
    init["opacities"] = torch.linspace(-2, 2, 10)
    module = GaussianSplatModule(train, test, BudgetedStrategy(budget=4, refine_start_iter=2), steps=3, splats=init)
    watch = CountWatch()
    with pytest.warns(UserWarning, match="lowest-scored 6 are pruned"):
        trainer([watch]).fit(module)
    assert max(watch.counts) <= 4
    assert module.strategy_state["initial_count"] == 4


def test_bad_input_is_refused_before_training():
    data = scene()
    train, test = data.split([5])
    bad = random_splats(10, 0.5)
    bad["means"][3, 1] = float("nan")
    module = GaussianSplatModule(train, test, BudgetedStrategy(budget=50), steps=5, splats=bad)
    with pytest.raises(ValueError, match="NaN"):
        trainer().fit(module)
    small = PosedImages(torch.zeros(1, 8, 8, 3), data.viewmats[:1], data.Ks[:1])
    with pytest.raises(ValueError, match="val views"):
        GaussianSplatModule(train, small, BudgetedStrategy(budget=50), steps=5)
    with pytest.raises(ValueError, match="steps"):
        GaussianSplatModule(train, test, BudgetedStrategy(budget=50), steps=0)
