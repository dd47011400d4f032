"""Training a :class:`~.nerf.NeRFField` with Lightning: random ray batches, volume rendering
with occupancy-grid skipping, held-out-view PSNR.

Instant-NGP's NeRF recipe (Müller et al., 2022, https://arxiv.org/abs/2201.05989, §5.4 and
appendix E), scaled to a CPU: every optimizer step renders ``batch_rays`` random pixels of
the training views (:func:`.nerf_render.render_rays`, a random offset per ray), the loss is
the MSE to the pixels' colours, Adam with β = (0.9, 0.99), ε = 1e-15; the occupancy grid
(:class:`.occupancy.OccupancyGrid`) is updated from the field's density every
``occupancy_every`` steps. Any :class:`~sparsity_core.SparsityCallback` program works on the
module, e.g. :class:`~.hashgrid_pruning.HashGridPruning` on a field built with a saliency gate;
the hash entries' usage it ranks by then counts each evaluated sample with its compositing
weight (``usage="render"``), so entries that only occluded or transparent samples read rank low.

Data (:class:`PosedRays`): the tiny-NeRF ``.npz`` (``images`` [N, H, W, 3] on a white
background, ``poses`` [N, 4, 4] camera→world in the Blender/OpenGL convention, ``focal``),
some views held out for testing.
"""
from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple, Union

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from sparsity_core.validation import check_int, check_positive

from .nerf import NeRFField
from .nerf_render import camera_rays, check_near_far, render_rays
from .occupancy import OccupancyGrid


def load_views(path: Union[str, Path]) -> Tuple[Tensor, Tensor, float]:
    """``(images [N, H, W, 3], poses [N, 4, 4] camera→world (OpenGL), focal)`` of a tiny-NeRF npz."""
    with np.load(path) as d:
        missing = {"images", "poses", "focal"} - set(d.files)
        if missing:
            raise ValueError(f"{path} lacks {sorted(missing)}; has {d.files}")
        images = torch.from_numpy(np.asarray(d["images"], dtype=np.float32))
        poses = torch.from_numpy(np.asarray(d["poses"], dtype=np.float32))
        focal = float(d["focal"])
    if images.dim() != 4 or images.shape[-1] != 3 or tuple(poses.shape) != (images.shape[0], 4, 4):
        raise ValueError(f"need images [N, H, W, 3] and poses [N, 4, 4], got {tuple(images.shape)} and "
                         f"{tuple(poses.shape)}")
    return images, poses, focal


class RandomRays(Dataset):
    """``length`` items, each ``batch`` rays drawn uniformly (with replacement) by the
    dataset's own generator: ``(origins [B, 3], dirs [B, 3], rgb [B, 3])``."""

    def __init__(self, origins: Tensor, dirs: Tensor, rgb: Tensor, batch: int, length: int, seed: int) -> None:
        self.origins, self.dirs, self.rgb, self.batch, self.length = origins, dirs, rgb, batch, length
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int):
        idx = torch.randint(self.rgb.shape[0], (self.batch,), generator=self.generator)
        return self.origins[idx], self.dirs[idx], self.rgb[idx]


class PosedRays(pl.LightningDataModule):
    """Training rays of all views but ``held_out``, and the held-out views for testing.

    Args:
        path: the ``.npz`` file.
        held_out: indices of the test views.
        batch_rays: rays per optimizer step.
        seed: seed of the ray batches.
    """

    def __init__(self, path: Union[str, Path], held_out: Sequence[int] = tuple(range(90, 100)),
                 batch_rays: int = 1024, seed: int = 0) -> None:
        super().__init__()
        self.path = Path(path)
        self.held_out = sorted({int(i) for i in held_out})
        self.batch_rays, self.seed = check_int(batch_rays, "batch_rays", 1), seed
        self.rays: Optional[Tuple[Tensor, Tensor, Tensor]] = None

    def setup(self, stage: Optional[str] = None) -> None:
        if self.rays is not None:
            return
        images, poses, self.focal = load_views(self.path)
        n = images.shape[0]
        if not self.held_out or self.held_out[0] < 0 or self.held_out[-1] >= n or len(self.held_out) >= n:
            raise ValueError(f"held_out must be some (not all) indices in [0, {n}), got {self.held_out}")
        train = [i for i in range(n) if i not in set(self.held_out)]
        self.height, self.width = images.shape[1:3]
        origins, dirs = camera_rays(poses[train], self.height, self.width, self.focal)
        self.rays = (origins.reshape(-1, 3), dirs.reshape(-1, 3), images[train].reshape(-1, 3))
        self.test_poses, self.test_images = poses[self.held_out], images[self.held_out]

    def train_dataloader(self) -> DataLoader:
        return DataLoader(RandomRays(*self.rays, batch=self.batch_rays, length=1000, seed=self.seed), batch_size=None)


class NeRFModule(pl.LightningModule):
    """Fit a :class:`~.nerf.NeRFField` to posed images (module docstring).

    Args:
        field: the field (default ``NeRFField()``).
        near, far: the rays' distance range (NeRF-synthetic: 2 and 6, cameras 4.03 from the centre).
        step: marching step (default ``2√3·bound / 128``: 128 steps across the box's diagonal).
        occupancy_resolution: cells per axis of the occupancy grid.
        occupancy_every: grid update interval in optimizer steps (``0``: no grid, every sample
            inside the box is evaluated).
        occupancy_decay, occupancy_warmup: the grid's decay per update (Instant-NGP: 0.95 over
            tens of thousands of steps; 0.6 suits runs of hundreds) and the first update step
            (before it every cell is occupied).
        lr: Adam's learning rate (Instant-NGP: 1e-2).
        background: colour behind the scene (white for the lego npz).
        usage: what a hash entry's usage (the :class:`~.hashgrid_pruning.SaliencyUsage`
            score, when a pruning program records it) counts: ``"samples"``, every evaluated
            sample (``Σ s(x)·w_e(x)``); ``"render"``, each sample weighted by its compositing
            weight ``T_i·α_i`` (``Σ T_i α_i·s(x)·w_e(x)``: what the entry adds to the pixels).
        seed: seed of the ray offsets and the grid's cell points.
    """

    def __init__(self, field: Optional[NeRFField] = None, near: float = 2.0, far: float = 6.0,
                 step: Optional[float] = None, occupancy_resolution: int = 32, occupancy_every: int = 16,
                 occupancy_decay: float = 0.6, occupancy_warmup: int = 32, lr: float = 1e-2,
                 background: float = 1.0, usage: str = "render", seed: int = 0) -> None:
        super().__init__()
        self.field = field if field is not None else NeRFField()
        self.near, self.far = check_near_far(near, far)
        bound = self.field.bound
        self.step_size = check_positive(step, "step") if step is not None else 2 * math.sqrt(3) * bound / 128
        self.occupancy_every = check_int(occupancy_every, "occupancy_every", 0)
        self.occupancy_warmup = check_int(occupancy_warmup, "occupancy_warmup", 0)
        self.occupancy = (OccupancyGrid(occupancy_resolution, bound, decay=occupancy_decay) if self.occupancy_every
                          else None)
        self.lr, self.background = check_positive(lr, "lr"), float(background)
        if usage not in ("samples", "render"):
            raise ValueError(f"usage must be 'samples' or 'render', got {usage!r}")
        self.usage = usage
        self.field.encoding.usage_from_forward = usage == "samples"
        self.generator = torch.Generator().manual_seed(seed)
        self.samples_per_ray: list = []

    @contextlib.contextmanager
    def _no_usage(self):
        """Grid updates are not training points: the encoding records no usage during them."""
        enc = self.field.encoding
        was = enc.record_usage
        enc.record_usage = False
        try:
            yield
        finally:
            enc.record_usage = was

    def _thickness(self, points: Tensor) -> Tensor:
        """``σ·δ``: the optical thickness of one marching step, what the occupancy grid thresholds."""
        return self.field.density(points) * self.step_size

    def render(self, origins: Tensor, dirs: Tensor, jitter: bool = False) -> Dict[str, Tensor]:
        occupied = self.occupancy.occupied if self.occupancy is not None else None
        return render_rays(self.field, origins, dirs, self.near, self.far, self.field.bound, self.step_size,
                           occupied, self.background, self.generator if jitter else None)

    def training_step(self, batch, batch_idx):
        origins, dirs, rgb = batch
        step = self.global_step
        if self.occupancy is not None and step >= self.occupancy_warmup and step % self.occupancy_every == 0:
            with self._no_usage():
                self.occupancy.update(self._thickness, self.generator)
        out = self.render(origins, dirs, jitter=True)
        enc = self.field.encoding
        if self.usage == "render" and enc.record_usage:
            keep = out["evaluated"]
            enc.record_points((out["points"][keep] + self.field.bound) / (2 * self.field.bound),
                              out["weights"][keep].detach())
        self.samples_per_ray.append(float(out["samples"]) / origins.shape[0])
        return F.mse_loss(out["color"], rgb)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr, betas=(0.9, 0.99), eps=1e-15)

    @torch.no_grad()
    def render_image(self, pose: Tensor, height: int, width: int, focal: float, chunk: int = 4096) -> Tensor:
        """``[H, W, 3]``: the view from camera→world ``pose [4, 4]`` (eval mode, no offsets)."""
        was = self.training
        self.eval()
        origins, dirs = camera_rays(pose, height, width, focal)
        o, d = origins.reshape(-1, 3), dirs.reshape(-1, 3)
        img = torch.cat([self.render(o[i:i + chunk], d[i:i + chunk])["color"] for i in range(0, o.shape[0], chunk)])
        self.train(was)
        return img.reshape(height, width, 3)

    @torch.no_grad()
    def psnr(self, poses: Tensor, images: Tensor, focal: float) -> float:
        """Mean over views of the PSNR (dB) of the rendered view against ``images [N, H, W, 3]``."""
        values = []
        for pose, image in zip(poses, images):
            mse = float(F.mse_loss(self.render_image(pose, image.shape[0], image.shape[1], focal).clamp(0, 1), image))
            values.append(-10.0 * math.log10(max(mse, 1e-12)))
        return sum(values) / len(values)
