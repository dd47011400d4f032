"""The run function of a sweep: how it is named, loaded in a worker, and what it declares.

A run function takes a :class:`~sparsity_core.sweep.context.RunContext` and returns its
metrics (``{"acc/digit": 0.98, ...}`` or ``{"acc": {"digit": 0.98}}``)::

    @sweep_run(tasks=("digit", "parity"), params=("model", "data", "trainer"))
    def run_one(ctx):
        ...
        trainer = pl.Trainer(callbacks=[ctx.sparsity_callback(total_steps), ctx.model_checkpoint()], ...)
        trainer.fit(model, data, ckpt_path=ctx.ckpt_path)     # resumes an interrupted run
        return {"acc": {...}}

Workers are fresh processes, so the sweep names the function instead of pickling it:
``"path/to/file.py:function"`` (imported from that file; its ``if __name__ == "__main__"``
block does not run) or ``"package.module:function"``.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any, Callable, Iterable, List, Optional


def sweep_run(tasks: Optional[Iterable[str]] = None, params: Optional[Iterable[str]] = None,
              check: Optional[Callable[[dict], List[str]]] = None) -> Callable[[Callable], Callable]:
    """Declare what a run function accepts, so a sweep's YAML is checked before any run.

    Args:
        tasks: the valid task names (``grid.tasks`` may only use these).
        params: the valid top-level keys of ``params``.
        check: ``check(params) -> [problem, ...]`` for deeper checks (may raise ``ValueError``).
    """

    def mark(fn: Callable) -> Callable:
        fn.sweep_tasks = None if tasks is None else tuple(tasks)
        fn.sweep_params = None if params is None else tuple(params)
        fn.sweep_check = check
        return fn

    return mark


def entry_name(fn: Callable) -> str:
    """The ``"module:function"`` (or ``"file.py:function"`` for a script) that names ``fn``."""
    module = getattr(fn, "__module__", None)
    name = getattr(fn, "__qualname__", "")
    if not module or "<" in name:
        raise ValueError(f"{fn!r} is not a module-level function; a sweep's workers import it by name")
    if module == "__main__":
        main = getattr(sys.modules["__main__"], "__file__", None)
        if not main:
            raise ValueError("a run function defined in an interactive session cannot be imported by workers; "
                             "put it in a file")
        return f"{Path(main).resolve()}:{name}"
    return f"{module}:{name}"


def load_entry(entry: str) -> Callable[..., Any]:
    """Import the function an entry names (``"file.py:fn"`` or ``"module:fn"``)."""
    if ":" not in entry:
        raise ValueError(f"a run function is named 'file.py:function' or 'module:function', got {entry!r}")
    target, name = entry.rsplit(":", 1)
    if target.endswith(".py"):
        path = Path(target).resolve()
        if not path.is_file():
            raise FileNotFoundError(f"run file {path} does not exist")
        key = f"_sweep_entry_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
        module = sys.modules.get(key)
        if module is None:
            spec = importlib.util.spec_from_file_location(key, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[key] = module  # dataclasses and pickling look modules up by name
            try:
                spec.loader.exec_module(module)
            except BaseException:
                del sys.modules[key]
                raise
    else:
        module = importlib.import_module(target)
    obj: Any = module
    for part in name.split("."):
        if not hasattr(obj, part):
            public = sorted(n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n)))
            raise AttributeError(f"{target} has no {name!r}; its functions: {', '.join(public) or '(none)'}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise TypeError(f"{entry} is a {type(obj).__name__}, not a function")
    return obj
