"""A tiny LightningModule on fixed data (no shuffling: runs are reproducible), and the
2-process DDP runner."""
import os
import subprocess
import sys

import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class TinyModule(pl.LightningModule):
    def __init__(self, lr: float = 0.05):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.fc = nn.Linear(4 * 6 * 6, 8)
        self.head = nn.Linear(8, 3)
        self.lr = lr
        self.example_input_array = torch.zeros(1, 1, 8, 8)

    def forward(self, x):
        return self.head(torch.relu(self.fc(torch.relu(self.conv(x)).flatten(1))))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def loader(n=32, batch_size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 8, 8, generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=False)


def run_ddp_worker(script, out_dir):
    """Run ``script`` (a 2-process gloo DDP fit that writes ``rank<r>.pt``) and load both files."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PL_DISABLE_FORK="1")
    proc = subprocess.run([sys.executable, script, str(out_dir)], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [torch.load(os.path.join(out_dir, f"rank{r}.pt"), weights_only=True) for r in (0, 1)]


def trainer(**kwargs):
    args = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                enable_model_summary=False, deterministic=True)
    args.update(kwargs)
    return pl.Trainer(**args)
