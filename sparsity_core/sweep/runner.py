"""Run a sweep: check the grid, skip finished runs, execute the rest, write the table and plots.

    from sparsity_core.sweep import run_sweep
    result = run_sweep("recipes/multitask_pruning.yaml", quick=True, workers=2)
    print(result.table)

Output folder: ``results.jsonl`` (append-only), ``runs/<run id>/`` (checkpoints, attempts),
``table.md``, ``plots/*.png``, ``sweep.json`` (the resolved grid of the last call).
Re-running the same configuration skips runs with an ``ok`` record, retries ``failed`` ones
(``retry_failed``) and runs the rest; an interrupted run resumes from its last checkpoint
when its run function passes ``ckpt_path=ctx.ckpt_path`` to ``trainer.fit``.
"""
from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Union

from .backends import available_cpus, make_backend, threads_per_worker
from .config import SweepConfig, describe, load_config
from .progress import make_progress
from .report import aggregate, markdown_report
from .results import CorruptLine, ResultsFile, ResultsLog

log = logging.getLogger(__name__)
DEFAULT_MAX_WORKERS = 4


@dataclass
class SweepResult:
    """What a sweep call did and what the output folder holds now."""

    config: SweepConfig
    records: Dict[str, Dict[str, Any]]  # the record that counts for each run of the grid
    ran: List[Dict[str, Any]] = field(default_factory=list)  # records written by this call
    skipped: List[str] = field(default_factory=list)  # runs already finished before this call
    corrupted: List[CorruptLine] = field(default_factory=list)
    missing: List[str] = field(default_factory=list)
    table: str = ""
    table_path: Optional[Path] = None
    plots: List[Path] = field(default_factory=list)

    @property
    def failed(self) -> List[Dict[str, Any]]:
        return [r for r in self.records.values() if r["status"] != "ok"]


@contextlib.contextmanager
def output_lock(folder: Path) -> Iterator[None]:
    """Refuse a second sweep writing to the same folder at the same time."""
    folder.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no lock
        yield
        return
    with open(folder / ".sweep.lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise RuntimeError(f"another sweep is writing to {folder} (it holds {folder / '.sweep.lock'})") from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _report_corrupted(log_: ResultsLog, path: Path, progress: Any) -> None:
    for line in log_.corrupted:
        message = f"{path}: {line} -- skipped; its run counts as not finished"
        log.warning(message)
        progress.note(f"warning: {message}")


def run_sweep(config: Union[str, Path, Mapping[str, Any], SweepConfig], *, quick: bool = False,
              workers: Optional[int] = None, threads: Optional[int] = None, backend: str = "process",
              progress: str = "auto", retry_failed: bool = True, run: bool = True, plots: bool = True,
              ray_address: Optional[str] = None) -> SweepResult:
    """Execute a sweep (see the module docstring).

    Args:
        config: a YAML file, a mapping of the same layout, or a :class:`SweepConfig`.
        quick: merge the configuration's ``quick:`` section (a small grid).
        workers: runs in parallel; ``0`` runs them one by one in this process (backend
            ``inline``). Default: the CPUs available, at most 4.
        threads: CPU threads per run; default: the CPUs available divided by ``workers``
            (inline: all of them; Ray: 1, the CPUs each task asks the cluster for).
        backend: ``"process"`` (spawned processes, the default), ``"inline"`` or ``"ray"``.
        progress: ``"auto"``, ``"rich"``, ``"plain"`` or ``"none"``.
        retry_failed: run again the runs whose last record is ``failed``.
        run: ``False`` only writes the table and plots of what the results file holds.
        plots: write the plots (needs matplotlib; skipped with a note without it).
        ray_address: the Ray cluster for ``backend="ray"``.
    """
    cfg = config if isinstance(config, SweepConfig) else load_config(config, quick=quick)
    show = make_progress(progress)
    results = ResultsFile(cfg.output / "results.jsonl")
    if workers == 0:
        backend = "inline"
    with output_lock(cfg.output):
        before = results.read()
        _report_corrupted(before, results.path, show)
        latest = before.latest()
        grid = cfg.runs()
        finished = [s.run_id for s in grid if latest.get(s.run_id, {}).get("status") == "ok"]
        todo = [s for s in grid if s.run_id not in finished
                and (retry_failed or latest.get(s.run_id, {}).get("status") != "failed")]
        ran: List[Dict[str, Any]] = []
        if run and todo:
            n_workers = 1 if backend == "inline" else (workers or min(available_cpus(), DEFAULT_MAX_WORKERS, len(todo)))
            n_threads = threads or {"inline": available_cpus(), "ray": 1}.get(backend) or threads_per_worker(n_workers)
            grid_threads = {s.run_id: s for s in cfg.runs(threads=n_threads)}
            todo = [grid_threads[s.run_id] for s in todo]
            (cfg.output / "sweep.json").write_text(json.dumps(
                {"config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()},
                 "backend": backend, "workers": n_workers, "threads": n_threads}, indent=1, default=str))
            options = {"address": ray_address} if backend == "ray" else {}
            runner = make_backend(backend, n_workers, n_threads, **options)
            show.start(len(todo), len(finished), f"{describe(cfg)}; {backend} x{n_workers}, {n_threads} threads each")
            try:
                for record in runner.run(todo):
                    results.append(record)
                    ran.append(record)
                    show.finished(record)
            finally:
                show.close()
        elif run:
            left = len(grid) - len(finished)
            show.note(f"{describe(cfg)}: nothing to run ({len(finished)} finished"
                      + (f", {left} failed, not retried)" if left else ")"))
        return write_report(cfg, results, ran=ran, skipped=finished, plots=plots, progress=show)


def write_report(cfg: SweepConfig, results: ResultsFile, ran: Optional[List[Dict[str, Any]]] = None,
                 skipped: Optional[List[str]] = None, plots: bool = True, progress: Any = None) -> SweepResult:
    """Read the results file and write ``table.md`` (and the plots) for the grid of ``cfg``."""
    show = progress or make_progress("none")
    log_ = results.read()
    latest = log_.latest()
    grid = cfg.runs()
    ids = {s.run_id for s in grid}
    counted = {s.run_id: latest[s.run_id] for s in grid if s.run_id in latest}
    missing = [s.run_id for s in grid if s.run_id not in latest]
    ignored = sum(1 for r in log_.records if r["run_id"] not in ids)
    table = markdown_report(list(counted.values()), cfg.metrics, title=f"Sweep {cfg.name}",
                            methods=cfg.method_order, sparsities=cfg.sparsities, expected_seeds=len(cfg.seeds),
                            grid_size=len(grid), missing=missing, corrupted=log_.corrupted, ignored=ignored,
                            results_name=results.path.name)
    table_path = cfg.output / "table.md"
    table_path.write_text(table)
    written: List[Path] = []
    if plots:
        from .plots import have_matplotlib, plot_aggregate

        if have_matplotlib():
            written = plot_aggregate(aggregate(list(counted.values()), cfg.metrics), cfg.output / "plots",
                                     cfg.method_order)
        else:
            show.note("matplotlib is not installed: no plots (pip install matplotlib)")
    show.note(f"wrote {table_path}" + (f" and {len(written)} plots in {cfg.output / 'plots'}" if written else ""))
    return SweepResult(config=cfg, records=counted, ran=list(ran or []), skipped=list(skipped or []),
                       corrupted=log_.corrupted, missing=missing, table=table, table_path=table_path, plots=written)
