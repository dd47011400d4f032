"""Quick start: a timm CNN (random init) on scikit-learn's digits, dense vs 90% sparse.

    make demo          # or: .venv/bin/python recipes/quickstart_digits.py --help

Trains the same model twice from the same initialization: once dense, once with
``SparsityCallback`` (global magnitude ranking, Zhu & Gupta cubic schedule to 90%, masks
recomputed every 10 optimizer steps, finalized to plain weights with zeros), then prints
test accuracy, nonzero parameters and the per-layer sparsity.
"""
from __future__ import annotations

import argparse
import logging
import time
import warnings

import pytorch_lightning as pl
import timm
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader, TensorDataset

from sparsity_core import Cubic, SparsityCallback


def digits_loaders(size: int, batch_size: int, seed: int):
    """Digits (8x8, 16 grey levels) upsampled to size x size, 80/20 stratified split."""
    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    x = (x - x.mean()) / x.std()
    y = torch.tensor(y)
    tr, te = train_test_split(range(len(y)), test_size=0.2, random_state=seed, stratify=y.numpy())
    g = torch.Generator().manual_seed(seed)
    train = DataLoader(TensorDataset(x[tr], y[tr]), batch_size=batch_size, shuffle=True, generator=g)
    test = DataLoader(TensorDataset(x[te], y[te]), batch_size=256)
    return train, test


class Classifier(pl.LightningModule):
    def __init__(self, model_name: str, lr: float, epochs: int):
        super().__init__()
        self.net = timm.create_model(model_name, pretrained=False, num_classes=10, in_chans=1)
        self.lr, self.epochs = lr, epochs

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=1e-4)
        steps = self.trainer.estimated_stepping_batches
        return {"optimizer": opt, "lr_scheduler": {"scheduler": torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=self.lr, total_steps=steps), "interval": "step"}}


@torch.no_grad()
def accuracy(model: torch.nn.Module, loader: DataLoader) -> float:
    model.eval()
    correct = sum(int((model(x).argmax(1) == y).sum()) for x, y in loader)
    return correct / len(loader.dataset)


def run(args, sparse: bool):
    pl.seed_everything(args.seed, verbose=False)
    train, test = digits_loaders(args.size, args.batch_size, args.seed)
    module = Classifier(args.model, args.lr, args.epochs)
    callbacks = []
    if sparse:
        total = args.epochs * len(train)
        callbacks.append(SparsityCallback(
            schedule=Cubic(start_step=0, end_step=int(0.7 * total), final_sparsity=args.sparsity),
            criterion="magnitude", allocator="global", update_every=10, finalize=True))
    trainer = pl.Trainer(max_epochs=args.epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks)
    start = time.perf_counter()
    trainer.fit(module, train)
    return module, accuracy(module, test), time.perf_counter() - start, callbacks


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet10t", help="timm model name (random init)")
    p.add_argument("--sparsity", type=float, default=0.9, help="final sparsity of the pruned weights")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--size", type=int, default=32, help="digits are upsampled to size x size")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore")

    dense, dense_acc, dense_s, _ = run(args, sparse=False)
    sparse, sparse_acc, sparse_s, (cb,) = run(args, sparse=True)

    def nonzero(m):
        return sum(int((p != 0).sum()) for p in m.parameters()), sum(p.numel() for p in m.parameters())

    (dn, total), (sn, _) = nonzero(dense), nonzero(sparse)
    print(f"\n{args.model} on digits ({args.size}x{args.size}), {args.epochs} epochs, {args.threads} threads")
    print(f"{'run':<10}{'test acc':>10}{'nonzero params':>18}{'of':>12}{'fit s':>8}")
    print(f"{'dense':<10}{dense_acc:>10.4f}{dn:>18,}{total:>12,}{dense_s:>8.1f}")
    print(f"{'sparse':<10}{sparse_acc:>10.4f}{sn:>18,}{total:>12,}{sparse_s:>8.1f}")
    report = cb.weights.sparsity_report()
    print(f"\nper-layer sparsity (global magnitude, cubic to {args.sparsity:.0%}; pruned weights: "
          f"{report['global']:.2%} of {sum(t.num_units for t in cb.controller.targets):,})")
    for t in cb.controller.targets:
        print(f"  {t.name:<40}{str(tuple(t.shape)):>20}{report[t.name]:>9.2%}")
    return {"dense_acc": dense_acc, "sparse_acc": sparse_acc, "sparsity": report["global"],
            "nonzero_params": sn, "params": total}


if __name__ == "__main__":
    main()
