"""Training-step overhead of SparsityCallback vs a bare Trainer vs Lightning's ModelPruning.

timm resnet18 (random init, 10 classes), 64x64 inputs, batch 32, CPU. Every configuration
runs two epochs of N steps from the same initialization: epoch 0 is warm-up (and the epoch
at whose end ModelPruning prunes, since it only prunes at epoch ends); epoch 1 is timed
from its first batch start to its last batch end, so the time includes everything the
callbacks do. Configurations run interleaved (rotated order per repeat); the table shows
medians over repeats.

- bare: no callback.
- ours: SparsityCallback, hard masks, global magnitude at 90%, masks recomputed every 100
  optimizer steps (Constant schedule with an open end), so one recomputation falls inside
  every 100 timed steps.
- ours, two programs: one SparsityCallback driving the weight program (90% of the weights of
  layer3/layer4) and the vision plugin's ChannelPruning program (soft masks on 30% of the
  channel groups whose outputs lie outside layer2-4, masks re-applied after every step), both
  recomputed every 100 steps.
- ModelPruning: Lightning's callback, global L1 unstructured, 90% at the end of epoch 0, no
  lottery-ticket reset (its forward pre-hooks recompute weight = weight_orig * mask).

Targets: ours <= 1.05x the bare step time (issue 2), with two programs attached too (core v2).
"""
from __future__ import annotations

import time

import pytorch_lightning as pl
import timm
import torch
import torch.nn.functional as F
from pytorch_lightning.callbacks import ModelPruning
from torch.utils.data import DataLoader, TensorDataset

from _common import median, parser, quiet, result, rotations, table, target
from sparsity_core import Constant, SparsityCallback
from sparsity_core.discovery import candidate_weights
from sparsity_plugins.vision import ChannelPruning

SPARSITY = 0.9
UPDATE_EVERY = 100


class Net(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = timm.create_model("resnet18", pretrained=False, num_classes=10)
        self.example_input_array = torch.zeros(1, 3, 64, 64)

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        return F.cross_entropy(self(batch[0]), batch[1])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01, momentum=0.9)


class EpochTimer(pl.Callback):
    """Wall time of epoch 1, first batch start to last batch end (runs after the others)."""

    def __init__(self):
        self.start = self.seconds = None
        self.steps = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.current_epoch == 1 and self.start is None:
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.current_epoch == 1:
            self.steps += 1
            self.seconds = time.perf_counter() - self.start


def make_callbacks(kind, module):
    if kind == "bare":
        return []
    if kind == "ours":
        return [SparsityCallback(Constant(sparsity=SPARSITY, start_step=0, end_step=10**9),
                                 criterion="magnitude", allocator="global", enforcement="hard",
                                 update_every=UPDATE_EVERY, log_per_target=False)]
    if kind == "ours, two programs":
        always = dict(start_step=0, end_step=10**9)
        channels = ChannelPruning(Constant(sparsity=0.3, **always), measure="units", exclude=[r"layer[234]"],
                                  update_every=UPDATE_EVERY, finalize=False)
        return [SparsityCallback(Constant(sparsity=SPARSITY, **always), include=r"layer[34]",
                                 update_every=UPDATE_EVERY, programs=[channels], log_per_target=False)]
    params = [(m, "weight") for m in module.modules()
              if any(p is getattr(m, "weight", None) for _, _, _, p in candidate_weights(module))]
    return [ModelPruning("l1_unstructured", amount=lambda epoch: SPARSITY if epoch == 0 else 0.0,
                         parameters_to_prune=params, use_global_unstructured=True,
                         use_lottery_ticket_hypothesis=False, verbose=0)]


def run(kind, steps, data):
    torch.manual_seed(0)
    module = Net()
    timer = EpochTimer()
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         callbacks=make_callbacks(kind, module) + [timer])
    trainer.fit(module, DataLoader(data, batch_size=32, shuffle=False))
    assert timer.steps == steps
    zeros = sum(int((p == 0).sum()) for _, _, _, p in candidate_weights(module))
    total = sum(p.numel() for _, _, _, p in candidate_weights(module))
    return timer.seconds / steps, zeros / total


def main():
    args = parser(__doc__).parse_args()
    quiet()
    torch.set_num_threads(args.threads)
    steps, repeats = (12, 2) if args.quick else (100, 3)
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(steps * 32, 3, 64, 64, generator=g), torch.randint(0, 10, (steps * 32,), generator=g))
    kinds = ["bare", "ours", "ours, two programs", "ModelPruning"]
    times = {k: [] for k in kinds}
    sparsity = {}
    for order in rotations(kinds, repeats):
        for kind in order:
            sec, sparsity[kind] = run(kind, steps, data)
            times[kind].append(sec)
    bare = median(times["bare"])
    print(f"\nresnet18, 64x64, batch 32, CPU, {args.threads} threads, {steps} timed steps x {repeats} repeats "
          f"(interleaved), update every {UPDATE_EVERY} steps\n")
    table(["config", "ms/step (median)", "steps/s", "x bare", "weight sparsity"],
          [[k, f"{median(times[k]) * 1e3:.1f}", f"{1 / median(times[k]):.3f}", f"{median(times[k]) / bare:.3f}",
            f"{sparsity[k]:.3f}"] for k in kinds])
    ours_ratio = median(times["ours"]) / bare
    two_ratio = median(times["ours, two programs"]) / bare
    mp_ratio = median(times["ModelPruning"]) / bare
    print()
    target("ours step time vs bare", ours_ratio <= 1.05, f"{ours_ratio:.3f}x", "<= 1.05x")
    target("ours with two programs (weights + channels) vs bare", two_ratio <= 1.05, f"{two_ratio:.3f}x",
           "<= 1.05x")
    result("overhead", {"ours_x_bare": ours_ratio, "two_programs_x_bare": two_ratio,
                        "modelpruning_x_bare": mp_ratio, "bare_ms": bare * 1e3,
                        "threads": args.threads, "steps": steps, "repeats": repeats})


if __name__ == "__main__":
    main()
