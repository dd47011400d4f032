"""Posed-image loaders: gsplat's camera convention, the PNG and npz lego views agree,
mismatched or non-finite inputs are refused."""
import os

import numpy as np
import pytest
import torch

pytest.importorskip("PIL", reason="the splat extra (pillow) is not installed")
from sparsity_plugins.splat.data import PosedImages, load_nerf_synthetic, load_npz, viewmats_from_blender  # noqa: E402

from ...shared_data import SHARED_DATA as SHARED  # noqa: E402
LEGO = os.path.join(SHARED, "nerf_synthetic_lego")


def test_blender_camera_looking_down_minus_z_becomes_opencv_looking_down_plus_z():
    c2w = torch.eye(4)
    c2w[2, 3] = 4.0  # camera at z = 4 looking toward the origin along −z (OpenGL)
    view = viewmats_from_blender(c2w.unsqueeze(0))[0]
    origin_cam = view @ torch.tensor([0.0, 0.0, 0.0, 1.0])
    assert origin_cam[:3].tolist() == [0.0, 0.0, 4.0]  # in front of the camera: +z in OpenCV
    up = view @ torch.tensor([0.0, 1.0, 0.0, 1.0])
    assert up[1] < 0  # world up is image up: −y in OpenCV


@pytest.mark.skipif(not os.path.isdir(LEGO), reason="../shared/data is not present")
def test_png_folder_and_npz_give_the_same_views():
    npz = load_npz(os.path.join(LEGO, "lego_100x100_white.npz"))
    png = load_nerf_synthetic(os.path.join(LEGO, "lego"), size=100, limit=2)
    assert len(npz) == 100 and (npz.height, npz.width) == (100, 100)
    assert torch.allclose(npz.viewmats[:2], png.viewmats) and torch.allclose(npz.Ks[:2], png.Ks)
    assert (npz.images[:2] - png.images).abs().max() < 1e-5
    train, test = npz.split(range(90, 100))
    assert (len(train), len(test)) == (90, 10)


def test_mismatched_or_broken_inputs_are_refused(tmp_path):
    path = tmp_path / "bad.npz"
    np.savez(path, images=np.zeros((3, 4, 4, 3), np.float32), poses=np.tile(np.eye(4, dtype=np.float32), (2, 1, 1)),
             focal=5.0)
    with pytest.raises(ValueError, match="3 images but 2 poses"):
        load_npz(path)
    eye = torch.eye(4).expand(2, 4, 4)
    K = torch.eye(3).expand(2, 3, 3)
    with pytest.raises(ValueError, match="viewmats"):
        PosedImages(torch.zeros(2, 4, 4, 3), torch.eye(4).expand(3, 4, 4), K)
    with pytest.raises(ValueError, match=r"\[N, H, W, 3\]"):
        PosedImages(torch.zeros(2, 4, 4), eye, K)
    with pytest.raises(ValueError, match="NaN"):
        PosedImages(torch.full((2, 4, 4, 3), float("nan")), eye, K)
    with pytest.raises(ValueError, match="every view is held out"):
        PosedImages(torch.zeros(2, 4, 4, 3), eye, K).split([0, 1])
