"""Run by test_toy_plugin.py: the toy plugin in a 2-process CPU (gloo) DDP fit; each rank
sees other batches, so its own statistics differ, and writes its masks and statistics."""
import os
import sys

import pytorch_lightning as pl
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from sparsity_core import Linear, SparsityCallback  # noqa: E402
from tests.lightning.helpers import TinyModule, loader  # noqa: E402
from tests.lightning.toy_plugin import FeatureMask  # noqa: E402


def main(out):
    torch.manual_seed(0)
    program = FeatureMask(Linear(start_step=1, end_step=6, final_sparsity=0.5), module="fc")
    seen, statistic = [], program.criterion.statistic
    program.criterion.statistic = lambda target, context: seen.append(statistic(target, context)) or seen[-1]
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_steps=6, logger=False,
                         callbacks=[SparsityCallback(programs=[program])], enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(TinyModule(), loader(n=64))
    torch.save({"masks": program.controller.masks.state_dict(), "history": program.controller.history,
                "first_usage": seen[0]},
               os.path.join(out, f"rank{trainer.global_rank}.pt"))


if __name__ == "__main__":
    main(sys.argv[1])
