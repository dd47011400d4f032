"""GaussianSplatModule checkpoints: a run resumed from a mid-growth checkpoint (fresh Trainer,
fresh module) continues exactly like the uninterrupted run: same strategy state, same
Gaussian counts at every step, same parameters. The checkpoint is plain data
(``weights_only=True``); a malformed one is refused before anything changes."""
import math

import pytest
import pytorch_lightning as pl
import torch

pytest.importorskip("gsplat", reason="the splat extra (gsplat) is not installed")
from pytorch_lightning.callbacks import ModelCheckpoint  # noqa: E402

from sparsity_plugins.splat import BudgetedStrategy, GaussianSplatModule, PosedImages  # noqa: E402
from sparsity_plugins.splat.budgeted import state_to_plain  # noqa: E402
from sparsity_plugins.splat.data import intrinsics, viewmats_from_blender  # noqa: E402
from sparsity_plugins.splat.module import random_splats  # noqa: E402
from sparsity_plugins.splat.render import rasterize  # noqa: E402

SIZE, STEPS, BUDGET, SAVE_AT = 8, 24, 40, 10  # the checkpoint after 10 iterations: mid-growth
CKPT_KEY = "gaussian_splat"  # the module's entry in a Lightning checkpoint


def views(n=4):
    poses = []
    for i in range(n):
        a = 2 * math.pi * i / n
        eye = torch.tensor([3 * math.cos(a), 3 * math.sin(a), 1.0])
        fwd = -eye / eye.norm()
        right = torch.linalg.cross(fwd, torch.tensor([0.0, 0.0, 1.0]))
        right = right / right.norm()
        c2w = torch.eye(4)
        c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, torch.linalg.cross(right, fwd), -fwd, eye
        poses.append(c2w)
    viewmats, Ks = viewmats_from_blender(torch.stack(poses)), intrinsics(10.0, SIZE, SIZE, n)
    truth = random_splats(20, 0.6, seed=1, opacity=0.8)
    with torch.no_grad():
        img, _, _ = rasterize(truth["means"], truth["quats"], torch.exp(truth["scales"] + 0.5),
                              torch.sigmoid(truth["opacities"]), torch.sigmoid(2 * truth["colors"]), viewmats, Ks,
                              SIZE, SIZE, backgrounds=torch.ones(n, 3))
    return PosedImages(img.clamp(0, 1), viewmats, Ks)


def module():
    strategy = BudgetedStrategy(budget=BUDGET, refine_start_iter=2, refine_stop_iter=20, refine_every=3,
                                grow_grad2d=1e-7, reset_every=10_000)
    return GaussianSplatModule(views(), None, strategy, steps=STEPS, num_points=10, extent=0.8, with_stats=True,
                               lrs={"means": 1e-3})


class Record(pl.Callback):
    """The count after every iteration; the strategy state after iteration ``SAVE_AT`` and
    at the start of training (after a resume: the restored one)."""

    def __init__(self):
        self.counts, self.saved, self.started = {}, None, None

    def on_train_start(self, trainer, pl_module):
        self.started = state_to_plain(pl_module.strategy_state)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.counts[pl_module.iteration] = len(pl_module.splats["means"])
        if pl_module.iteration == SAVE_AT:
            self.saved = state_to_plain(pl_module.strategy_state)


def trainer(callbacks, tmp_path):
    return pl.Trainer(max_epochs=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                      num_sanity_val_steps=0, limit_val_batches=0, default_root_dir=tmp_path, callbacks=callbacks)


def assert_same_state(a, b, exact=True):
    assert set(a) == set(b)
    for k in a:
        if isinstance(a[k], torch.Tensor):
            assert torch.equal(a[k], b[k]) if exact else torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-7), k
        else:
            assert a[k] == b[k], k


def test_a_run_resumed_mid_growth_continues_exactly(tmp_path):
    torch.manual_seed(0)
    whole, rec = module(), Record()
    ckpt_cb = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=SAVE_AT, save_top_k=-1)  # global_step = iteration
    trainer([rec, ckpt_cb], tmp_path).fit(whole)
    path = tmp_path / f"epoch=0-step={SAVE_AT}.ckpt"

    ckpt = torch.load(path, weights_only=True)  # plain data: no pickled objects
    saved = ckpt[CKPT_KEY]
    assert saved["iteration"] == SAVE_AT
    assert saved["strategy_state"]["schedule"] == {  # the curve ends on the last refinement, step 18
        "dataclass": "GrowthToBudget", "fields": {"start_step": 2, "end_step": 18, "initial_count": 10,
                                                  "budget": BUDGET}}
    n_saved = rec.counts[SAVE_AT]
    assert 10 < n_saved < BUDGET and len(ckpt["state_dict"]["splats.means"]) == n_saved  # grown, not done

    torch.manual_seed(123)  # another global RNG state: the checkpoint's must be used
    resumed, rec2 = module(), Record()
    assert len(resumed.splats["means"]) == 10
    again = ModelCheckpoint(dirpath=tmp_path / "resumed", every_n_train_steps=SAVE_AT, save_top_k=-1)
    trainer([rec2, again], tmp_path).fit(resumed, ckpt_path=path, weights_only=True)

    assert_same_state(rec2.started, rec.saved)  # restored exactly
    assert sorted(rec2.counts) == list(range(SAVE_AT + 1, STEPS + 1))
    assert rec2.counts == {i: rec.counts[i] for i in rec2.counts}  # bit-identical counts, step by step
    assert rec.counts[STEPS] == BUDGET and max(rec.counts.values()) == BUDGET
    assert resumed.iteration == whole.iteration == STEPS
    assert_same_state(state_to_plain(resumed.strategy_state), state_to_plain(whole.strategy_state), exact=False)
    for k, p in whole.splats.items():
        assert torch.allclose(resumed.splats[k], p, rtol=1e-5, atol=1e-6), k


def test_a_malformed_checkpoint_is_refused_before_anything_changes(tmp_path):
    torch.manual_seed(0)
    m = module()
    pl.Trainer(max_epochs=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
               enable_checkpointing=False, limit_train_batches=6, limit_val_batches=0).fit(m)  # grown at step 3
    good = {"state_dict": m.state_dict()}
    m.on_save_checkpoint(good)
    fresh = module()
    before = {k: p.detach().clone() for k, p in fresh.splats.items()}

    def refused(mutate, match):
        ckpt = {"state_dict": dict(good["state_dict"]),
                CKPT_KEY: {**good[CKPT_KEY], "strategy_state": dict(good[CKPT_KEY]["strategy_state"])}}
        mutate(ckpt)
        with pytest.raises(ValueError, match=match):
            fresh.on_load_checkpoint(ckpt)
        assert fresh.iteration == 0 and fresh.strategy_state == {} and fresh.error_maps == {}
        assert all(torch.equal(fresh.splats[k], v) for k, v in before.items())

    refused(lambda c: c.pop(CKPT_KEY), "no 'gaussian_splat' entry")
    refused(lambda c: c[CKPT_KEY]["strategy_state"].pop("schedule"), r"missing \['schedule'\]")
    refused(lambda c: c[CKPT_KEY]["strategy_state"].update(grad2d=torch.zeros(3)), "grad2d.*one row per Gaussian")
    refused(lambda c: c[CKPT_KEY]["strategy_state"].update(schedule={"dataclass": "GrowthToBudget",
                                                                     "fields": {"budget": 0}}), "schedule")
    refused(lambda c: c["state_dict"].update({"splats.colors": torch.zeros(3, 3)}), "disagree")
    refused(lambda c: c[CKPT_KEY].pop("rng"), "lacks 'rng'")

    fresh.on_load_checkpoint(good)  # the good one loads: parameters rebuilt at the saved count
    assert len(fresh.splats["means"]) == len(m.splats["means"]) > 10 and fresh.iteration == 6
