"""One Lightning fit per run: SparsityCallback from the method, ModelCheckpoint in the run's
folder, and ``ckpt_path="last"`` resuming a run that crashed mid-way."""
import pytest

from sparsity_core.sweep import run_sweep

from .helpers import calls

pytest.importorskip("pytorch_lightning")


def test_crashed_fit_resumes_from_its_last_checkpoint(tmp_path):
    out = tmp_path / "out"
    cfg = {"name": "mlp", "run": "tests.sweep.fakes:mlp_run", "output": str(out), "metrics": ["loss"],
           "methods": {"gmp": {"criterion": "magnitude", "allocator": "global", "update_every": 1,
                               "schedule": {"name": "cubic", "end_fraction": 0.75}},
                       "rand": {"criterion": "random", "allocator": "uniform"}},
           "grid": {"sparsity": [0.5], "seed": [0]}, "params": {"steps": 8, "crash_once": ["gmp"], "crash_at": 5}}
    first = run_sweep(cfg, workers=0, progress="none", plots=False)
    status = {r["method"]: r for r in first.records.values()}
    assert status["rand"]["status"] == "ok" and status["rand"]["metrics"]["sparsity"] == 0.5
    assert status["gmp"]["status"] == "failed" and "crash at step 5" in status["gmp"]["error"]
    assert list(out.glob("runs/gmp-*/checkpoints/last.ckpt"))

    second = run_sweep(cfg, workers=0, progress="none", plots=False)
    (rec,) = second.ran
    assert rec["method"] == "gmp" and rec["status"] == "ok" and rec["resumed_from"].endswith("last.ckpt")
    assert rec["metrics"]["start_step"] == 4 and rec["metrics"]["step"] == 8  # from the step-4 checkpoint
    assert rec["metrics"]["sparsity"] == 0.5  # the schedule (its state restored) reached the grid's sparsity
    assert sorted(calls(out).values()) == [1, 2]
