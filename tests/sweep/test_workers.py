"""Spawned worker processes: same results as one worker; a dying worker loses no other result."""
from sparsity_core.sweep import run_sweep
from sparsity_core.sweep.backends import threads_per_worker

from .helpers import comparable, config, lines


def test_two_workers_give_the_same_results_as_one(tmp_path):
    one = run_sweep(config(tmp_path / "one"), workers=1, progress="none", plots=False)
    two = run_sweep(config(tmp_path / "two"), workers=2, progress="none", plots=False)
    assert len(one.records) == 12 and not one.failed
    assert comparable(one.records.values()) == comparable(two.records.values())
    assert one.table == two.table


def test_threads_per_worker_never_oversubscribe():
    import os

    cpus = len(os.sched_getaffinity(0))
    assert threads_per_worker(2) * 2 <= max(2, cpus) and threads_per_worker(cpus * 4) == 1


def test_a_worker_process_that_dies_is_recorded_failed_and_others_finish(tmp_path):
    out = tmp_path / "out"
    result = run_sweep(config(out, sparsity=(0.5,), seeds=(0,), die=["b"]), workers=2, progress="none", plots=False)
    status = {r["method"]: r["status"] for r in result.records.values()}
    assert status == {"gmp": "ok", "rand": "ok", "b": "failed"}
    (dead,) = result.failed
    assert "worker process died" in dead["error"] and "SIGKILL" in dead["error"]
    assert sorted(r["method"] for r in lines(out)) == ["b", "gmp", "rand"]  # one record per run
