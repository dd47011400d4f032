"""One registry type for every named component (criteria, allocators, schedules, ...).

Components register with a decorator and are built by name::

    @CRITERIA.register("magnitude")
    class Magnitude(Criterion): ...

    CRITERIA.build("magnitude", p=2)

An unknown name raises :class:`UnknownNameError` (a ``KeyError``) listing the valid names
and the closest match. Third-party packages add components through the entry-point group
``sparsity_suite.plugins``: each entry point names a module or a zero-argument callable
that registers its components when loaded. Entry points are loaded lazily, the first time
a name is not found, so ``import sparsity_core`` stays fast.
"""
from __future__ import annotations

import difflib
import logging
from importlib import metadata
from typing import Any, Callable, Dict, Generic, Iterator, List, TypeVar

from .ranks import log_rank_zero

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "sparsity_suite.plugins"

T = TypeVar("T")


class UnknownNameError(KeyError, ValueError):
    """An unknown component name (a ``KeyError``, and a ``ValueError`` like every other bad
    configuration); the message lists the valid names."""

    def __str__(self) -> str:  # KeyError would repr() the message and add quotes
        return str(self.args[0]) if self.args else ""


_plugins_loaded = False


def load_plugins(force: bool = False) -> List[str]:
    """Load every entry point of the group ``sparsity_suite.plugins`` once.

    Returns the names of the entry points loaded by this call. A plugin whose import fails
    (a missing optional dependency) is skipped with a warning so that the core keeps working.
    """
    global _plugins_loaded
    if _plugins_loaded and not force:
        return []
    _plugins_loaded = True
    loaded = []
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            obj = ep.load()
            if callable(obj):
                obj()
            loaded.append(ep.name)
        except Exception as err:  # noqa: BLE001 - a broken plugin must not break the core
            log_rank_zero(log, logging.WARNING, "sparsity-suite plugin %r could not be loaded: %s", ep.name, err)
    return loaded


class Registry(Generic[T]):
    """A named collection of components of one kind (``kind`` is used in messages)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: Dict[str, T] = {}

    def register(self, name: str, obj: T | None = None, *, override: bool = False):
        """Register ``obj`` under ``name``; without ``obj`` return a decorator."""

        def add(item: T) -> T:
            key = name.lower()
            if key in self._entries and not override and self._entries[key] is not item:
                raise ValueError(
                    f"{self.kind} {name!r} is already registered; pass override=True to replace it"
                )
            self._entries[key] = item
            return item

        return add(obj) if obj is not None else add

    def names(self) -> List[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, name: str) -> T:
        if not isinstance(name, str):
            raise TypeError(f"{self.kind} name must be a string, got {type(name).__name__}")
        key = name.lower()
        if key not in self._entries:
            load_plugins()
        if key not in self._entries:
            raise UnknownNameError(self._unknown_message(name))
        return self._entries[key]

    def build(self, spec: Any, **kwargs: Any) -> Any:
        """Build a component from a registered name, or return ``spec`` if it is not a name."""
        if isinstance(spec, str):
            factory: Callable[..., Any] = self.get(spec)  # type: ignore[assignment]
            return factory(**kwargs)
        if kwargs:
            raise ValueError(f"keyword arguments are only accepted with a {self.kind} name")
        return spec

    def _unknown_message(self, name: str) -> str:
        valid = self.names()
        close = difflib.get_close_matches(name.lower(), valid, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        return f"unknown {self.kind} {name!r}.{hint} Valid names: {', '.join(valid) or '(none)'}."

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, names={self.names()})"


CRITERIA: Registry[Any] = Registry("criterion")
ALLOCATORS: Registry[Any] = Registry("allocator")
SCHEDULES: Registry[Any] = Registry("schedule")
ENFORCEMENTS: Registry[Any] = Registry("enforcement")
LAYOUTS: Registry[Any] = Registry("unit layout")
PROGRAMS: Registry[Any] = Registry("program")
