"""Channel pruning of a timm CNN or ViT with fine-tuning, configured through LightningCLI.

    make demo                                            # resnet10t on scikit-learn digits, no files needed
    .venv/bin/python recipes/vision_channel_pruning.py --help
    .venv/bin/python recipes/vision_channel_pruning.py --model.model_name vit_tiny_patch16_224 --data.batch_size 32
    .venv/bin/python recipes/vision_channel_pruning.py --data.dataset cifar10 --data.train_subset 10000
    .venv/bin/python recipes/vision_channel_pruning.py --print_config > run.yaml   # then: --config run.yaml

One Trainer.fit in three phases counted in epochs (the trainer runs their sum):

1. dense training; the weights at its end are the dense baseline (``--pruning.dense_epochs 0``
   prunes from the random initialization instead);
2. pruning: ChannelPruning's soft masks on coupled channel groups (CNN) or on attention
   heads and MLP channels (ViT) ramp on a schedule (cubic by default) to ``--pruning.sparsity``
   of ``--pruning.measure`` (MACs by default); at the end of the phase the pruned channels are
   physically removed and the optimizer carries its moments over to the smaller model;
3. fine-tuning of the smaller model.

The learning rate runs one warm-up + cosine cycle over the dense phase and another over
pruning and fine-tuning; the pruned model thus trains longer than the dense baseline, and on
short runs it can score higher. Afterwards: test accuracy of the dense baseline and of the pruned
model, the pruning report (parameters, MACs, CPU latency at the given batch sizes; both
models with BatchNorm folded), and under ``--output`` the JSON report, the run's config and
the exported pruned model (``model.pt`` loads with timm alone, ``state_dict.pt``,
``pruning.json``).

Data (``--data.dataset``): ``digits`` (scikit-learn's 8x8 digits, embedded, the default),
``mnist`` (``<root>/mnist/MNIST/raw/*.gz``) or ``cifar10`` (CIFAR-10 (JPEG),
``<root>/cifar10_jpeg/*.zip``); ``--data.root`` defaults to ``../shared/data`` (or
``$SPARSITY_SHARED_DATA``), files are unpacked into ``--data.cache_dir``. Images are
``img_size`` square with 3 channels (grey ones repeated).
"""
from __future__ import annotations

import argparse
import gzip
import logging
import math
import os
import shutil
import time
import warnings
import zipfile
from functools import partial
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Sequence, Tuple

import pytorch_lightning as pl
import timm
import torch
import torch.nn.functional as F
from jsonargparse import DefaultHelpFormatter
from pytorch_lightning.cli import LightningCLI
from torch.utils.data import DataLoader, Dataset, Subset

from sparsity_core.lightning import SparsityCallback
from sparsity_core.program import Host
from sparsity_core.schedules import Cosine, Cubic, Exponential, Linear
from sparsity_plugins.vision import (ChannelPruning, format_report, optimize_for_inference, pruning_report,
                                     save_pruned)
from sparsity_plugins.vision.report import report_json

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SPARSITY_SHARED_DATA", REPO.parent / "shared" / "data"))
OUT = REPO / "recipes" / "out" / "vision_channel_pruning"
RAMPS = {"cubic": Cubic, "linear": Linear, "cosine": Cosine, "exponential": Exponential}


# -- data --------------------------------------------------------------------------------
class GreyImages(Dataset):
    """Grey images ``[N, 1, S, S]`` served as 3 identical channels (a view, no copy)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return self.x[i].expand(3, -1, -1), self.y[i]


def _pick(n_total: int, n: Optional[int], seed: int) -> torch.Tensor:
    """Indices of a seeded random subset of ``n`` (all when ``n`` is None)."""
    if n is None or n >= n_total:
        return torch.arange(n_total)
    return torch.randperm(n_total, generator=torch.Generator().manual_seed(seed))[:n]


def _grey(x: torch.Tensor, y: torch.Tensor, size: int, mean: float, std: float) -> GreyImages:
    x = F.interpolate(x.float().unsqueeze(1), size=(size, size), mode="bilinear", align_corners=False)
    return GreyImages((x - mean) / std, y.long())


def digits(size: int, n_train: Optional[int], n_test: Optional[int], seed: int) -> Tuple[Dataset, Dataset]:
    """scikit-learn's digits (1,797 images, 8x8, 16 grey levels): stratified 80/20 split."""
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as err:
        raise ImportError("the digits data set needs scikit-learn: pip install scikit-learn") from err
    x, y = load_digits(return_X_y=True)
    x, y = torch.tensor(x, dtype=torch.float32).reshape(-1, 8, 8) / 16.0, torch.tensor(y)
    tr, te = train_test_split(range(len(y)), test_size=0.2, random_state=seed, stratify=y.numpy())
    tr, te = torch.tensor(tr), torch.tensor(te)
    tr, te = tr[_pick(len(tr), n_train, seed)], te[_pick(len(te), n_test, seed)]
    mean, std = float(x[tr].mean()), float(x[tr].std())
    return _grey(x[tr], y[tr], size, mean, std), _grey(x[te], y[te], size, mean, std)


def _require(path: Path, what: str) -> None:
    if not path.exists():
        raise FileNotFoundError(f"{what} not found at {path}: pass --data.root (the folder holding it, default "
                                f"../shared/data or $SPARSITY_SHARED_DATA) or use --data.dataset digits")


def mnist(root: Path, cache: Path, size: int, n_train: Optional[int], n_test: Optional[int], seed: int):
    """MNIST through torchvision: the shared ``.gz`` files are gunzipped once into the cache."""
    from torchvision.datasets import MNIST

    src = root / "mnist" / "MNIST" / "raw"
    _require(src, "MNIST (mnist/MNIST/raw/*.gz)")
    raw = cache / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for gz in src.glob("*.gz"):
        if not (raw / gz.stem).exists():
            with gzip.open(gz) as fin, open(raw / gz.stem, "wb") as fout:
                shutil.copyfileobj(fin, fout)
    out = []
    for train, n in ((True, n_train), (False, n_test)):
        ds = MNIST(str(cache), train=train, download=False)
        idx = _pick(len(ds.targets), n, seed)
        out.append(_grey(ds.data[idx] / 255.0, ds.targets[idx], size, 0.1307, 0.3081))
    return tuple(out)


def cifar10(root: Path, cache: Path, size: int, n_train: Optional[int], n_test: Optional[int], seed: int,
            augment: bool):
    """CIFAR-10 (JPEG): the shared zips are extracted once into the cache, read with ``ImageFolder``."""
    from torchvision import transforms as T
    from torchvision.datasets import ImageFolder

    src = root / "cifar10_jpeg"
    dest = cache / "cifar10_jpeg"
    for split in ("train", "test"):
        if not (dest / split / ".complete").exists():
            zf = src / f"cifar10_{split}_jpeg.zip"
            _require(zf, f"CIFAR-10 (JPEG) {split} split (cifar10_jpeg/{zf.name})")
            with zipfile.ZipFile(zf) as z:
                z.extractall(dest)
            (dest / split / ".complete").touch()
    norm = [T.ToTensor(), T.Normalize((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))]
    resize = [T.Resize(size, antialias=True)] if size != 32 else []
    aug = [T.RandomCrop(size, padding=size // 8), T.RandomHorizontalFlip()] if augment else []
    train = ImageFolder(str(dest / "train"), T.Compose(resize + aug + norm))
    test = ImageFolder(str(dest / "test"), T.Compose(resize + norm))
    return (Subset(train, _pick(len(train), n_train, seed).tolist()),
            Subset(test, _pick(len(test), n_test, seed).tolist()))


class VisionData(pl.LightningDataModule):
    """Image classification data (10 classes, ``img_size`` square, 3 channels).

    Args:
        dataset: ``digits`` (embedded in scikit-learn), ``mnist`` or ``cifar10`` (CIFAR-10 (JPEG)).
        root: folder holding ``mnist/`` and ``cifar10_jpeg/`` (default ../shared/data or
            $SPARSITY_SHARED_DATA).
        cache_dir: writable folder the files are unpacked into (default recipes/out/data).
        img_size: images are resized to this (digits 8, MNIST 28, CIFAR-10 32 natively).
        batch_size: training batch size.
        train_subset: train on a seeded random subset of this many images (default all).
        test_subset: evaluate on a seeded random subset of this many images (default all).
        augment: cifar10 only: random crop (padding img_size/8) and horizontal flip in training.
        num_workers: DataLoader worker processes.
        seed: seed of the split, the subsets and the shuffling.
    """

    def __init__(self, dataset: Literal["digits", "mnist", "cifar10"] = "digits", root: Optional[str] = None,
                 cache_dir: Optional[str] = None, img_size: int = 32, batch_size: int = 64,
                 train_subset: Optional[int] = None, test_subset: Optional[int] = None, augment: bool = True,
                 num_workers: int = 0, seed: int = 0) -> None:
        super().__init__()
        if img_size < 8 or batch_size < 1:
            raise ValueError(f"img_size must be >= 8 and batch_size >= 1, got {img_size}, {batch_size}")
        self.dataset, self.img_size, self.batch_size = dataset, img_size, batch_size
        self.root = Path(root) if root else SHARED
        self.cache = Path(cache_dir) if cache_dir else REPO / "recipes" / "out" / "data"
        self.subsets = (train_subset, test_subset)
        self.augment, self.num_workers, self.seed = augment, num_workers, seed
        self.train: Optional[Dataset] = None
        self.test: Optional[Dataset] = None

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train is not None:
            return
        args = (self.img_size, *self.subsets, self.seed)
        if self.dataset == "digits":
            self.train, self.test = digits(*args)
        elif self.dataset == "mnist":
            self.train, self.test = mnist(self.root, self.cache, *args)
        else:
            self.train, self.test = cifar10(self.root, self.cache, *args, augment=self.augment)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train, batch_size=self.batch_size, shuffle=True, num_workers=self.num_workers,
                          drop_last=len(self.train) > self.batch_size,  # no batch of one (BatchNorm)
                          generator=torch.Generator().manual_seed(self.seed))

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.test, batch_size=256, num_workers=self.num_workers)

    test_dataloader = val_dataloader


# -- model -------------------------------------------------------------------------------
def lr_factor(step: int, cycles: Sequence[int], warmup: float) -> float:
    """Consecutive cycles (lengths in steps), each a linear warm-up then a cosine decay to 0."""
    for length in cycles:
        if step < length:
            break
        step -= length
    else:
        return 0.0
    w = max(1, int(warmup * length))
    if step < w:
        return (step + 1) / w
    return 0.5 * (1.0 + math.cos(math.pi * (step - w) / max(1, length - w)))


class TimmClassifier(pl.LightningModule):
    """A timm model (random initialization) trained with AdamW and warm-up + cosine cycles.

    Args:
        model_name: any timm model name, e.g. resnet10t, resnet18, convnext_atto, vit_tiny_patch16_224.
        num_classes: classifier outputs.
        in_chans: input channels.
        img_size: input size; passed to models with a fixed input size (ViTs) only.
        patch_size: models with a fixed input size only; default img_size // 4 (a 4x4 grid of
            patches) when the image is smaller than the model's native input.
        model_kwargs: further keyword arguments of timm.create_model, e.g. {"depth": 6}.
        lr: peak learning rate of each cycle (default 3e-3, or 1e-3 for models with a fixed input
            size: a ViT trained from scratch on digits barely learns at 3e-3).
        weight_decay: AdamW weight decay.
        warmup: fraction of each cycle spent warming up linearly.
        lr_cycles: lengths of the learning-rate cycles in epochs (default one over the whole fit).
    """

    def __init__(self, model_name: str = "resnet10t", num_classes: int = 10, in_chans: int = 3, img_size: int = 32,
                 patch_size: Optional[int] = None, model_kwargs: Optional[Dict[str, Any]] = None,
                 lr: Optional[float] = None, weight_decay: float = 0.05, warmup: float = 0.15,
                 lr_cycles: Optional[List[int]] = None) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = self.build_net()
        self.lr = lr if lr is not None else 1e-3 if self.fixed_input_size() else 3e-3
        self.example_input_array = torch.randn(2, in_chans, img_size, img_size,
                                               generator=torch.Generator().manual_seed(0))

    def fixed_input_size(self) -> bool:
        """Whether timm builds the model for one input size (ViTs: their position embeddings)."""
        cfg = timm.models.get_pretrained_cfg(self.hparams.model_name)
        return cfg is not None and bool(getattr(cfg, "fixed_input_size", False))

    def build_net(self) -> torch.nn.Module:
        """A fresh (randomly initialized) network of this configuration."""
        h = self.hparams
        kwargs: Dict[str, Any] = {}
        if self.fixed_input_size():
            cfg = timm.models.get_pretrained_cfg(h.model_name)
            kwargs["img_size"] = h.img_size
            if h.patch_size is not None:
                kwargs["patch_size"] = h.patch_size
            elif h.img_size < cfg.input_size[-1]:
                kwargs["patch_size"] = max(1, h.img_size // 4)
        kwargs.update(h.model_kwargs or {})
        return timm.create_model(h.model_name, pretrained=False, num_classes=h.num_classes, in_chans=h.in_chans,
                                 **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_acc", (self(x).argmax(1) == y).float().mean(), on_epoch=True, batch_size=len(y))

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=self.hparams.weight_decay)
        epochs = self.trainer.max_epochs
        per_epoch = max(1, self.trainer.estimated_stepping_batches // epochs)
        cycles = [c * per_epoch for c in (self.hparams.lr_cycles or [epochs]) if c > 0]
        sched = torch.optim.lr_scheduler.LambdaLR(opt, partial(lr_factor, cycles=cycles, warmup=self.hparams.warmup))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


# -- pruning in phases -------------------------------------------------------------------
class PhasedChannelPruning(ChannelPruning):
    """The :class:`ChannelPruning` program over epoch phases: dense, pruning (masks ramp),
    removal, fine-tuning. The one :class:`SparsityCallback` drives it (see :class:`RecipeCLI`).

    Args:
        sparsity: fraction of ``measure`` removed at the end of the pruning phase.
        measure: what the sparsity counts: units (channels/heads), params or macs.
        schedule: shape of the ramp over the pruning phase (cubic: Zhu & Gupta 2017).
        dense_epochs: epochs of dense training before pruning starts.
        prune_epochs: epochs over which the soft masks ramp to ``sparsity``; the channels are
            removed at the end of the last one.
        finetune_epochs: epochs of training of the smaller model after removal.
        mask_updates: how many times the masks are recomputed during the ramp.
        criterion: group_l2, group_l1, taylor, magnitude, bn_scale, head_sensitivity or random.
        allocator: global (rank the units of all groups together) or uniform (same ratio per group).
        enforcement: group (pruned slices zeroed), mask_sparsity (L1 toward the mask) or group_envelope.
        round_to: kept channel counts are multiples of this.
        exclude: regular expressions of module names never pruned (the classifier never is).
        prune_heads: attention heads are units (ViT).
        prune_embed_dim: also prune a transformer's embedding dimension.
        verbose: print one line per epoch.
    """

    def __init__(self, sparsity: float = 0.5, measure: Literal["units", "params", "macs"] = "macs",
                 schedule: Literal["cubic", "linear", "cosine", "exponential"] = "cubic", dense_epochs: int = 4,
                 prune_epochs: int = 3, finetune_epochs: int = 3, mask_updates: int = 10,
                 criterion: str = "group_l2", allocator: Literal["global", "uniform"] = "global",
                 enforcement: Literal["group", "mask_sparsity", "group_envelope"] = "group", round_to: int = 8,
                 exclude: Optional[List[str]] = None, prune_heads: bool = True, prune_embed_dim: bool = False,
                 verbose: bool = True) -> None:
        if not 0.0 < sparsity < 1.0:
            raise ValueError(f"sparsity must be in (0, 1), got {sparsity}")
        if dense_epochs < 0 or prune_epochs < 1 or finetune_epochs < 0 or mask_updates < 1:
            raise ValueError(f"need dense_epochs >= 0, prune_epochs >= 1, finetune_epochs >= 0, mask_updates >= 1; "
                             f"got {dense_epochs}, {prune_epochs}, {finetune_epochs}, {mask_updates}")
        super().__init__(sparsity, criterion=criterion, allocator=allocator, enforcement=enforcement, measure=measure,
                         round_to=round_to, exclude=exclude, prune_heads=prune_heads,
                         prune_embed_dim=prune_embed_dim, finalize=False)
        self.sparsity, self.ramp = sparsity, RAMPS[schedule]
        self.epochs = (dense_epochs, prune_epochs, finetune_epochs)
        self.mask_updates, self.verbose = mask_updates, verbose
        self.dense_state: Optional[Dict[str, torch.Tensor]] = None
        self.phase_steps = (0, 0)  # optimizer steps at the end of the dense and of the pruning phase

    def attach(self, host: Host) -> None:
        trainer = host.trainer
        if self.controller is None:  # steps are known once the data is set up
            dense, prune, _ = self.epochs
            if trainer.max_epochs != sum(self.epochs) or trainer.max_steps != -1:
                raise ValueError(f"the trainer must run the phases' {sum(self.epochs)} epochs and no max_steps")
            per_epoch = max(1, trainer.estimated_stepping_batches // trainer.max_epochs)
            self.phase_steps = (dense * per_epoch, (dense + prune) * per_epoch)
            self.schedule = self.ramp(start_step=self.phase_steps[0], end_step=self.phase_steps[1],
                                      final_sparsity=self.sparsity)
            self.update_every = max(1, prune * per_epoch // self.mask_updates)
        super().attach(host)

    def start(self, step: int) -> None:
        if step == self.phase_steps[0]:
            self._snapshot()
        super().start(step)

    def after_optimizer_step(self, step: int) -> None:
        if step == self.phase_steps[0]:  # the end of the dense phase, before any mask acts
            self._snapshot()
        super().after_optimizer_step(step)
        if step == self.phase_steps[1]:
            self.remove_now(self.host.trainer)

    def _snapshot(self) -> None:
        self.dense_state = {k: v.detach().cpu().clone() for k, v in self.host.model.net.state_dict().items()}

    def phase(self, epoch: int) -> str:
        dense, prune, _ = self.epochs
        return "dense" if epoch < dense else "prune" if epoch < dense + prune else "finetune"


class PhaseLog(pl.Callback):
    """One line per epoch: phase, loss, validation accuracy, sparsity, time."""

    def __init__(self, pruning: PhasedChannelPruning) -> None:
        self.pruning = pruning
        self._t0, self._removed = 0.0, False

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._t0, self._removed = time.perf_counter(), self.pruning.finalized

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        p, epoch = self.pruning, trainer.current_epoch
        if not p.verbose:
            return
        m = trainer.callback_metrics
        acc = f"  val acc {float(m['val_acc']):.4f}" if "val_acc" in m else ""
        removed = "  channels removed" if p.finalized and not self._removed else ""
        print(f"epoch {epoch + 1:>3}/{trainer.max_epochs} {p.phase(epoch):<8} loss "
              f"{float(m.get('train_loss', float('nan'))):.4f}{acc}  {p.measure} sparsity "
              f"{p.schedule.value(trainer.global_step):4.0%}{removed}  {time.perf_counter() - self._t0:.1f} s",
              flush=True)


# -- the run -----------------------------------------------------------------------------
@torch.no_grad()
def accuracy(model: torch.nn.Module, loader: DataLoader) -> float:
    model.eval()
    correct = total = 0
    for x, y in loader:
        correct += int((model(x).argmax(1) == y).sum())
        total += len(y)
    return correct / total


def total_epochs(dense: int, prune: int, finetune: int) -> int:
    return dense + prune + finetune


def lr_cycles(dense: int, prune: int, finetune: int) -> List[int]:
    """One learning-rate cycle for the dense phase, one for pruning and fine-tuning."""
    return [dense, prune + finetune]


class HelpFormatter(DefaultHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """jsonargparse's help, with the description printed as written."""


class RecipeCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.add_class_arguments(PhasedChannelPruning, "pruning")
        parser.add_argument("--output", type=str, default=str(OUT), help="folder of the report, config and model")
        parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (training and latency)")
        parser.add_argument("--report.batches", type=List[int], default=[1, 32], help="latency batch sizes")
        parser.add_argument("--report.repeats", type=int, default=10, help="timed forwards per model (median)")
        phases = ("pruning.dense_epochs", "pruning.prune_epochs", "pruning.finetune_epochs")
        parser.link_arguments(phases, "trainer.max_epochs", compute_fn=total_epochs)
        parser.link_arguments(phases, "model.lr_cycles", compute_fn=lr_cycles)
        parser.link_arguments("data.img_size", "model.img_size")

    def before_instantiate_classes(self) -> None:
        torch.set_num_threads(self.config.threads)

    def instantiate_trainer(self, **kwargs: Any) -> pl.Trainer:
        """The trainer of the config, with the one SparsityCallback driving the pruning program."""
        trainer = super().instantiate_trainer(**kwargs)
        pruning = self.config_init["pruning"]
        trainer.callbacks.extend([SparsityCallback(programs=[pruning], log_per_target=False), PhaseLog(pruning)])
        return trainer


def run(cli: RecipeCLI) -> Dict[str, Any]:
    model, data, trainer, cfg = cli.model, cli.datamodule, cli.trainer, cli.config
    pruning = cli.config_init["pruning"]
    start = time.perf_counter()
    trainer.fit(model, datamodule=data)
    fit_s = time.perf_counter() - start

    dense = model.build_net()
    dense.load_state_dict(pruning.dense_state)
    pruned = model.net.cpu().eval()
    test = data.test_dataloader()
    x = next(iter(test))[0][:1]
    dense_opt, _ = optimize_for_inference(dense, x, memory_format="contiguous")
    pruned_opt, export_info = optimize_for_inference(pruned, x, memory_format="contiguous")
    acc_before, acc_after = accuracy(dense, test), accuracy(pruned_opt, test)
    report = pruning_report(dense_opt, pruned_opt, x, batches=cfg.report.batches, repeats=cfg.report.repeats,
                            accuracy_before=acc_before, accuracy_after=acc_after)
    report["run"] = {"model": cfg.model.model_name, "dataset": cfg.data.dataset, "img_size": cfg.data.img_size,
                     "epochs": dict(zip(("dense", "prune", "finetune"), pruning.epochs)),
                     "sparsity": pruning.sparsity, "measure": pruning.measure, "fit_s": fit_s}

    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(report_json(report))
    (out / "config.yaml").write_text(cli.parser.dump(cfg, skip_none=False))
    save_pruned(pruned_opt, out / "model", info={**export_info, "record": pruning.record.to_json(),
                                                  "record_prefix": "net.", "model_name": cfg.model.model_name})

    print(f"\n{cfg.model.model_name} on {cfg.data.dataset} ({cfg.data.img_size}x{cfg.data.img_size}), "
          f"{' + '.join(f'{n} {p}' for n, p in zip(pruning.epochs, ('dense', 'pruning', 'fine-tuning')))} epochs, "
          f"{torch.get_num_threads()} threads; pruned {pruning.sparsity:.0%} of {pruning.measure} "
          f"({cfg.pruning.criterion}, "
          f"{cfg.pruning.schedule} schedule)\n")
    print(format_report(report))
    speed = ", ".join(f"{b} {r['speedup']:.2f}x" for b, r in report["latency_ms"].items())
    print(f"\nsummary: test accuracy {acc_before:.2%} dense -> {acc_after:.2%} pruned; "
          f"MACs -{1 - 1 / report['macs']['ratio']:.1%} ({report['macs']['ratio']:.2f}x), "
          f"params -{1 - 1 / report['params']['ratio']:.1%}; latency speedup {speed}")
    print(f"wrote {out}/report.json, config.yaml, model/ (model.pt, state_dict.pt, pruning.json); "
          f"fit {fit_s:.0f} s, total {time.perf_counter() - start:.0f} s")
    return report


TRAINER_DEFAULTS = {"accelerator": "cpu", "devices": 1, "logger": False, "enable_checkpointing": False,
                    "enable_progress_bar": False, "enable_model_summary": False, "num_sanity_val_steps": 0}


def main(args: Optional[List[str]] = None) -> Dict[str, Any]:
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*is smaller than the logging interval.*")
    cli = RecipeCLI(TimmClassifier, VisionData, run=False, args=args, seed_everything_default=0,
                    save_config_callback=None, auto_configure_optimizers=False, trainer_defaults=TRAINER_DEFAULTS,
                    parser_kwargs={"description": __doc__, "formatter_class": HelpFormatter})
    return run(cli)


if __name__ == "__main__":
    main()
