"""The Ray backend on a local Ray instance (skipped when Ray is not installed)."""
import pytest

from sparsity_core.sweep import run_sweep

from .helpers import comparable, config

ray = pytest.importorskip("ray", reason="Ray is not installed (the optional extra sparsity-suite[ray]); "
                          "the Ray backend is not tested")


def test_ray_backend_gives_the_same_results_as_inline(tmp_path):
    cfg = dict(sparsity=(0.5,), seeds=(0,), crash_always=["b"])
    inline = run_sweep(config(tmp_path / "inline", **cfg), workers=0, progress="none", plots=False)
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        remote = run_sweep(config(tmp_path / "ray", **cfg), backend="ray", threads=1, progress="none", plots=False)
    finally:
        ray.shutdown()
    assert comparable(remote.records.values()) == comparable(inline.records.values())
    assert [r["method"] for r in remote.failed] == ["b"]
