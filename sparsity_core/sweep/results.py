"""The results file: JSON lines, append-only, one object per finished run (``ok`` or ``failed``).

Only the sweep's main process writes it (workers return their record), one ``write`` of a
whole line followed by ``fsync``; a line cut short by a kill is never rewritten: the next
append starts on a new line, and reading reports the cut line as corrupted (which line, why)
instead of dropping it silently. A run whose only line is corrupted counts as not finished,
so the next sweep runs it again.

A record::

    {"run_id": ..., "sweep": ..., "method": ..., "method_config": {...}, "sparsity": 0.5,
     "seed": 0, "tasks": ["digit", "parity"], "task_set": "digit+parity", "params": {...},
     "status": "ok" | "failed", "metrics": {"acc/digit": 0.97, ...}, "error": null | "...",
     "wall_s": 12.3, "attempt": 1, "resumed_from": null | "runs/<id>/checkpoints/last.ckpt",
     "started": "2025-01-01T12:00:00", "finished": "...", "host": ..., "pid": ...}
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Union

STATUSES = ("ok", "failed")
REQUIRED = {"run_id": str, "status": str, "metrics": dict, "method": str, "sparsity": (int, float),
            "seed": int, "task_set": str}


@dataclass(frozen=True)
class CorruptLine:
    """A line of the results file that is not a record."""

    lineno: int
    reason: str
    text: str

    def __str__(self) -> str:
        shown = self.text if len(self.text) <= 80 else self.text[:77] + "..."
        return f"line {self.lineno}: {self.reason} ({shown!r})"


@dataclass
class ResultsLog:
    """What a results file holds: its records (file order) and its corrupted lines."""

    records: List[Dict[str, Any]] = field(default_factory=list)
    corrupted: List[CorruptLine] = field(default_factory=list)

    def latest(self) -> Dict[str, Dict[str, Any]]:
        """The record that counts for each run: its last ``ok`` one, else its last ``failed`` one."""
        out: Dict[str, Dict[str, Any]] = {}
        for rec in self.records:
            prev = out.get(rec["run_id"])
            if prev is None or prev["status"] != "ok" or rec["status"] == "ok":
                out[rec["run_id"]] = rec
        return out


def check_record(obj: Any) -> str:
    """Why ``obj`` is not a record (``""`` when it is one)."""
    if not isinstance(obj, dict):
        return f"not a JSON object but a {type(obj).__name__}"
    for key, kind in REQUIRED.items():
        if key not in obj:
            return f"missing key {key!r}"
        if not isinstance(obj[key], kind) or isinstance(obj[key], bool):
            return f"{key!r} has the wrong type ({type(obj[key]).__name__})"
    if obj["status"] not in STATUSES:
        return f"status {obj['status']!r} is not one of {', '.join(STATUSES)}"
    for name, value in obj["metrics"].items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            return f"metric {name!r} is not a number ({value!r})"
    return ""


def clean_metrics(metrics: Any) -> Dict[str, Any]:
    """A run's metrics as a flat ``{name: number or None}``; nested mappings become
    ``"outer/inner"`` and non-finite numbers ``None`` (JSON has no NaN)."""
    if not isinstance(metrics, dict):
        raise TypeError(f"a run function returns a dict of metrics, got {type(metrics).__name__}")
    out: Dict[str, Any] = {}
    for name, value in metrics.items():
        if isinstance(value, dict):
            out.update({f"{name}/{k}": v for k, v in clean_metrics(value).items()})
            continue
        if hasattr(value, "item") and callable(value.item):  # a 0-d tensor or numpy scalar
            value = value.item()
        if value is None:
            out[str(name)] = None
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"metric {name!r} is not a number: {value!r}")
        else:
            out[str(name)] = value if math.isfinite(value) else None
    return out


class ResultsFile:
    """Append and read the JSON-lines results of a sweep."""

    def __init__(self, path: Union[str, Path]) -> None:
        self.path = Path(path)

    def append(self, record: Dict[str, Any]) -> None:
        """Append one record as one line (flushed and synced before returning)."""
        line = json.dumps(record, allow_nan=False, default=str).encode() + b"\n"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "ab") as f:
            if f.tell() > 0 and not self._ends_with_newline():
                line = b"\n" + line  # a line cut short by a kill stays as it was, on its own
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

    def _ends_with_newline(self) -> bool:
        with open(self.path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            return f.read(1) == b"\n"

    def read(self) -> ResultsLog:
        """Every record; lines that are not records are reported in ``corrupted``."""
        log = ResultsLog()
        if not self.path.exists():
            return log
        with open(self.path, "rb") as f:
            for lineno, raw in enumerate(f, start=1):
                text = raw.decode("utf-8", errors="replace").strip()
                if not text:
                    continue
                try:
                    obj = json.loads(text)
                except json.JSONDecodeError as err:
                    log.corrupted.append(CorruptLine(lineno, f"not valid JSON ({err.msg} at column {err.colno})",
                                                     text))
                    continue
                reason = check_record(obj)
                if reason:
                    log.corrupted.append(CorruptLine(lineno, reason, text))
                else:
                    log.records.append(obj)
        return log
