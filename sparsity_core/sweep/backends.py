"""Where runs execute: in this process (``workers=0``) or in a pool of spawned processes.

Each backend's ``run(specs)`` yields one record per run as runs finish. A Python exception in
a run is a ``failed`` record made inside the worker. A worker *process* that dies (a kill, the
OOM killer, a segfault) breaks a ``ProcessPoolExecutor`` and every run in flight with it; the
process backend then sets aside the runs that had started (their ``running.json`` carries this
submission's token) and reruns them one at a time on a fresh one-worker pool (an innocent run
finishes, resuming from its checkpoint; a run whose worker dies while it runs alone is recorded
as ``failed`` with the exit code), then resubmits the runs that had not started in parallel.
"""
from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import signal
import time
import uuid
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import replace
from pathlib import Path
from typing import Any, Dict, Iterator, List, Sequence

from .config import RunSpec
from .worker import THREAD_VARIABLES, execute, format_error, init_worker, make_record

Record = Dict[str, Any]


def available_cpus() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def threads_per_worker(workers: int) -> int:
    """The CPU threads each of ``workers`` concurrent runs gets (at least 1, never oversubscribed)."""
    return max(1, available_cpus() // max(1, workers))


class InlineBackend:
    """Runs one after the other in this process (debugging, tests; a hard crash ends the sweep)."""

    name = "inline"

    def run(self, specs: Sequence[RunSpec]) -> Iterator[Record]:
        for spec in specs:
            yield execute(spec)


@contextlib.contextmanager
def thread_environment(threads: int) -> Iterator[None]:
    """``OMP_NUM_THREADS`` & co. set while worker processes are started, so each worker's
    torch and numpy start with ``threads`` threads (an initializer would run after the
    worker has imported torch to unpickle it)."""
    saved = {var: os.environ.get(var) for var in THREAD_VARIABLES}
    os.environ.update({var: str(threads) for var in THREAD_VARIABLES})
    try:
        yield
    finally:
        for var, value in saved.items():
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value


def _started(spec: RunSpec) -> bool:
    try:
        return json.loads((Path(spec.run_dir) / "running.json").read_text()).get("token") == spec.token
    except (OSError, ValueError):
        return False


def _processes(pool: ProcessPoolExecutor) -> List[Any]:
    """The pool's worker processes (a CPython detail, read only for the exit codes in messages)."""
    return list((getattr(pool, "_processes", None) or {}).values())


def _describe(code: Any) -> str:
    if isinstance(code, int) and code < 0:
        try:
            return f"exit code {code} ({signal.Signals(-code).name})"
        except ValueError:
            pass
    return f"exit code {code}"


class ProcessBackend:
    """``workers`` spawned processes (``concurrent.futures`` with the spawn context), each
    capped at ``threads`` math-library threads."""

    name = "process"

    def __init__(self, workers: int, threads: int) -> None:
        self.workers, self.threads = max(1, workers), max(1, threads)
        self._finished = 0  # records yielded so far

    def _pool(self, workers: int) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=init_worker, initargs=(self.threads,))

    def run(self, specs: Sequence[RunSpec]) -> Iterator[Record]:
        queue, alone, stalls = list(specs), [], 0
        while queue or alone:
            finished = self._finished
            if alone:  # one worker: if it dies, the run it was running is the cause
                alone, _ = yield from self._phase(alone, 1)
                stalled = self._finished == finished
            else:
                queue, alone = yield from self._phase(queue, self.workers)
                stalled = self._finished == finished and not alone
            stalls = stalls + 1 if stalled else 0
            if stalls >= 2:  # workers die before any run starts (a broken environment): stop retrying
                for spec in alone + queue:
                    yield make_record(spec, "failed", {}, "worker processes died twice before starting any run "
                                      "(see their stderr; a script that starts a sweep needs "
                                      "if __name__ == '__main__':)", 0.0)
                return

    def _phase(self, specs: List[RunSpec], workers: int):
        """Run ``specs`` on a fresh pool until they finish or a worker dies; returns the runs
        that had not started and those in flight when it died (with one worker, the run in
        flight is recorded as failed instead)."""
        specs = [replace(s, token=uuid.uuid4().hex) for s in specs]
        workers = min(workers, len(specs))
        pool = self._pool(workers)
        start = time.perf_counter()
        with thread_environment(self.threads):  # workers start on submit and inherit it
            futures: Dict[Future, RunSpec] = {pool.submit(execute, s): s for s in specs}
        processes = _processes(pool)
        done: set = set()
        clean = False
        try:
            for fut in as_completed(futures):
                try:
                    record = fut.result()
                except BrokenProcessPool:
                    break
                except Exception as err:  # noqa: BLE001 - e.g. a spec that cannot be pickled
                    record = make_record(futures[fut], "failed", {}, f"the worker could not run it: {format_error(err)}",
                                         0.0)
                done.add(fut)
                self._finished += 1
                yield record
            else:
                clean = True
                return [], []
            pool.shutdown(wait=True)  # joins the workers, so their exit codes are known
            clean = True
            not_started, in_flight = [], []
            for fut, spec in futures.items():
                if fut in done:
                    continue
                if fut.done() and not fut.cancelled() and fut.exception() is None:
                    self._finished += 1
                    yield fut.result()
                elif _started(spec):
                    in_flight.append(spec)
                else:
                    not_started.append(spec)
            if workers == 1:
                codes = ", ".join(_describe(p.exitcode) for p in processes if p.exitcode) or "unknown exit code"
                for spec in in_flight:
                    self._finished += 1
                    yield make_record(spec, "failed", {}, f"the worker process died while running this run ({codes}); "
                                      "it ran alone, so no other run caused it", time.perf_counter() - start)
                in_flight = []
            return not_started, in_flight
        finally:
            pool.shutdown(wait=clean, cancel_futures=True)  # interrupted: do not wait for running runs


def make_backend(name: str, workers: int, threads: int, **options: Any) -> Any:
    """``"process"`` (default), ``"inline"`` or ``"ray"`` (``options``: ``address=``)."""
    if name == "inline":
        return InlineBackend()
    if name == "process":
        return ProcessBackend(workers, threads)
    if name == "ray":
        from .ray_backend import RayBackend

        return RayBackend(threads=threads, **options)
    raise ValueError(f"unknown backend {name!r}. Valid: inline, process, ray.")
