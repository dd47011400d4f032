"""A small sweep configuration (pure fake runs) shared by the sweep tests."""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Dict, List

METHODS = {
    "gmp": {"criterion": "magnitude", "allocator": "global", "schedule": {"name": "cubic", "end_fraction": 0.5}},
    "rand": {"criterion": "random", "allocator": {"name": "uniform", "min_keep_fraction": 0.05}},
    "b": {},
}


def config(out: Path, methods=("gmp", "rand", "b"), sparsity=(0.5, 0.9), seeds=(0, 1), tasks=(("digit", "parity"),),
           **params: Any) -> Dict[str, Any]:
    return {"name": "test", "run": "tests.sweep.fakes:fake_run", "output": str(out), "metrics": ["acc"],
            "methods": copy.deepcopy(METHODS),
            "grid": {"methods": list(methods), "sparsity": list(sparsity), "seed": list(seeds),
                     "tasks": [list(t) for t in tasks]},
            "params": params}


def calls(out: Path) -> Dict[str, int]:
    """How many times each run's function was called."""
    return {p.parent.name: len(p.read_text().splitlines()) for p in (out / "runs").glob("*/calls.txt")}


def lines(out: Path) -> List[Dict[str, Any]]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def comparable(records) -> Dict[str, tuple]:
    """What must not depend on how the runs were executed."""
    return {r["run_id"]: (r["status"], r["metrics"], r["method"], r["sparsity"], r["seed"], r["task_set"])
            for r in records}
