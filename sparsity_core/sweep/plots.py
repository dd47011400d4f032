"""Plots of a sweep: metric vs sparsity, one panel per task, one line per method (mean,
error bars ± std over seeds); one PNG per metric and task set. Needs matplotlib (imported
here, lazily, with no global backend change)."""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import List, Optional, Sequence

from .config import safe_name
from .report import Aggregate, mean_std


def have_matplotlib() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


def plot_aggregate(agg: Aggregate, folder: Path, methods: Optional[Sequence[str]] = None) -> List[Path]:
    """Write ``<metric>__<task set>.png`` files under ``folder``; returns their paths."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for metric, by_set in agg.items():
        for task_set, tasks in by_set.items():
            fig = Figure(figsize=(4.2 * len(tasks), 3.4), layout="constrained")
            FigureCanvasAgg(fig)
            axes = fig.subplots(1, len(tasks), squeeze=False)[0]
            for ax, (task, cells) in zip(axes, tasks.items()):
                order = list(methods or []) + sorted(m for m in cells if m not in (methods or []))
                for method in [m for m in order if m in cells]:
                    xs = sorted(cells[method])
                    stats = [mean_std(cells[method][x]) for x in xs]
                    ax.errorbar(xs, [s[0] for s in stats], yerr=[s[1] for s in stats], marker="o", capsize=3,
                                label=method)
                ax.set_title(task or "(all)")
                ax.set_xlabel("sparsity")
                ax.set_ylabel(metric)
                ax.grid(alpha=0.3)
            axes[0].legend(fontsize="small")
            fig.suptitle(f"{metric} — {task_set}")
            path = folder / f"{safe_name(metric)}__{safe_name(task_set)}.png"
            fig.savefig(path, dpi=110)
            written.append(path)
    return written
