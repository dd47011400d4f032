"""Runs as Ray tasks (``backend="ray"``): a cluster, or a local Ray instance.

``pip install 'sparsity-suite[ray]'``. With ``address=None`` the backend joins a running
cluster when ``RAY_ADDRESS`` is set, else starts a local instance (shut down at the end);
``address="auto"`` or ``"ray://host:10001"`` connects to a cluster. Each run asks for
``threads`` CPUs. The results file, the runs' folders and the data must be on storage every
node sees (a shared file system), as the runs write their checkpoints there. A task whose
worker dies is recorded as ``failed`` with Ray's error (Ray tells which task it was).
"""
from __future__ import annotations

import os
import time
from typing import Any, Dict, Iterator, Optional, Sequence

from .config import RunSpec
from .worker import execute, make_record


def import_ray() -> Any:
    try:
        import ray
    except ImportError as err:
        raise ImportError("the Ray backend needs Ray: pip install 'sparsity-suite[ray]' (or pip install ray); "
                          "the default backend, 'process', needs nothing") from err
    return ray


class RayBackend:
    name = "ray"

    def __init__(self, threads: int = 1, address: Optional[str] = None, init_kwargs: Optional[Dict[str, Any]] = None):
        self.threads, self.address = max(1, threads), address
        self.init_kwargs = dict(init_kwargs or {})

    def run(self, specs: Sequence[RunSpec]) -> Iterator[Dict[str, Any]]:
        ray = import_ray()
        own = not ray.is_initialized()
        if own:
            address = self.address or os.environ.get("RAY_ADDRESS")
            options = dict(include_dashboard=False, log_to_driver=False)
            options.update(self.init_kwargs)
            ray.init(address=address, **options)
        try:
            env = {"OMP_NUM_THREADS": str(self.threads), "MKL_NUM_THREADS": str(self.threads)}
            remote = ray.remote(num_cpus=self.threads, max_retries=0,
                                runtime_env={"env_vars": env})(execute)
            started = time.perf_counter()
            refs = {remote.remote(spec): spec for spec in specs}
            pending = list(refs)
            while pending:
                ready, pending = ray.wait(pending, num_returns=1)
                for ref in ready:
                    try:
                        record = ray.get(ref)
                    except Exception as err:  # noqa: BLE001 - a dead worker, a lost node
                        record = make_record(refs[ref], "failed", {}, f"Ray task failed: {type(err).__name__}: {err}",
                                             time.perf_counter() - started)
                    yield record
        finally:
            if own:
                ray.shutdown()
