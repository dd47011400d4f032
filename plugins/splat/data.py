"""Posed images for Gaussian splatting, in gsplat's camera conventions.

gsplat renders with world→camera ``viewmats`` in the OpenCV convention (x right, y down,
z forward) and pinhole intrinsics ``Ks``. NeRF-synthetic scenes (Mildenhall et al., 2020)
store camera→world matrices in the Blender/OpenGL convention (y up, z backward), so
``viewmat = (c2w · diag(1, −1, −1, 1))⁻¹``.

Loaders: :func:`load_nerf_synthetic` (a ``transforms_<split>.json`` folder of RGBA PNGs,
resized and composited on a background) and :func:`load_npz` (the tiny-NeRF ``.npz``:
``images``, ``poses``, ``focal``).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

OPENGL_TO_OPENCV = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0]))


@dataclass
class PosedImages:
    """``images`` [N, H, W, 3] in [0, 1]; ``viewmats`` [N, 4, 4] world→camera (OpenCV);
    ``Ks`` [N, 3, 3]. Checked on construction."""

    images: Tensor
    viewmats: Tensor
    Ks: Tensor

    def __post_init__(self) -> None:
        n = self.images.shape[0] if self.images.dim() == 4 else -1
        if self.images.dim() != 4 or self.images.shape[-1] != 3:
            raise ValueError(f"images must be [N, H, W, 3], got {list(self.images.shape)}")
        if tuple(self.viewmats.shape) != (n, 4, 4):
            raise ValueError(f"viewmats must be [{n}, 4, 4] (one per image), got {list(self.viewmats.shape)}")
        if tuple(self.Ks.shape) != (n, 3, 3):
            raise ValueError(f"Ks must be [{n}, 3, 3] (one per image), got {list(self.Ks.shape)}")
        for name in ("images", "viewmats", "Ks"):
            if not torch.isfinite(getattr(self, name)).all():
                raise ValueError(f"{name} has NaN/Inf entries")
        if n == 0:
            raise ValueError("no images")

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def height(self) -> int:
        return self.images.shape[1]

    @property
    def width(self) -> int:
        return self.images.shape[2]

    def subset(self, index: Union[Sequence[int], Tensor]) -> "PosedImages":
        idx = torch.as_tensor(index, dtype=torch.long)
        return PosedImages(self.images[idx], self.viewmats[idx], self.Ks[idx])

    def split(self, held_out: Sequence[int]) -> Tuple["PosedImages", "PosedImages"]:
        """(training views, held-out views)."""
        held = sorted(set(int(i) for i in held_out))
        if not held or held[0] < 0 or held[-1] >= len(self):
            raise ValueError(f"held_out must be non-empty indices in [0, {len(self)}), got {list(held_out)[:5]}...")
        train = [i for i in range(len(self)) if i not in set(held)]
        if not train:
            raise ValueError("every view is held out: nothing to train on")
        return self.subset(train), self.subset(held)

    def camera_centers(self) -> Tensor:
        return torch.linalg.inv(self.viewmats)[:, :3, 3]

    def scene_scale(self) -> float:
        """1.1 × the largest distance of a camera from the cameras' mean (gsplat's examples)."""
        centers = self.camera_centers()
        return 1.1 * float((centers - centers.mean(0)).norm(dim=-1).max())


def viewmats_from_blender(c2w: Tensor) -> Tensor:
    """World→camera OpenCV matrices from camera→world Blender/OpenGL ones."""
    return torch.linalg.inv(c2w.double() @ OPENGL_TO_OPENCV.double()).float()


def intrinsics(focal: float, width: int, height: int, n: int) -> Tensor:
    K = torch.tensor([[focal, 0.0, width / 2.0], [0.0, focal, height / 2.0], [0.0, 0.0, 1.0]])
    return K.expand(n, 3, 3).clone()


def load_npz(path: Union[str, Path]) -> PosedImages:
    """The tiny-NeRF format: ``images`` [N, H, W, 3], ``poses`` [N, 4, 4] camera→world
    (Blender), ``focal`` in pixels."""
    with np.load(path) as d:
        missing = {"images", "poses", "focal"} - set(d.files)
        if missing:
            raise ValueError(f"{path} lacks {sorted(missing)}; has {d.files}")
        images = torch.from_numpy(np.asarray(d["images"], dtype=np.float32))
        poses = torch.from_numpy(np.asarray(d["poses"], dtype=np.float32))
        focal = float(d["focal"])
    if poses.shape[0] != images.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {poses.shape[0]} poses")
    n, h, w = images.shape[:3]
    return PosedImages(images, viewmats_from_blender(poses), intrinsics(focal, w, h, n))


def load_nerf_synthetic(folder: Union[str, Path], split: str = "train", size: int = 100,
                        background: Tuple[float, float, float] = (1.0, 1.0, 1.0), limit: int = 0) -> PosedImages:
    """A NeRF-synthetic scene: ``transforms_<split>.json`` (``camera_angle_x``, per-frame
    ``file_path`` and ``transform_matrix``) and RGBA PNGs, resized to ``size``² (Lanczos) and
    composited on ``background``; ``limit`` > 0 keeps the first ``limit`` frames."""
    from PIL import Image

    folder = Path(folder)
    meta_path = folder / f"transforms_{split}.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path} does not exist")
    meta = json.loads(meta_path.read_text())
    frames = meta["frames"][:limit] if limit else meta["frames"]
    images, poses = [], []
    bg = np.asarray(background, dtype=np.float32)
    for frame in frames:
        path = folder / (frame["file_path"] + ("" if frame["file_path"].endswith(".png") else ".png"))
        with Image.open(path) as im:
            rgba = np.asarray(im.convert("RGBA").resize((size, size), Image.LANCZOS), dtype=np.float32) / 255.0
        images.append(rgba[..., :3] * rgba[..., 3:] + bg * (1.0 - rgba[..., 3:]))
        poses.append(np.asarray(frame["transform_matrix"], dtype=np.float32))
    focal = 0.5 * size / math.tan(0.5 * float(meta["camera_angle_x"]))
    images_t = torch.from_numpy(np.stack(images))
    return PosedImages(images_t, viewmats_from_blender(torch.from_numpy(np.stack(poses))),
                       intrinsics(focal, size, size, len(frames)))
