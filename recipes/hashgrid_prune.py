"""HollowNeRF-style hash-grid pruning of an image field, configured through LightningCLI.

    .venv/bin/python recipes/hashgrid_prune.py                          # lego view 0, 256x256, keep 35%
    .venv/bin/python recipes/hashgrid_prune.py --pruning.keep 0.25 --trainer.max_steps 3000
    .venv/bin/python recipes/hashgrid_prune.py --data.view 50 --data.size 128 --model.log2_table_size 12
    .venv/bin/python recipes/hashgrid_prune.py --help                   # every option
    .venv/bin/python recipes/hashgrid_prune.py --print_config > run.yaml   # then: --config run.yaml

What is fit, and why: one NeRF-synthetic "lego" training view (``lego/train/r_<view>.png``,
800x800 RGBA composited on white, resized with Lanczos to ``--data.size``) as a 2D signal
``(x, y) -> RGB`` with a 2D multiresolution hash encoding (Instant-NGP) and a small MLP: a
recipe that runs in about two minutes on one CPU thread, and keeps what HollowNeRF's pruning
acts on (three quarters of the picture is empty white background whose hash entries collide
with the object's). The radiance-field case, a small Instant-NGP-style NeRF of the whole lego
scene with volume rendering and occupancy-grid sample skipping
(:mod:`sparsity_plugins.splat.nerf`), is ``bench/hashgrid.py``: its eight fits take about a
quarter of an hour of CPU at 100x100. The image is a continuous signal (bilinear between pixel
centres, Instant-NGP's image protocol): every step trains on
fresh uniform random points, and the PSNR is measured on ``--data.test_points`` other random
points, never trained on.

Two fits from the same seed, the same steps and the same data:

1. dense (``--baseline true``): the plain hash encoding, no gate;
2. pruned: the encoding with a ``--pruning.saliency_resolution``² saliency grid and
   :class:`~sparsity_plugins.splat.hashgrid_pruning.HashGridPruning`: dense training until
   ``--pruning.start`` of the steps, then the kept fraction of hash parameters ramps (cubic,
   a core schedule) down to ``--pruning.keep`` at ``--pruning.end`` while ADMM drives the
   saliency mass to the same fraction; fine-tuning with the final masks; at the end the
   pruned entries are removed from storage.

Under ``--output`` (default recipes/out/hashgrid_prune): ``report.json`` (PSNRs, parameters
and bytes actually kept, times), the run's config, ``pruned_state_dict.pt`` (the compacted
field; it loads into ``ImageField`` of the same configuration with
``torch.load(..., weights_only=True)``) and ``pruned.png`` / ``dense.png`` renders.
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import time
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from jsonargparse import DefaultHelpFormatter
from pytorch_lightning.cli import LightningCLI
from torch import nn
from torch.utils.data import DataLoader, Dataset

from sparsity_core.schedules import Cubic
from sparsity_plugins.splat.hashgrid import HashEncoding
from sparsity_core import SparsityCallback
from sparsity_plugins.splat.hashgrid_pruning import HashGridPruning

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SPARSITY_SHARED_DATA", REPO.parent / "shared" / "data"))
OUT = REPO / "recipes" / "out" / "hashgrid_prune"


# -- data --------------------------------------------------------------------------------
def lego_view(root: Path, view: int, size: int) -> torch.Tensor:
    """``[size, size, 3]`` in [0, 1]: lego training view ``view`` composited on white."""
    from PIL import Image

    path = root / "nerf_synthetic_lego" / "lego" / "train" / f"r_{view}.png"
    if not path.exists():
        raise FileNotFoundError(f"lego view not found at {path}: pass --data.root (the folder holding "
                                "nerf_synthetic_lego/, default ../shared/data or $SPARSITY_SHARED_DATA)")
    rgba = np.asarray(Image.open(path).convert("RGBA"), dtype=np.float32) / 255.0
    rgb = rgba[..., :3] * rgba[..., 3:] + (1.0 - rgba[..., 3:])
    img = Image.fromarray((rgb * 255.0 + 0.5).astype(np.uint8)).resize((size, size), Image.LANCZOS)
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0)


def sample(image: torch.Tensor, xy: torch.Tensor) -> torch.Tensor:
    """Colours ``[n, 3]`` of ``image [H, W, 3]`` at ``xy [n, 2] ∈ [0, 1]²`` (x right, y down),
    bilinear between pixel centres."""
    grid = (xy * 2.0 - 1.0).view(1, -1, 1, 2)
    out = F.grid_sample(image.permute(2, 0, 1)[None], grid, mode="bilinear", padding_mode="border",
                        align_corners=False)
    return out[0, :, :, 0].T


class RandomPoints(Dataset):
    """``length`` batches of ``batch_size`` uniform random points with their colours; every
    item is a fresh draw from the dataset's own generator (the signal is continuous)."""

    def __init__(self, image: torch.Tensor, batch_size: int, length: int, seed: int) -> None:
        self.image, self.batch_size, self.length = image, batch_size, length
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int):
        xy = torch.rand(self.batch_size, 2, generator=self.generator)
        return xy, sample(self.image, xy)


class LegoImage(pl.LightningDataModule):
    """A lego view as the continuous signal ``(x, y) -> RGB`` (bilinear between pixels).

    Training draws ``batch_size`` fresh uniform points per step (Instant-NGP's image protocol);
    the held-out set is ``test_points`` other uniform points (another seed), never trained on.

    Args:
        view: index of the training view (``r_<view>.png``).
        size: the image is resized to ``size`` x ``size``.
        batch_size: random points per optimizer step.
        test_points: held-out points for the PSNR.
        root: folder holding ``nerf_synthetic_lego/`` (default ../shared/data or $SPARSITY_SHARED_DATA).
        seed: seed of the training points (the held-out points use ``seed + 1``).
    """

    def __init__(self, view: int = 0, size: int = 256, batch_size: int = 4096, test_points: int = 65536,
                 root: Optional[str] = None, seed: int = 0) -> None:
        super().__init__()
        if size < 8 or batch_size < 1 or test_points < 1:
            raise ValueError(f"need size >= 8, batch_size >= 1, test_points >= 1; got {size}, {batch_size}, "
                             f"{test_points}")
        self.view, self.size, self.batch_size, self.test_points, self.seed = view, size, batch_size, test_points, seed
        self.root = Path(root) if root else SHARED
        self.image: Optional[torch.Tensor] = None

    def setup(self, stage: Optional[str] = None) -> None:
        if self.image is None:
            self.image = lego_view(self.root, self.view, self.size)
            xy = torch.rand(self.test_points, 2, generator=torch.Generator().manual_seed(self.seed + 1))
            self.test = (xy, sample(self.image, xy))

    def train_dataloader(self) -> DataLoader:
        return DataLoader(RandomPoints(self.image, self.batch_size, 100, self.seed), batch_size=None)


# -- model -------------------------------------------------------------------------------
class ImageField(pl.LightningModule):
    """``(x, y) -> RGB``: a 2D hash encoding and an MLP, trained with Adam on the MSE.

    Args:
        levels, log2_table_size, features, base_resolution: the hash encoding (L, log2 T, F, N_min).
        max_resolution: N_max (default: the image size, set by the recipe).
        saliency_resolution: vertices per axis of the saliency grid (``None``: no gate).
        hidden: width of the MLP's two hidden layers.
        lr: Adam learning rate (Instant-NGP: 1e-2, betas (0.9, 0.99), eps 1e-15).
    """

    def __init__(self, levels: int = 16, log2_table_size: int = 14, features: int = 2, base_resolution: int = 16,
                 max_resolution: int = 256, saliency_resolution: Optional[int] = None, hidden: int = 64,
                 lr: float = 1e-2) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.encoding = HashEncoding(dim=2, levels=levels, log2_table_size=log2_table_size, features=features,
                                     base_resolution=base_resolution, max_resolution=max_resolution,
                                     saliency_resolution=saliency_resolution)
        self.mlp = nn.Sequential(nn.Linear(self.encoding.output_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden),
                                 nn.ReLU(), nn.Linear(hidden, 3))

    def forward(self, xy: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.mlp(self.encoding(xy)))

    def training_step(self, batch, batch_idx):
        xy, rgb = batch
        return F.mse_loss(self(xy), rgb)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr, betas=(0.9, 0.99), eps=1e-15)

    @torch.no_grad()
    def psnr(self, xy: torch.Tensor, rgb: torch.Tensor) -> float:
        """PSNR (dB) of the field at ``xy`` against ``rgb`` (colours in [0, 1])."""
        was = self.training
        self.eval()
        mse = float(F.mse_loss(self(xy), rgb))
        self.train(was)
        return -10.0 * float(np.log10(max(mse, 1e-12)))

    @torch.no_grad()
    def render(self, size: int) -> torch.Tensor:
        ys, xs = torch.meshgrid((torch.arange(size) + 0.5) / size, (torch.arange(size) + 0.5) / size, indexing="ij")
        was = self.training
        self.eval()
        img = self(torch.stack([xs, ys], -1).reshape(-1, 2)).reshape(size, size, 3)
        self.train(was)
        return img


# -- the run -----------------------------------------------------------------------------
def pruning_program(keep: float, steps: int, start: float = 0.2, end: float = 0.6, rho: float = 1e-5,
                     admm_every: int = 16, allocator: str = "global", update_every: int = 25) -> HashGridPruning:
    """HashGridPruning whose cubic ramp runs from ``start`` to ``end`` (fractions of ``steps``)."""
    if not 0.0 < keep <= 1.0 or not 0.0 <= start < end <= 1.0:
        raise ValueError(f"need 0 < keep <= 1 and 0 <= start < end <= 1; got keep={keep}, start={start}, end={end}")
    s0, s1 = max(1, int(start * steps)), max(2, int(end * steps))
    schedule = Cubic(start_step=s0, end_step=s1, final_sparsity=1.0 - keep)
    return HashGridPruning(schedule, rho=rho, admm_every=admm_every, update_every=update_every,
                           allocator=None if allocator == "global" else allocator)


def fit(model: ImageField, data: LegoImage, trainer: pl.Trainer) -> float:
    """``trainer.fit``; returns the wall time in seconds."""
    start = time.perf_counter()
    trainer.fit(model, datamodule=data)
    return time.perf_counter() - start


def _save_png(img: torch.Tensor, path: Path) -> None:
    from PIL import Image

    Image.fromarray((img.clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8)).save(path)


class HelpFormatter(DefaultHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """jsonargparse's help, with the description printed as written."""


class RecipeCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--pruning.keep", type=float, default=0.35, help="fraction of hash parameters kept")
        parser.add_argument("--pruning.start", type=float, default=0.2, help="ramp start (fraction of the steps)")
        parser.add_argument("--pruning.end", type=float, default=0.6, help="ramp end (fraction of the steps)")
        parser.add_argument("--pruning.rho", type=float, default=1e-5, help="ADMM penalty weight")
        parser.add_argument("--pruning.admm_every", type=int, default=16, help="ADMM z/u update interval (steps)")
        parser.add_argument("--pruning.saliency_resolution", type=int, default=17, help="saliency vertices per axis")
        parser.add_argument("--pruning.allocator", type=str, default="global", help="global or uniform")
        parser.add_argument("--baseline", type=bool, default=True, help="also fit the dense (ungated) field")
        parser.add_argument("--output", type=str, default=str(OUT), help="folder of the report, config and field")
        parser.add_argument("--threads", type=int, default=1,
                            help="torch CPU threads (small gather/scatter ops: more threads rarely help)")
        parser.link_arguments("data.size", "model.max_resolution")

    def before_instantiate_classes(self) -> None:
        torch.set_num_threads(self.config.threads)


def run(cli: RecipeCLI) -> Dict[str, Any]:
    model, data, cfg = cli.model, cli.datamodule, cli.config
    steps = cli.trainer.max_steps
    if steps is None or steps < 10:
        raise ValueError(f"--trainer.max_steps must be >= 10, got {steps}")
    data.setup("fit")
    report: Dict[str, Any] = {"view": data.view, "size": data.size, "steps": steps, "threads": torch.get_num_threads(),
                              "keep": cfg.pruning.keep, "batch_size": data.batch_size,
                              "test_points": len(data.test[0])}
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.baseline:
        dense = copy.deepcopy(model)
        pl.seed_everything(cfg.seed_everything, verbose=False)
        report["dense_fit_s"] = fit(dense, data, cli.trainer)
        report["dense_psnr"] = dense.psnr(*data.test)
        report["dense_hash_params"] = dense.encoding.storage()["params_kept"]
        _save_png(dense.render(data.size), out / "dense.png")

    hp = {k: v for k, v in model.hparams.items() if not k.startswith("_")}  # LightningCLI adds _instantiator
    hp["saliency_resolution"] = cfg.pruning.saliency_resolution
    pl.seed_everything(cfg.seed_everything, verbose=False)
    pruned = ImageField(**hp)
    pruning = pruning_program(cfg.pruning.keep, steps, cfg.pruning.start, cfg.pruning.end, cfg.pruning.rho,
                               cfg.pruning.admm_every, cfg.pruning.allocator)
    report["pruned_fit_s"] = fit(pruned, data, cli.instantiate_trainer(callbacks=[SparsityCallback(programs=[pruning])]))
    report["pruned_psnr"] = pruned.psnr(*data.test)
    report["storage"] = pruning.result
    report["mlp_params"] = sum(p.numel() for p in pruned.mlp.parameters())
    torch.save(pruned.state_dict(), out / "pruned_state_dict.pt")
    _save_png(pruned.render(data.size), out / "pruned.png")
    (out / "report.json").write_text(json.dumps(report, indent=2))
    (out / "config.yaml").write_text(cli.parser.dump(cfg, skip_none=False))

    st = pruning.result
    print(f"\nlego view {data.view} at {data.size}x{data.size}, {steps} steps x {data.batch_size} random points, "
          f"PSNR on {report['test_points']} held-out points, {torch.get_num_threads()} thread(s)")
    if cfg.baseline:
        print(f"dense : PSNR {report['dense_psnr']:.2f} dB, hash parameters {report['dense_hash_params']}, "
              f"fit {report['dense_fit_s']:.0f} s")
    print(f"pruned: PSNR {report['pruned_psnr']:.2f} dB, hash parameters {st['params_kept']} of "
          f"{st['params_dense']} kept ({st['kept_fraction']:.1%}), index {st['index_bytes']} B, saliency "
          f"{st['saliency_params']} parameters (mass {st['saliency_mass']:.1f} / budget "
          f"{st['saliency_capacity']:.1f}), fit {report['pruned_fit_s']:.0f} s")
    if cfg.baseline:
        print(f"summary: PSNR change {report['pruned_psnr'] - report['dense_psnr']:+.2f} dB at "
              f"{st['kept_fraction']:.0%} of the hash parameters")
    print(f"wrote {out}/report.json, config.yaml, pruned_state_dict.pt, dense.png, pruned.png")
    return report


TRAINER_DEFAULTS = {"accelerator": "cpu", "devices": 1, "logger": False, "enable_checkpointing": False,
                    "enable_progress_bar": False, "enable_model_summary": False, "num_sanity_val_steps": 0}


def main(args: Optional[List[str]] = None) -> Dict[str, Any]:
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*is smaller than the logging interval.*")
    cli = RecipeCLI(ImageField, LegoImage, run=False, args=args, seed_everything_default=0,
                    save_config_callback=None, trainer_defaults={**TRAINER_DEFAULTS, "max_steps": 1500},
                    parser_kwargs={"description": __doc__, "formatter_class": HelpFormatter})
    return run(cli)


if __name__ == "__main__":
    main()
