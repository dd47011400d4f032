"""Sweeps: a grid of (method, sparsity, seed, task set), one Lightning fit per run.

    python -m sparsity_core.sweep recipes/multitask_pruning.yaml --quick --workers 2

- :func:`run_sweep` runs a grid from a YAML file (layout in :mod:`.config`); methods are
  named configurations of the core's components and programs (:mod:`.methods`), checked
  before any run; each run calls a run function (:mod:`.entry`, :class:`RunContext`).
- Results: one JSON line per finished run (:mod:`.results`); re-running skips finished runs,
  retries failed ones and resumes interrupted ones from their last checkpoint.
- Execution: spawned processes (default), this process (``workers=0``) or Ray (:mod:`.ray_backend`).
- At the end: ``table.md`` (mean ± std over seeds, :mod:`.report`) and plots (:mod:`.plots`).

Importing this package imports the core (torch) but not Lightning, YAML, rich, matplotlib
or Ray; each is imported where it is used.
"""
from .config import RunSpec, SweepConfig, SweepConfigError, load_config
from .context import RunContext
from .entry import load_entry, sweep_run
from .report import aggregate, format_cell, markdown_report, markdown_tables, mean_std
from .results import CorruptLine, ResultsFile, ResultsLog
from .runner import SweepResult, run_sweep, write_report

__all__ = ["CorruptLine", "ResultsFile", "ResultsLog", "RunContext", "RunSpec", "SweepConfig", "SweepConfigError",
           "SweepResult", "aggregate", "format_cell", "load_config", "load_entry", "markdown_report",
           "markdown_tables", "mean_std", "run_sweep", "sweep_run", "write_report"]
