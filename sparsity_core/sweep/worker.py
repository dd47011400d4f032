"""One run, in whatever process executes it: load the run function, call it, return a record.

An exception inside the run becomes a ``failed`` record with its error (the sweep goes on);
only the main process writes records to the results file. Before calling the run function
the worker writes ``running.json`` (its pid and the submission's token) in the run's folder,
so the main process can tell which runs were in flight when a worker process died.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import socket
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Dict, Optional

from .config import RunSpec
from .context import RunContext
from .entry import load_entry
from .results import clean_metrics

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def init_worker(threads: int) -> None:
    """Process-pool initializer: cap the math libraries' threads before torch is imported."""
    for var in THREAD_VARIABLES:
        os.environ[var] = str(threads)


def set_torch_threads(threads: int) -> None:
    """``torch.set_num_threads(threads)`` where torch is loaded (never imports it)."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def _now() -> str:
    return _dt.datetime.now().isoformat(timespec="seconds")


def _attempt(run_dir: Path) -> int:
    """How many times this run has been started, this one included (kept in ``attempts.json``)."""
    path = run_dir / "attempts.json"
    try:
        count = int(json.loads(path.read_text())["attempts"]) + 1
    except (OSError, ValueError, KeyError, TypeError):
        count = 1
    path.write_text(json.dumps({"attempts": count}))
    return count


def make_record(spec: RunSpec, status: str, metrics: Dict[str, Any], error: Optional[str], wall_s: float,
                attempt: int = 0, resumed_from: Optional[str] = None, started: Optional[str] = None) -> Dict[str, Any]:
    """The results-file record of one finished run."""
    return {"run_id": spec.run_id, "sweep": spec.sweep, "method": spec.method, "method_config": spec.method_config,
            "sparsity": spec.sparsity, "seed": spec.seed, "tasks": list(spec.tasks), "task_set": spec.task_set,
            "params": spec.params, "status": status, "metrics": metrics, "error": error,
            "wall_s": round(wall_s, 3), "attempt": attempt, "resumed_from": resumed_from,
            "started": started or _now(), "finished": _now(), "host": socket.gethostname(), "pid": os.getpid()}


def format_error(err: BaseException, limit: int = 4000) -> str:
    """``Type: message`` and the end of the traceback."""
    text = "".join(traceback.format_exception(type(err), err, err.__traceback__))
    return f"{type(err).__name__}: {err}\n{text[-limit:]}"


def execute(spec: RunSpec) -> Dict[str, Any]:
    """Run ``spec`` and return its record (``failed`` with the error if the run raised)."""
    started, t0 = _now(), time.perf_counter()
    run_dir = Path(spec.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    attempt = _attempt(run_dir)
    (run_dir / "running.json").write_text(json.dumps({"pid": os.getpid(), "token": spec.token}))
    ctx = RunContext(spec, attempt)
    last = ctx.last_checkpoint
    resumed_from = str(last) if last is not None else None
    for path in spec.sys_path:
        if path not in sys.path:
            sys.path.append(path)
    try:
        fn = load_entry(spec.entry)
        set_torch_threads(spec.threads)
        metrics = clean_metrics(fn(ctx))
        status, error = "ok", None
    except Exception as err:  # noqa: BLE001 - a crashing run is recorded, the sweep goes on
        status, error, metrics = "failed", format_error(err), {}
    return make_record(spec, status, metrics, error, time.perf_counter() - t0, attempt, resumed_from, started)
