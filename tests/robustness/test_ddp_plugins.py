"""Two-process DDP (gloo, CPU) for every plugin that makes mask decisions from data (issue 19,
item 2): the ranks see different shards (the video search observes the same calibration
inputs on both: its holder ignores the batch), yet after every step they hold the same masks,
plans, schedule positions and budgets, and end with the same parameters. A run whose ranks
have different numbers of batches an epoch finishes (no collective waits for a rank that
is elsewhere) with identical masks.

Per-rank by design and not compared: BatchNorm running statistics and a rehearsal buffer (no
SyncBatchNorm, each rank keeps a reservoir of its own shard), and the accumulators a plan
names as ``ddp_local`` (raw statistics that are averaged over ranks before a decision).
The cases are in resume_cases.py, the processes in resume_worker.py.
"""
from __future__ import annotations

import os
import subprocess
import sys
from typing import Any, Iterable

import pytest
import torch

from .resume_cases import CASES
from .test_crash_resume import WORKER, assert_same, needs_extra


def without(state: Any, local: Iterable[str], path: str = "") -> Any:
    """``state`` with the entries whose path ends with one of ``local`` left out."""
    if isinstance(state, dict):
        return {k: without(v, local, f"{path}.{k}") for k, v in state.items()
                if not any(f"{path}.{k}".endswith(s) for s in local)}
    if isinstance(state, list):
        return [without(v, local, path) for v in state]
    return state


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.skip(reason=p.ddp)) if p.ddp else n
                                  for n, p in CASES.items()])
def test_ranks_make_the_same_decisions(name, tmp_path):
    needs_extra(name)
    env = dict(os.environ, OMP_NUM_THREADS="1", PL_DISABLE_FORK="1")
    proc = subprocess.run([sys.executable, WORKER, name, str(tmp_path), "ddp"], env=env, capture_output=True,
                          text=True, timeout=300)  # a deadlock fails here instead of hanging the suite
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    local = CASES[name].ddp_local
    assert r0["trace"] and [s["step"] for s in r0["trace"]] == [s["step"] for s in r1["trace"]]
    assert r0["global_step"] == r1["global_step"] > 0
    assert_same(without(r0["trace"], local), without(r1["trace"], local), "trace")
    for key in ("callbacks", "module", "datamodule"):
        assert_same(without(r0[key], local), without(r1[key], local), key)
    assert r0["params"] == r1["params"] and r0["params"]
    for k in r0["params"]:
        assert torch.allclose(r0["weights"][k], r1["weights"][k], rtol=1e-6, atol=1e-7), k
