"""CPU latency measured the way the benchmarks report it: warm-up, then the median of
repeated timed forwards (``torch.inference_mode``), with the thread count stated."""
from __future__ import annotations

import statistics
import time
from typing import Dict, Sequence

import torch
from torch import nn

from sparsity_core.validation import check_int


@torch.inference_mode()
def measure_latency(model: nn.Module, example: torch.Tensor, repeats: int = 10, warmup: int = 3) -> Dict[str, float]:
    """``{"median_ms", "min_ms", "threads", "batch"}`` of ``model(example)``."""
    check_int(repeats, "repeats", 1)
    check_int(warmup, "warmup", 0)
    was_training = model.training
    model.eval()
    for _ in range(warmup):
        model(example)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model(example)
        times.append((time.perf_counter() - t0) * 1e3)
    model.train(was_training)
    return {"median_ms": statistics.median(times), "min_ms": min(times), "threads": torch.get_num_threads(),
            "batch": int(example.shape[0])}


@torch.inference_mode()
def interleaved_latency(models: Dict[str, nn.Module], examples: Dict[str, torch.Tensor], repeats: int = 10,
                        warmup: int = 2) -> Dict[str, float]:
    """Median milliseconds per model, timed in rotation (one forward of each per round), so
    that drifts of a noisy machine hit every model alike."""
    for name, m in models.items():
        m.eval()
        for _ in range(warmup):
            m(examples[name])
    times: Dict[str, list] = {n: [] for n in models}
    order: Sequence[str] = list(models)
    for r in range(repeats):
        rot = order[r % len(order):] + order[: r % len(order)]
        for name in rot:
            t0 = time.perf_counter()
            models[name](examples[name])
            times[name].append((time.perf_counter() - t0) * 1e3)
    return {n: statistics.median(v) for n, v in times.items()}
