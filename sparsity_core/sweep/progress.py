"""Progress of a sweep: a rich progress bar on a terminal (when rich is installed), else
plain lines (one per finished run), or nothing (``"none"``)."""
from __future__ import annotations

import importlib.util
import sys
from typing import Any, Dict, Optional, TextIO


def _summary(record: Dict[str, Any], limit: int = 4) -> str:
    if record["status"] != "ok":
        return (record.get("error") or "").splitlines()[0][:120] if record.get("error") else "failed"
    items = list(record["metrics"].items())[:limit]
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in items)


class PlainProgress:
    """One line per event, flushed (good for log files and CI)."""

    def __init__(self, stream: Optional[TextIO] = None) -> None:
        self.stream = stream or sys.stdout
        self.total = self.count = 0

    def start(self, total: int, skipped: int, title: str) -> None:
        self.total = total
        self.note(f"{title}: {total} to run, {skipped} already finished")

    def note(self, message: str) -> None:
        print(message, file=self.stream, flush=True)

    def finished(self, record: Dict[str, Any]) -> None:
        self.count += 1
        resumed = " (resumed)" if record.get("resumed_from") else ""
        self.note(f"[{self.count}/{self.total}] {record['status']:<6} {record['run_id']} "
                  f"{record['wall_s']:.1f}s{resumed} {_summary(record)}")

    def close(self) -> None:
        pass


class RichProgress(PlainProgress):
    """A rich progress bar; finished runs are printed above it."""

    def __init__(self) -> None:
        super().__init__()
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self.console = Console()
        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("ok {task.fields[ok]}  failed {task.fields[failed]}"), TimeElapsedColumn(),
                            console=self.console)
        self.task = None

    def start(self, total: int, skipped: int, title: str) -> None:
        self.total = total
        self.bar.start()
        self.task = self.bar.add_task(title.split(":", 1)[0], total=total, ok=0, failed=0)
        self.note(f"{title}: {total} to run, {skipped} already finished")

    def note(self, message: str) -> None:
        self.console.print(message, markup=False, highlight=False, soft_wrap=True)

    def finished(self, record: Dict[str, Any]) -> None:
        self.count += 1
        colour = "green" if record["status"] == "ok" else "red"
        fields = self.bar.tasks[0].fields if self.bar.tasks else {"ok": 0, "failed": 0}
        key = "ok" if record["status"] == "ok" else "failed"
        self.bar.update(self.task, advance=1, **{key: fields[key] + 1})
        from rich.markup import escape

        resumed = " (resumed)" if record.get("resumed_from") else ""
        self.console.print(f"[{colour}]{record['status']:<6}[/] {escape(record['run_id'])} {record['wall_s']:.1f}s"
                           f"{resumed} {escape(_summary(record))}", highlight=False, soft_wrap=True)

    def close(self) -> None:
        self.bar.stop()


class NoProgress(PlainProgress):
    def note(self, message: str) -> None:
        pass


def make_progress(kind: str = "auto") -> PlainProgress:
    """``"auto"`` (rich on a terminal if installed, else plain), ``"rich"``, ``"plain"`` or ``"none"``."""
    if kind not in ("auto", "rich", "plain", "none"):
        raise ValueError(f"unknown progress {kind!r}. Valid: auto, rich, plain, none.")
    if kind == "none":
        return NoProgress()
    if kind in ("auto", "rich"):
        if importlib.util.find_spec("rich") is None:
            if kind == "rich":
                raise ImportError("progress='rich' needs rich: pip install rich")
            return PlainProgress()
        if kind == "rich" or sys.stdout.isatty():
            return RichProgress()
    return PlainProgress()
