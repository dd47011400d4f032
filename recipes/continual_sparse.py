"""Sparse continual learning on Split-MNIST: dense DER++ vs SparCL + DER++ at 75% and 90%.

    .venv/bin/python recipes/continual_sparse.py                      # a couple of minutes on 2 cores
    .venv/bin/python recipes/continual_sparse.py --train-limit 60000 --buffer 500 --epochs 3
    .venv/bin/python recipes/continual_sparse.py --help

Split-MNIST: MNIST's digits in 5 class-incremental tasks of 2 classes, one ``Trainer.fit``
per task on the plugin's ``TaskStream`` (a ``LightningDataModule``), evaluated on every task
seen so far after each task. The same MLP (784-256-256-10 with LayerNorm, random init) is
trained with DER++ (Buzzega et al., 2020: reservoir buffer, logit replay α and label replay
β) dense, then with SparCL (Wang et al., NeurIPS 2022) at each sparsity: task-aware dynamic
masks (TDM, a core mask program), dynamic data removal (DDR, the loader's sampler skips the
least-forgotten examples) and dynamic gradient masks (DGM), all driven by one
``SparsityCallback``. Printed per run: the class-incremental accuracy matrix, average
accuracy, forgetting, backward transfer, task-IL accuracy and training MACs; then a summary
with each run's training-FLOPs ratio against dense DER++ (the plugin's ``TrainingFlops``
counter: sparse weights, sparse gradients and examples actually processed; a MAC ratio,
not a speedup). ``--output`` writes the report as JSON.

MNIST comes from ``../shared/data/mnist/MNIST/raw/*.gz`` (or ``$SPARSITY_SHARED_DATA``),
gunzipped once into ``recipes/out/data`` and read with torchvision's ``MNIST``.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any, Dict, List

import torch

from sparsity_plugins.continual import ExperimentConfig, run_experiment, split_mnist

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SPARSITY_SHARED_DATA", REPO.parent / "shared" / "data"))
CACHE = REPO / "recipes" / "out" / "data"


def arguments(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sparsities", type=float, nargs="+", default=[0.75, 0.9], help="SparCL weight sparsities")
    p.add_argument("--buffer", type=int, default=200, help="reservoir buffer size")
    p.add_argument("--epochs", type=int, default=2, help="epochs per task")
    p.add_argument("--train-limit", type=int, default=30000, help="first N MNIST training images (60000: all)")
    p.add_argument("--test-limit", type=int, default=10000, help="first N MNIST test images")
    p.add_argument("--alpha", type=float, default=0.1, help="DER++ logit-replay weight")
    p.add_argument("--beta", type=float, default=0.5, help="DER++ label-replay weight")
    p.add_argument("--lr", type=float, default=0.03, help="SGD learning rate")
    p.add_argument("--no-ddr", action="store_true", help="SparCL without dynamic data removal")
    p.add_argument("--no-dgm", action="store_true", help="SparCL without dynamic gradient masking")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--data", type=str, default=str(SHARED / "mnist"), help="folder holding MNIST/raw/*.gz")
    p.add_argument("--output", type=str, default=None, help="write the report here as JSON")
    args = p.parse_args(argv)
    for s in args.sparsities:
        if not 0.0 < s < 1.0:
            p.error(f"sparsities must be in (0, 1), got {s}")
    if args.buffer < 1:
        p.error("DER++ replays examples: --buffer must be >= 1")
    return args


def quiet() -> None:
    for name in ("pytorch_lightning", "lightning", "lightning.pytorch", "lightning_fabric", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")


def main(argv=None) -> Dict[str, Any]:
    args = arguments(argv)
    quiet()
    torch.set_num_threads(args.threads)
    stream = split_mnist(str(CACHE), source=args.data, train_limit=args.train_limit, test_limit=args.test_limit,
                         seed=args.seed, drop_last=True)  # a tail batch of a few examples can wreck a plain-SGD run
    common = dict(method="derpp", buffer_size=args.buffer, alpha=args.alpha, beta=args.beta, lr=args.lr,
                  epochs=args.epochs, hidden=(256, 256), norm=True, seed=args.seed)
    runs: List[Dict[str, Any]] = []
    configs = [("dense DER++", ExperimentConfig(**common))]
    configs += [(f"SparCL+DER++ {s:.0%}", ExperimentConfig(**common, sparsity=s,
                                                           ddr_fraction=None if args.no_ddr else 0.3,
                                                           gradient_keep=None if args.no_dgm else 0.2))
                for s in args.sparsities]
    for label, cfg in configs:
        r = run_experiment(stream, cfg)
        r["label"] = label
        runs.append(r)
        print(f"\n== {label} ({r['seconds']:.0f}s) ==\nclass-IL accuracy matrix (%):\n{r['matrix_text']}")
        print(f"average accuracy {100 * r['average_accuracy']:.2f}%  forgetting {100 * r['forgetting']:.2f}%  "
              f"backward transfer {100 * r['backward_transfer']:.2f}%  task-IL {100 * r['task_il']:.2f}%  "
              f"training MACs {r['macs']:.3g} over {r['examples']} examples")
        print("training MACs per task: " + "  ".join(f"T{k} {m:.3g}" for k, m in enumerate(r["per_task_macs"])))
    dense = runs[0]["macs"]
    print(f"\nSplit-MNIST, {args.train_limit} training images, buffer {args.buffer}, {args.epochs} epoch(s) per task, "
          f"threads {args.threads}")
    print(f"{'run':<22}{'avg acc %':>10}{'forgetting %':>14}{'train MACs':>12}{'FLOPs ratio':>13}")
    for r in runs:
        print(f"{r['label']:<22}{100 * r['average_accuracy']:>10.2f}{100 * r['forgetting']:>14.2f}"
              f"{r['macs']:>12.3g}{dense / r['macs']:>12.2f}x")
    report = {"args": vars(args), "runs": [{k: v for k, v in r.items() if k != "matrix_text"} for r in runs]}
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
