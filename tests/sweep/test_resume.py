"""Re-running a sweep: finished runs are skipped, failed and interrupted ones resume."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from sparsity_core.sweep import run_sweep

from .helpers import calls, config, lines

ROOT = Path(__file__).resolve().parents[2]


def test_a_run_that_crashes_once_is_recorded_then_resumed_without_repeating_others(tmp_path):
    out = tmp_path / "out"
    cfg = config(out, crash_once=["b"], steps=4, crash_at=2)
    first = run_sweep(cfg, workers=0, progress="none", plots=False)
    failed = sorted(r["run_id"] for r in first.failed)
    assert len(failed) == 4 and all(r.startswith("b-") for r in failed)
    assert sum(r["status"] == "ok" for r in first.records.values()) == 8  # the crash lost no other result
    assert "RuntimeError: b crashes on its first attempt" in first.records[failed[0]]["error"]
    assert "Counted: 8 finished runs of 12 in the grid; 4 failed" in first.table

    second = run_sweep(cfg, workers=0, progress="none", plots=False)
    assert sorted(r["run_id"] for r in second.ran) == failed
    assert all(r["status"] == "ok" and r["resumed_from"] and r["metrics"]["start_step"] == 2 and r["attempt"] == 2
               for r in second.ran)
    assert calls(out) == {rid: 2 if rid in failed else 1 for rid in calls(out)}
    assert len(lines(out)) == 16 and not second.failed
    third = run_sweep(cfg, workers=0, progress="none", plots=False)
    assert third.ran == [] and len(third.skipped) == 12


def test_a_killed_sweep_resumes_without_repeating_finished_runs(tmp_path):
    out = tmp_path / "out"
    cfg = config(out, methods=("gmp", "b"), sparsity=(0.5,), seeds=(0,), hang=["b"], hang_at=2, steps=4)
    code = f"from sparsity_core.sweep import run_sweep; run_sweep({cfg!r}, workers=0, progress='none', plots=False)"
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 60
        while not list((out / "runs").glob("b-*/hanging")):
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.time() < deadline, "the sweep never reached the hanging run"
            time.sleep(0.1)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the sweep, mid-run
        proc.wait()
    before = (out / "results.jsonl").read_bytes()
    assert [r["method"] for r in lines(out)] == ["gmp"]

    result = run_sweep(cfg, workers=0, progress="none", plots=False)
    assert [r["method"] for r in result.ran] == ["b"]
    (resumed,) = result.ran
    assert resumed["resumed_from"] and resumed["metrics"]["start_step"] == 2 and resumed["attempt"] == 2
    assert (out / "results.jsonl").read_bytes().startswith(before)
    assert sorted(calls(out).values()) == [1, 2]  # gmp once, b twice (killed, then resumed)
    assert not result.failed and not result.missing
