"""Conventions shared by every benchmark in bench/.

Each benchmark prints its table, then one ``TARGET <what>: met|missed (<measured> vs
<goal>)`` line per target its issue sets, and last ``RESULT <name> key=value ...``.
``--quick`` runs a reduced version in under 2 minutes. Timings are ratios measured side by
side in one run: configurations interleaved, warm-up first, medians of repeats, threads
stated.
"""
from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import warnings
from typing import Callable, Dict, Iterable, List, Sequence, Tuple


def parser(description: str, seeds: bool = False) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="reduced run, under 2 minutes")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    if seeds:
        p.add_argument("--seeds", type=int, default=None, help="number of seeds (default: the benchmark's)")
    return p


def start(args: argparse.Namespace) -> None:
    """Quiet logging and fix the thread count before anything runs."""
    import torch

    quiet()
    torch.set_num_threads(args.threads)


def mean_std(samples: Dict[object, List[float]]) -> Tuple[Dict[object, float], Dict[object, float]]:
    """Mean and sample standard deviation of every list of repeats."""
    mean = {k: sum(v) / len(v) for k, v in samples.items()}
    std = {k: (sum((a - mean[k]) ** 2 for a in v) / max(1, len(v) - 1)) ** 0.5 for k, v in samples.items()}
    return mean, std


def quiet() -> None:
    """Silence Lightning's info banners and library warnings in benchmark output."""
    for name in ("pytorch_lightning", "lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    os.environ.setdefault("PYTHONWARNINGS", "ignore")


def progress(message: str) -> None:
    """One line per finished run, on stderr, so long benchmarks show they are alive."""
    print(message, file=sys.stderr, flush=True)


def median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


def rotations(items: Sequence, repeats: int) -> List[List]:
    """Interleaved order: repeat r runs the configurations rotated by r."""
    n = len(items)
    return [[items[(i + r) % n] for i in range(n)] for r in range(repeats)]


def select_lr(name: str, methods: Sequence[str], grid: Callable[[str], Sequence[float]],
              evaluate: Callable[[str, float], float]) -> Tuple[Dict[str, float], List[list]]:
    """Per method, the learning rate of ``grid(method)`` with the best held-out score
    ``evaluate(method, lr)`` (ties: the smaller rate); returns the choices and one table row
    per method (``method, "lr: score %"..., chosen``)."""
    chosen, rows = {}, []
    for method in methods:
        scores = {lr: evaluate(method, lr) for lr in grid(method)}
        chosen[method] = max(scores, key=lambda lr: (scores[lr], -lr))
        rows.append([method] + [f"{lr:g}: {100 * a:.2f}" for lr, a in scores.items()] + [f"{chosen[method]:g}"])
        progress(f"{name} lr for {method}: {chosen[method]:g} ({rows[-1][1:-1]})")
    return chosen, rows


def target(what: str, met: bool, measured: str, goal: str) -> bool:
    print(f"TARGET {what}: {'met' if met else 'missed'} ({measured} vs {goal})")
    return met


def result(name: str, values: Dict[str, object]) -> None:
    parts = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())
    print(f"RESULT {name} {parts}")


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    cells = [[str(h) for h in header]] + [[f"{c:.4f}" if isinstance(c, float) else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    for j, r in enumerate(cells):
        print("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))))
        if j == 0:
            print("  ".join("-" * w for w in widths))
