"""A sweep's configuration: a YAML file (or a mapping) -> :class:`SweepConfig` -> its runs.

Layout (paths are relative to the YAML file's folder)::

    name: multitask_mnist
    run: multitask_pruning.py:run_one     # "file.py:function" or "package.module:function"
    output: out/multitask_pruning         # results.jsonl, runs/<run id>/, table.md, plots/
    metrics: [acc]                        # what the table and plots show ("<metric>/<task>" keys)
    methods:                              # named method configurations (see methods.py)
      gmp: {criterion: magnitude, allocator: global, schedule: {name: cubic, end_fraction: 0.6}}
      random: {criterion: random, allocator: uniform}
    grid:
      methods: [gmp, random]              # default: every method above, in that order
      sparsity: [0.5, 0.9]
      seed: [0, 1, 2]
      tasks: [[digit, parity], digit]     # task sets (a list, or "a+b"); default: one empty set
    params: {model: {hidden: 64}}         # passed to every run unchanged
    quick: {grid: {seed: [0]}}            # merged over the rest with --quick (lists replace)

Everything is checked here, before any run starts; the problems are reported together
(:class:`SweepConfigError`), unknown names with the valid ones.
"""
from __future__ import annotations

import copy
import difflib
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Sequence, Tuple, Union

TOP_KEYS = ("name", "run", "output", "metrics", "methods", "grid", "params", "quick")
GRID_KEYS = ("methods", "sparsity", "seed", "tasks")


class SweepConfigError(ValueError):
    """A sweep configuration that cannot run; the message lists every problem found."""

    def __init__(self, problems: Sequence[str], source: str = "sweep configuration") -> None:
        self.problems = list(problems)
        super().__init__(f"invalid {source}:\n" + "\n".join(f"  - {p}" for p in self.problems))


def unknown_key(key: str, valid: Sequence[str], what: str) -> str:
    """``unknown <what> 'key'. Did you mean ...? Valid: a, b, c.``"""
    close = difflib.get_close_matches(str(key), [str(v) for v in valid], n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return f"unknown {what} {key!r}.{hint} Valid: {', '.join(valid) or '(none)'}."


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> Dict[str, Any]:
    """``base`` with ``over`` merged in: mappings recursively, anything else replaced."""
    out = copy.deepcopy(dict(base))
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def task_label(tasks: Sequence[str]) -> str:
    """The name of a task set: its tasks joined by ``+`` (``default`` for the empty set)."""
    return "+".join(tasks) if tasks else "default"


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+=-]+", "_", text)


@dataclass(frozen=True)
class RunSpec:
    """One run of the grid: plain, picklable data handed to a worker process."""

    run_id: str
    sweep: str
    method: str
    method_config: Dict[str, Any]
    sparsity: float
    seed: int
    tasks: Tuple[str, ...]
    params: Dict[str, Any]
    entry: str
    run_dir: str
    threads: int = 1
    sys_path: Tuple[str, ...] = ()
    token: str = ""

    @property
    def task_set(self) -> str:
        return task_label(self.tasks)


@dataclass
class SweepConfig:
    """A validated sweep (build it with :func:`load_config`)."""

    name: str
    entry: str
    output: Path
    methods: Dict[str, Dict[str, Any]]
    method_order: List[str]
    sparsities: List[float]
    seeds: List[int]
    task_sets: List[Tuple[str, ...]]
    params: Dict[str, Any] = field(default_factory=dict)
    metrics: List[str] = field(default_factory=list)
    base_dir: Path = Path(".")

    def runs(self, threads: int = 1) -> List[RunSpec]:
        """Every run of the grid: task set, method, sparsity, seed (outer to inner)."""
        entry_name = self.entry.rsplit(":", 1)[-1]
        sys_path = tuple(dict.fromkeys([str(self.base_dir)] + _entry_dirs(self.entry)))
        out = []
        for tasks in self.task_sets:
            for method in self.method_order:
                for sparsity in self.sparsities:
                    for seed in self.seeds:
                        key = {"method": method, "config": self.methods[method], "sparsity": sparsity, "seed": seed,
                               "tasks": list(tasks), "params": self.params, "entry": entry_name}
                        digest = hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:8]
                        run_id = safe_name(f"{method}-s{sparsity:g}-seed{seed}-{task_label(tasks)}-{digest}")
                        out.append(RunSpec(run_id=run_id, sweep=self.name, method=method,
                                           method_config=copy.deepcopy(self.methods[method]), sparsity=sparsity,
                                           seed=seed, tasks=tuple(tasks), params=copy.deepcopy(self.params),
                                           entry=self.entry, run_dir=str(self.output / "runs" / run_id),
                                           threads=threads, sys_path=sys_path))
        return out


def _entry_dirs(entry: str) -> List[str]:
    target = entry.rsplit(":", 1)[0]
    return [str(Path(target).parent)] if target.endswith(".py") else []


def read_yaml(path: Union[str, Path]) -> Dict[str, Any]:
    """A YAML (or ``.json``) file as a mapping."""
    path = Path(path)
    text = path.read_text()
    if path.suffix == ".json":
        data = json.loads(text)
    else:
        try:
            import yaml
        except ImportError as err:  # pragma: no cover - pyyaml is a dependency of the sweep extra
            raise ImportError("reading a sweep YAML needs PyYAML: pip install pyyaml "
                              "(or pass the configuration as a dict)") from err
        data = yaml.safe_load(text)
    if not isinstance(data, Mapping):
        raise SweepConfigError([f"the file holds a {type(data).__name__}, not a mapping"], f"sweep file {path}")
    return dict(data)


def load_config(source: Union[str, Path, Mapping[str, Any]], quick: bool = False,
                base_dir: Union[str, Path, None] = None, check_entry: bool = True) -> SweepConfig:
    """Read, merge (``quick``) and validate a sweep configuration.

    Args:
        source: a YAML/JSON file or a mapping of the same layout.
        quick: merge the ``quick:`` section over the rest.
        base_dir: folder that relative ``run``/``output`` paths start from (default: the file's
            folder, or the current folder for a mapping).
        check_entry: import the run function and check task and parameter names against what it
            declares (:func:`~sparsity_core.sweep.context.sweep_run`).

    Raises:
        SweepConfigError: listing every problem (unknown methods, parameters, tasks, ...).
    """
    if isinstance(source, Mapping):
        raw, where = dict(source), "sweep configuration"
        base = Path(base_dir or ".").resolve()
    else:
        raw, where = read_yaml(source), f"sweep file {source}"
        base = Path(base_dir or Path(source).parent).resolve()
    problems: List[str] = [unknown_key(k, TOP_KEYS, "top-level key") for k in raw if k not in TOP_KEYS]
    quick_part = raw.pop("quick", None) or {}
    if not isinstance(quick_part, Mapping):
        problems.append(f"quick must be a mapping, got {quick_part!r}")
    elif quick:
        problems += [unknown_key(k, [t for t in TOP_KEYS if t != "quick"], "key in quick")
                     for k in quick_part if k not in TOP_KEYS or k == "quick"]
        raw = deep_merge(raw, quick_part)

    name = raw.get("name") or (Path(source).stem if not isinstance(source, Mapping) else "sweep")
    methods = raw.get("methods") or {}
    if not isinstance(methods, Mapping) or not methods:
        problems.append("methods must be a non-empty mapping of method names to configurations")
        methods = {}
    grid = raw.get("grid") or {}
    if not isinstance(grid, Mapping):
        problems.append(f"grid must be a mapping with keys {', '.join(GRID_KEYS)}")
        grid = {}
    problems += [unknown_key(k, GRID_KEYS, "grid key") for k in grid if k not in GRID_KEYS]

    order = list(grid.get("methods") or list(methods))
    problems += [unknown_key(m, list(methods), "method") for m in order if m not in methods]
    sparsities = _numbers(grid.get("sparsity", [0.5]), "grid.sparsity", problems, low=0.0, high=1.0)
    seeds = _ints(grid.get("seed", [0]), "grid.seed", problems)
    task_sets = _task_sets(grid.get("tasks"), problems)
    params = raw.get("params") or {}
    if not isinstance(params, Mapping):
        problems.append(f"params must be a mapping, got {type(params).__name__}")
        params = {}
    metrics = raw.get("metrics") or []
    metrics = [metrics] if isinstance(metrics, str) else list(metrics)
    entry = raw.get("run")
    if not isinstance(entry, str) or ":" not in entry:
        problems.append(f"run must name the run function as 'file.py:function' or 'module:function', got {entry!r}")
        entry = ""
    else:
        entry = _absolute_entry(entry, base)
    output = Path(raw.get("output") or f"out/{name}")
    output = output if output.is_absolute() else base / output

    from .methods import (
        check_method,  # imports the core (torch) only when a config is checked
    )

    for method in order:
        if method in methods:
            problems += check_method(method, methods[method], sparsities)
    if entry and check_entry:
        problems += _check_entry(entry, task_sets, params)
    if problems:
        raise SweepConfigError(problems, where)
    return SweepConfig(name=str(name), entry=entry, output=output,
                       methods={m: dict(methods[m] or {}) for m in order}, method_order=order,
                       sparsities=sparsities, seeds=seeds, task_sets=task_sets, params=dict(params),
                       metrics=[str(m) for m in metrics], base_dir=base)


def _absolute_entry(entry: str, base: Path) -> str:
    target, fn = entry.rsplit(":", 1)
    if target.endswith(".py") and not Path(target).is_absolute():
        target = str((base / target).resolve())
    return f"{target}:{fn}"


def _as_list(value: Any) -> List[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _numbers(value: Any, what: str, problems: List[str], low: float, high: float) -> List[float]:
    out = []
    for v in _as_list(value):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not low <= v < high:
            problems.append(f"{what}: {v!r} is not a sparsity in [{low:g}, {high:g})")
        else:
            out.append(float(v))
    if not out and not problems:
        problems.append(f"{what} is empty")
    return out


def _ints(value: Any, what: str, problems: List[str]) -> List[int]:
    out = []
    for v in _as_list(value):
        if isinstance(v, bool) or not isinstance(v, int):
            problems.append(f"{what}: {v!r} is not an int")
        else:
            out.append(v)
    return out


def _task_sets(value: Any, problems: List[str]) -> List[Tuple[str, ...]]:
    if value is None:
        return [()]
    out = []
    for item in _as_list(value):
        tasks = tuple(item.split("+")) if isinstance(item, str) else tuple(_as_list(item))
        if not all(isinstance(t, str) and t for t in tasks):
            problems.append(f"grid.tasks: {item!r} is not a task set (a list of task names or 'a+b')")
        else:
            out.append(tasks)
    return out


def _check_entry(entry: str, task_sets: List[Tuple[str, ...]], params: Mapping[str, Any]) -> List[str]:
    from .entry import load_entry

    try:
        fn = load_entry(entry)
    except Exception as err:  # noqa: BLE001 - reported with the other problems
        return [f"run {entry!r} cannot be loaded: {type(err).__name__}: {err}"]
    problems = []
    valid_tasks = getattr(fn, "sweep_tasks", None)
    if valid_tasks is not None:
        for tasks in task_sets:
            problems += [unknown_key(t, list(valid_tasks), "task") for t in tasks if t not in valid_tasks]
    valid_params = getattr(fn, "sweep_params", None)
    if valid_params is not None:
        problems += [unknown_key(k, list(valid_params), "params key") for k in params if k not in valid_params]
    check = getattr(fn, "sweep_check", None)
    if check is not None:
        try:
            problems += list(check(dict(params)) or [])
        except ValueError as err:
            problems.append(str(err))
    return problems


def describe(config: SweepConfig) -> str:
    """One line: the grid's size."""
    n = len(config.method_order) * len(config.sparsities) * len(config.seeds) * len(config.task_sets)
    return (f"sweep {config.name!r}: {len(config.method_order)} methods x {len(config.sparsities)} sparsities x "
            f"{len(config.seeds)} seeds x {len(config.task_sets)} task sets = {n} runs -> {config.output}")
