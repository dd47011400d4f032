"""The sweep's table: a metric per method x sparsity, mean ± std over seeds, per task.

Values of metric ``m`` for task ``t`` are read from the ``"m/t"`` key of each run's metrics
(``"m"`` alone is shown as task ``(all)``). The std is the sample standard deviation
(n − 1); a cell with fewer runs than the grid has seeds says so (``(n=2/3)``). Under the
tables: how many runs were counted, and every failed run, missing run and corrupted results
line (nothing leaves the count silently).
"""
from __future__ import annotations

import math
from collections import defaultdict
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from .results import CorruptLine

ALL = ""  # the task of a metric without a task suffix
# metric -> task set -> task -> method -> sparsity -> values (one per seed)
Aggregate = Dict[str, Dict[str, Dict[str, Dict[str, Dict[float, List[float]]]]]]


def mean_std(values: Sequence[float]) -> Tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    n = len(values)
    if n == 0:
        raise ValueError("mean_std of no values")
    mean = math.fsum(values) / n
    if n == 1:
        return mean, 0.0
    return mean, math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))


def format_cell(values: Sequence[float], expected: Optional[int] = None, digits: int = 4) -> str:
    """``mean ± std`` (``mean`` for one value, ``—`` for none), ``(n=k/expected)`` when runs are missing."""
    if not values:
        return "—"
    mean, std = mean_std(values)
    text = f"{mean:.{digits}f}" if len(values) == 1 else f"{mean:.{digits}f} ± {std:.{digits}f}"
    if expected is not None and len(values) < expected:
        text += f" (n={len(values)}/{expected})"
    return text


def _tasks_of(metric: str, records: Iterable[Dict[str, Any]]) -> List[str]:
    """The tasks a metric has in these records: the runs' task order first, then the rest."""
    order: List[str] = []
    for rec in records:
        keys = rec["metrics"]
        for task in list(rec.get("tasks") or []) + [k[len(metric) + 1:] for k in keys if k.startswith(metric + "/")]:
            if f"{metric}/{task}" in keys and task not in order:
                order.append(task)
        if metric in keys and ALL not in order:
            order.append(ALL)
    return order


def aggregate(records: Iterable[Dict[str, Any]], metrics: Sequence[str]) -> Aggregate:
    """Group the ``ok`` records' values by metric, task set, task, method and sparsity."""
    ok = [r for r in records if r["status"] == "ok"]
    out: Aggregate = {}
    for metric in metrics:
        by_set: Dict[str, Dict[str, Dict[str, Dict[float, List[float]]]]] = {}
        for task_set in dict.fromkeys(r["task_set"] for r in ok):
            recs = [r for r in ok if r["task_set"] == task_set]
            tasks = {}
            for task in _tasks_of(metric, recs):
                key = metric if task == ALL else f"{metric}/{task}"
                cells: Dict[str, Dict[float, List[float]]] = defaultdict(lambda: defaultdict(list))
                for r in recs:
                    value = r["metrics"].get(key)
                    if value is not None:
                        cells[r["method"]][float(r["sparsity"])].append(float(value))
                tasks[task] = {m: dict(v) for m, v in cells.items()}
            if tasks:
                by_set[task_set] = tasks
        out[metric] = by_set
    return out


def markdown_tables(agg: Aggregate, methods: Optional[Sequence[str]] = None,
                    sparsities: Optional[Sequence[float]] = None, expected: Optional[int] = None,
                    digits: int = 4) -> str:
    """One markdown table per metric, task set and task: rows methods, columns sparsities."""
    parts = []
    for metric, by_set in agg.items():
        for task_set, tasks in by_set.items():
            for task, cells in tasks.items():
                rows = list(methods or []) + sorted(m for m in cells if m not in (methods or []))
                cols = sorted(set(sparsities or []) | {s for c in cells.values() for s in c})
                lines = [f"### {metric} — task set `{task_set}`, task `{task or '(all)'}`", "",
                         "| method | " + " | ".join(f"{s:g}" for s in cols) + " |",
                         "|---|" + "---:|" * len(cols)]
                for m in rows:
                    lines.append(f"| {m} | " + " | ".join(format_cell(cells.get(m, {}).get(s, []), expected, digits)
                                                          for s in cols) + " |")
                parts.append("\n".join(lines))
    return "\n\n".join(parts) if parts else "(no finished runs with these metrics yet)"


def markdown_report(records: Sequence[Dict[str, Any]], metrics: Sequence[str], *, title: str = "Sweep results",
                    methods: Optional[Sequence[str]] = None, sparsities: Optional[Sequence[float]] = None,
                    expected_seeds: Optional[int] = None, grid_size: Optional[int] = None,
                    missing: Sequence[str] = (), corrupted: Sequence[CorruptLine] = (), ignored: int = 0,
                    results_name: str = "results.jsonl", digits: int = 4) -> str:
    """The whole report: tables, then the count of runs and every run or line not in them.

    ``records``: the record that counts for each run of the grid (ok or failed).
    """
    ok = [r for r in records if r["status"] == "ok"]
    failed = [r for r in records if r["status"] != "ok"]
    size = grid_size if grid_size is not None else len(records) + len(missing)
    body = markdown_tables(aggregate(records, metrics), methods, sparsities, expected_seeds, digits)
    notes = [f"Counted: {len(ok)} finished runs of {size} in the grid; {len(failed)} failed; "
             f"{len(missing)} not run yet; mean ± sample std over seeds."]
    if failed:
        notes.append("\nFailed runs (not in the tables; rerun the sweep to retry them):")
        notes += [f"- `{r['run_id']}`: {(r.get('error') or '').splitlines()[0] if r.get('error') else 'failed'}"
                  for r in failed]
    if missing:
        notes.append("\nNot run yet (rerun the sweep):")
        notes += [f"- `{m}`" for m in missing]
    if corrupted:
        notes.append(f"\nCorrupted lines of {results_name} (skipped; a run whose only line this was counts as "
                     "not run yet):")
        notes += [f"- {c}" for c in corrupted]
    if ignored:
        notes.append(f"\n{ignored} records of {results_name} belong to runs outside this grid (other settings) "
                     "and are not in the tables.")
    return f"# {title}\n\n{body}\n\n" + "\n".join(notes) + "\n"
