"""Run by test_ddp.py: a 2-process CPU (gloo) DDP fit whose ranks score differently: a
rank-dependent criterion on the conv layer, RigL from a rank-seeded random mask on fc.

Each rank writes its masks and its own (pre-sync) scores to ``<out>/rank<r>.pt``.
"""
import os
import sys

import pytorch_lightning as pl
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from sparsity_core import Cubic, PruneRegrow, RandomScores, SparsityCallback  # noqa: E402
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
    rank = int(os.environ.get("LOCAL_RANK", 0))
    cb = SparsityCallback(Cubic(end_step=6, final_sparsity=0.7), criterion=crit, update_every=2, include="conv")
    # RigL on fc, from a random mask whose seed differs per rank: synchronisation must fix both
    rigl = SparsityCallback(0.7, criterion=RandomScores(seed=rank), include="fc",
                            enforcement=PruneRegrow("gradient", every=2, end_step=8), name="rigl")
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_steps=8, logger=False, callbacks=[cb, rigl],
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(TinyModule(), loader(n=64))
    masks = {**cb.controller.masks.state_dict(), **rigl.controller.masks.state_dict()}
    events = [h["step"] for h in rigl.controller.history if h["event"] == "prune_regrow"]
    torch.save({"masks": masks, "raw": crit.raw, "regrow_steps": events,
                "weights": {k: v.detach().clone() for k, v in trainer.lightning_module.state_dict().items()}},
               os.path.join(out, f"rank{trainer.global_rank}.pt"))


if __name__ == "__main__":
    main(sys.argv[1])
