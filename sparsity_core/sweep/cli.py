"""Command line of the sweep runner (``python -m sparsity_core.sweep``)."""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from .config import SweepConfigError


def build_parser(prog: str = "python -m sparsity_core.sweep") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Run a sweep of (method, sparsity, seed, task set) from a "
                                "YAML file; re-running resumes it. See sparsity_core/sweep/config.py for the layout.")
    p.add_argument("config", help="the sweep's YAML file")
    add_run_options(p)
    return p


def add_run_options(p: argparse.ArgumentParser) -> None:
    """The options every sweep front end shares (the recipes add theirs)."""
    p.add_argument("--quick", action="store_true", help="merge the file's quick: section (a small grid)")
    p.add_argument("--workers", type=int, default=None,
                   help="runs in parallel (default: CPUs, at most 4); 0 runs them in this process")
    p.add_argument("--threads", type=int, default=None, help="CPU threads per run (default: CPUs / workers)")
    p.add_argument("--backend", choices=("process", "inline", "ray"), default="process")
    p.add_argument("--ray-address", default=None, help="Ray cluster address (backend ray)")
    p.add_argument("--progress", choices=("auto", "rich", "plain", "none"), default="auto")
    p.add_argument("--no-retry-failed", action="store_true", help="leave runs that failed as they are")
    p.add_argument("--report-only", action="store_true", help="only write the table and plots of the results so far")
    p.add_argument("--no-plots", action="store_true")


def run_from_args(config, args: argparse.Namespace):
    from .runner import run_sweep

    return run_sweep(config, quick=args.quick, workers=args.workers, threads=args.threads, backend=args.backend,
                     progress=args.progress, retry_failed=not args.no_retry_failed, run=not args.report_only,
                     plots=not args.no_plots, ray_address=args.ray_address)


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = run_from_args(args.config, args)
    except SweepConfigError as err:
        print(err, file=sys.stderr)
        return 2
    print(result.table)
    return 1 if result.failed else 0
