"""Run by test_ddp.py: a 2-process CPU (gloo) DDP fit whose ranks score differently.

Each rank writes its masks and its own (pre-sync) scores to ``<out>/rank<r>.pt``.
"""
import os
import sys

import pytorch_lightning as pl
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from sparsity_core import Cubic, SparsityCallback  # noqa: E402
from sparsity_core.criteria import Criterion  # noqa: E402
from tests.lightning.helpers import TinyModule, loader  # noqa: E402


class RankDependentScores(Criterion):
    """Magnitude plus noise seeded by the rank: unsynchronised ranks would disagree."""

    def __init__(self):
        self.raw = {}

    def score(self, target, context):
        rank = int(os.environ.get("LOCAL_RANK", 0))
        g = torch.Generator().manual_seed(1000 + rank)
        s = context.weight(target).abs().reshape(-1) + torch.rand(target.num_units, generator=g)
        self.raw[target.name] = s.clone()
        return s


def main(out):
    torch.manual_seed(0)
    crit = RankDependentScores()
    cb = SparsityCallback(Cubic(end_step=6, final_sparsity=0.7), criterion=crit, update_every=2)
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_steps=8, logger=False, callbacks=[cb],
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(TinyModule(), loader(n=64))
    torch.save({"masks": cb.controller.masks.state_dict(), "raw": crit.raw,
                "weights": {k: v.detach().clone() for k, v in trainer.lightning_module.state_dict().items()}},
               os.path.join(out, f"rank{trainer.global_rank}.pt"))


if __name__ == "__main__":
    main(sys.argv[1])
