"""Crash-resume for every plugin that holds state (issue 19, item 1): a fit in a subprocess is
killed with SIGKILL mid-epoch after a checkpoint, a new process resumes it with
``ckpt_path``, and it ends exactly where an uninterrupted run with the same seed ends: masks,
schedule positions, budgets, buffers, counters and every other piece of callback state
bit-identical, weights and logged metrics equal to float tolerance.

The cases are in resume_cases.py, the processes in resume_worker.py.
"""
from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
from typing import Any

import pytest
import torch

from .resume_cases import CASES

WORKER = os.path.join(os.path.dirname(__file__), "resume_worker.py")


def worker(name: str, out, mode: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONHASHSEED="0")
    return subprocess.run([sys.executable, WORKER, name, str(out), mode], env=env, capture_output=True, text=True,
                          timeout=600)


def assert_same(a: Any, b: Any, path: str = "") -> None:
    """Bit-identical plain data: tensors by ``torch.equal`` (and dtype), containers by key."""
    assert type(a) is type(b), f"{path}: {type(a).__name__} vs {type(b).__name__}"
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape, \
            f"{path}: {a.dtype}{list(a.shape)} vs {b.dtype}{list(b.shape)}"
        assert torch.equal(a, b), f"{path} differs"
    elif isinstance(a, dict):
        assert set(a) == set(b), f"{path}: keys {sorted(map(str, a))} vs {sorted(map(str, b))}"
        for k in a:
            assert_same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), f"{path}: length {len(a)} vs {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}[{i}]")
    else:
        assert a == b or (a != a and b != b), f"{path}: {a!r} vs {b!r}"  # NaN == NaN here


def needs_extra(name: str) -> None:
    extra = CASES[name].extra
    if extra and importlib.util.find_spec(extra) is None:
        pytest.skip(f"the {name} extra ({extra}) is not installed")


@pytest.mark.parametrize("name", [n for n, plan in CASES.items() if plan.kill_after is not None])
def test_killed_run_resumes_exactly(name, tmp_path):
    plan = CASES[name]
    needs_extra(name)
    crashed = worker(name, tmp_path, "straight-then-crash")
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-3000:]
    resumed = worker(name, tmp_path, "resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    straight = torch.load(tmp_path / "straight.pt", weights_only=True)
    after = torch.load(tmp_path / "resumed.pt", weights_only=True)
    saved_at = int(after["resumed_from"].split("step=")[1].split(".")[0])
    assert 0 < saved_at < plan.kill_after  # resumed from a checkpoint taken before the kill ...
    assert after["started_at"] == saved_at  # ... and trained on from there, not from scratch
    assert after["global_step"] == straight["global_step"]
    assert straight["callbacks"] or straight["module"], "the case holds no sparsity state to compare"
    assert_same(straight["callbacks"], after["callbacks"], "callbacks")
    assert_same(straight["module"], after["module"], "module")
    assert_same(straight["datamodule"], after["datamodule"], "datamodule")
    assert set(straight["weights"]) == set(after["weights"])
    for k, w in straight["weights"].items():
        assert w.shape == after["weights"][k].shape, k
        assert torch.allclose(w.float(), after["weights"][k].float(), rtol=1e-5, atol=1e-6), k
    assert set(straight["metrics"]) == set(after["metrics"])
    for k, v in straight["metrics"].items():
        assert after["metrics"][k] == pytest.approx(v, rel=1e-5, abs=1e-6), k
