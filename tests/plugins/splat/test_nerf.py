"""NeRF pieces: volume rendering, occupancy-grid skipping, the field and its training module."""
import math

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from sparsity_core import SparsityCallback
from sparsity_core.schedules import Linear
from sparsity_plugins.splat.hashgrid_pruning import HashGridPruning
from sparsity_plugins.splat.nerf import NeRFField
from sparsity_plugins.splat.nerf_module import NeRFModule, RandomRays, load_views
from sparsity_plugins.splat.nerf_render import camera_rays, composite, march, render_rays
from sparsity_plugins.splat.occupancy import OccupancyGrid

torch.set_num_threads(1)


def look_at(eye, target=(0.0, 0.0, 0.0), up=(0.0, 0.0, 1.0)) -> torch.Tensor:
    """Camera→world (OpenGL: the camera looks along its −z) from ``eye`` towards ``target``."""
    eye, target, up = (torch.tensor(v, dtype=torch.float32) for v in (eye, target, up))
    forward = (target - eye) / (target - eye).norm()
    right = torch.linalg.cross(forward, up)
    right = right / right.norm()
    pose = torch.eye(4)
    pose[:3, 0], pose[:3, 1], pose[:3, 2], pose[:3, 3] = right, torch.linalg.cross(right, forward), -forward, eye
    return pose


# -- compositing ------------------------------------------------------------------------
def test_three_sample_ray_matches_the_hand_computed_transmittance_weights_and_colour():
    sigma = torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float64)
    delta = torch.tensor([[0.5, 0.5, 1.0]], dtype=torch.float64)  # σδ = 0.5, 1, 3
    rgb = torch.eye(3, dtype=torch.float64).unsqueeze(0)  # red, green, blue
    out = composite(sigma, rgb, delta, background=1.0)
    # α_i = 1 − e^{−σ_i δ_i};  T_i = e^{−Σ_{j<i} σ_j δ_j} = 1, e^{−0.5}, e^{−1.5}
    alpha = [0.39346934028736658, 0.63212055882855767, 0.95021293163213600]
    trans = [1.0, 0.60653065971263342, 0.22313016014842982]
    weights = [0.39346934028736658, 0.38340049956420363, 0.21202116361018752]  # T_i α_i
    left = 0.011108996538242306  # e^{−4.5}: light from the white background
    for name, expected in (("alpha", alpha), ("transmittance", trans), ("weights", weights)):
        assert torch.allclose(out[name][0], torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-12), name
    assert torch.allclose(out["transmittance"][0, 1:], torch.cumprod(1 - out["alpha"][0], 0)[:2], atol=1e-12)
    assert abs(float(out["opacity"][0]) - (1 - left)) < 1e-12
    expected_color = torch.tensor([weights[0] + left, weights[1] + left, weights[2] + left], dtype=torch.float64)
    assert torch.allclose(out["color"][0], expected_color, rtol=0, atol=1e-12)
    black = composite(sigma, rgb, delta, background=0.0)["color"][0]
    assert torch.allclose(black, torch.tensor(weights, dtype=torch.float64), atol=1e-12)


def test_camera_rays_follow_the_opengl_pinhole_through_pixel_centres():
    origins, dirs = camera_rays(torch.eye(4), height=2, width=2, focal=1.0)
    assert origins.shape == dirs.shape == (1, 2, 2, 3) and torch.equal(origins, torch.zeros(1, 2, 2, 3))
    top_left = torch.tensor([-0.5, 0.5, -1.0]) / math.sqrt(1.5)  # x right, y up, looking along −z
    assert torch.allclose(dirs[0, 0, 0], top_left, atol=1e-6)
    assert torch.allclose(dirs[0, 1, 1], torch.tensor([0.5, -0.5, -1.0]) / math.sqrt(1.5), atol=1e-6)
    pose = look_at((0.0, -4.0, 0.0))
    o, d = camera_rays(pose, 3, 3, 2.0)
    assert torch.allclose(o[0, 1, 1], torch.tensor([0.0, -4.0, 0.0])) and torch.allclose(d[0, 1, 1],
                                                                                         torch.tensor([0.0, 1.0, 0.0]))


def test_march_samples_stay_inside_the_box_and_near_far():
    origins = torch.tensor([[0.0, -4.0, 0.0], [0.0, -4.0, 3.0]])
    dirs = torch.tensor([[0.0, 1.0, 0.0], [0.0, 1.0, 0.0]])  # the second ray passes above the box
    t, inside = march(origins, dirs, near=2.0, far=6.0, bound=1.5, step=0.25)
    assert torch.allclose(t[0, :2], torch.tensor([2.5 + 0.125, 2.5 + 0.375]))  # enters the box at t = 2.5
    assert int(inside[0].sum()) == 12 and float(t[0][inside[0]].max()) < 5.5  # 3 / 0.25 steps, exits at 5.5
    assert not inside[1].any()


# -- occupancy --------------------------------------------------------------------------
LO, HI = torch.tensor([-0.5, 0.0, -1.0]), torch.tensor([1.0, 0.5, 0.0])  # cells of 0.5 on a 6³ grid


def box_field(points, dirs):
    """σ = 4 inside the box [LO, HI) and exactly 0 outside; a colour varying with position."""
    inside = ((points >= LO) & (points < HI)).all(-1)
    return torch.where(inside, 4.0, 0.0), torch.sigmoid(3 * points)


def test_occupancy_skipping_leaves_the_image_unchanged_where_empty_cells_are_empty():
    grid = OccupancyGrid(resolution=6, bound=1.5)
    fraction = grid.update(lambda x: box_field(x, x)[0] * 0.05, generator=torch.Generator().manual_seed(0))
    assert fraction == pytest.approx(6 / 216)  # the 3 x 1 x 2 cells of the box, nothing else
    o, d = camera_rays(look_at((2.5, -3.0, 1.5)), 24, 24, 30.0)
    o, d = o.reshape(-1, 3), d.reshape(-1, 3)
    full = render_rays(box_field, o, d, near=2.0, far=6.0, bound=1.5, step=0.05)
    skipped = render_rays(box_field, o, d, near=2.0, far=6.0, bound=1.5, step=0.05, occupied=grid.occupied)
    assert float(full["opacity"].max()) > 0.9 and float(full["opacity"].min()) == 0.0  # the box is in view
    assert int(skipped["samples"]) < 0.2 * int(full["samples"])  # most samples were never evaluated
    assert torch.equal(skipped["color"], full["color"])
    grid.bits[grid.cell_index(torch.tensor([0.75, 0.25, -0.25]))] = False  # one cell of the box wrongly empty
    wrong = render_rays(box_field, o, d, near=2.0, far=6.0, bound=1.5, step=0.05, occupied=grid.occupied)
    assert float((wrong["color"] - full["color"]).abs().max()) > 0.1


def test_occupancy_keeps_a_decaying_maximum_and_thresholds_below_the_mean():
    grid = OccupancyGrid(resolution=2, bound=1.0, threshold=0.01, decay=0.5)
    assert grid.bits.all()  # before any update
    values = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0])
    grid.update(lambda x: values.clone())
    assert grid.bits.tolist() == [False] * 7 + [True]
    grid.update(lambda x: torch.zeros(8))
    assert grid.density[-1] == 0.5 and grid.bits[-1]
    small = OccupancyGrid(resolution=2, bound=1.0, threshold=0.01)
    small.update(lambda x: torch.linspace(0.0, 0.007, 8))  # all below τ: the mean decides
    assert small.bits.tolist() == [False] * 4 + [True] * 4


# -- bad input --------------------------------------------------------------------------
def test_bad_input_raises_a_value_error_before_anything_changes(tmp_path):
    with pytest.raises(ValueError, match="poses must be"):
        camera_rays(torch.eye(4)[:3], 4, 4, 10.0)
    with pytest.raises(ValueError, match="poses must be"):
        camera_rays(torch.eye(4).expand(2, 1, 4, 4), 4, 4, 10.0)
    o, d = torch.zeros(2, 3), torch.tensor([[0.0, 0.0, 1.0]] * 2)
    for near, far, match in ((0.0, 6.0, "near"), (-1.0, 6.0, "near"), (2.0, 2.0, "far must be > near"),
                             (3.0, 2.0, "far must be > near")):
        with pytest.raises(ValueError, match=match):
            render_rays(box_field, o, d, near=near, far=far, bound=1.5, step=0.1)
        with pytest.raises(ValueError, match=match):
            NeRFModule(NeRFField(levels=1, log2_table_size=6, max_resolution=16), near=near, far=far)
    with pytest.raises(ValueError, match="usage must be"):
        NeRFModule(NeRFField(levels=1, log2_table_size=6, max_resolution=16), usage="pixels")
    with pytest.raises(ValueError, match="origins and dirs"):
        render_rays(box_field, o, d[:1], near=2.0, far=6.0, bound=1.5, step=0.1)
    with pytest.raises(ValueError, match=r"points must be \[P, 3\]"):
        NeRFField(levels=1, log2_table_size=6, max_resolution=16).density(torch.zeros(4, 2))
    grid = OccupancyGrid(resolution=4, bound=1.0)
    grid.update(lambda x: (x.norm(dim=-1) < 0.5).float())
    before = grid.bits.clone(), grid.density.clone()
    with pytest.raises(ValueError, match="one density per point"):
        grid.update(lambda x: torch.ones(x.shape[0], 1), chunk=16)
    with pytest.raises(ValueError, match="NaN"):
        grid.update(lambda x: torch.full((x.shape[0],), float("nan")))
    assert torch.equal(grid.bits, before[0]) and torch.equal(grid.density, before[1])
    np.savez(tmp_path / "bad.npz", images=np.zeros((2, 4, 4, 3)), poses=np.zeros((2, 3, 4)), focal=5.0)
    with pytest.raises(ValueError, match=r"poses \[N, 4, 4\]"):
        load_views(tmp_path / "bad.npz")


# -- the field, trained and pruned ------------------------------------------------------
def test_field_trains_with_occupancy_and_is_pruned_by_hashgrid_pruning():
    torch.manual_seed(0)
    poses = torch.stack([look_at((4 * math.cos(a), 4 * math.sin(a), 1.5)) for a in (0.0, 2.0, 4.0)])
    o, d = camera_rays(poses, 12, 12, 15.0)
    o, d = o.reshape(-1, 3), d.reshape(-1, 3)
    with torch.no_grad():
        target = render_rays(box_field, o, d, near=2.0, far=6.0, bound=1.5, step=0.05)["color"]
    field = NeRFField(levels=3, log2_table_size=9, base_resolution=4, max_resolution=24, hidden=16,
                      geo_features=3, saliency_resolution=5)
    module = NeRFModule(field, occupancy_every=4, occupancy_warmup=4)
    program = HashGridPruning(Linear(start_step=6, end_step=16, final_sparsity=0.6), update_every=5, rho=1e-3)
    loader = DataLoader(RandomRays(o, d, target, batch=128, length=20, seed=0), batch_size=None)
    pl.Trainer(max_steps=20, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
               enable_model_summary=False, callbacks=[SparsityCallback(programs=[program])]).fit(module, loader)
    assert float(module.occupancy.density.sum()) > 0 and len(module.samples_per_ray) == 20  # the grid was updated
    assert not field.encoding.usage_from_forward  # usage came from the compositing weights (usage="render")
    report = program.result
    assert report["kept_fraction"] == pytest.approx(0.4, abs=0.01)
    assert sum(t.numel() for t in field.encoding.tables) == report["params_kept"]  # really removed
    image = module.render_image(poses[0], 12, 12, 15.0)
    assert image.shape == (12, 12, 3) and torch.isfinite(image).all()
    assert module.psnr(poses[:1], target[:144].reshape(1, 12, 12, 3), 15.0) > 5.0
