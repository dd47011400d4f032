"""Methods: named configurations of the core's components, resolved through the registries.

A method is a mapping in a sweep's ``methods:`` section, either

- the core's weight sparsity (``WeightSparsity``, what ``SparsityCallback``'s keyword
  arguments configure): ``criterion``, ``allocator``, ``enforcement``, ``layout``,
  ``schedule``, ``include``, ``exclude``, ``skip_head``, ``update_every``, ``measure``,
  ``finalize``, ``name``; or
- another registered program: ``{program: channels, measure: macs, ...}`` with that
  program's arguments (``PROGRAMS``; plugins register theirs).

Components are registered names (``criterion: magnitude``) or a mapping with the name and
its arguments (``allocator: {name: global, min_keep_fraction: 0.02}``). The ``schedule``
(default ``oneshot``: prune once at step 0) receives the grid's sparsity as its
``final_sparsity`` (ramps) or ``sparsity`` (constant, oneshot); ``start_fraction``,
``end_fraction`` and ``step_fraction`` place its steps as fractions of the run's optimizer
steps (``total_steps``, which the run function knows).

:func:`check_method` reports unknown names and parameters with the valid ones and then
builds the program once per sparsity (no model needed), so a bad value fails before any run.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from ..mask_program import WeightSparsity
from ..program import Program
from ..registry import (
    ALLOCATORS,
    CRITERIA,
    ENFORCEMENTS,
    LAYOUTS,
    PROGRAMS,
    SCHEDULES,
    Registry,
)
from .config import unknown_key

COMPONENTS: Dict[str, Registry] = {"criterion": CRITERIA, "allocator": ALLOCATORS, "enforcement": ENFORCEMENTS,
                                   "layout": LAYOUTS}
FRACTIONS = {"start_fraction": "start_step", "end_fraction": "end_step", "step_fraction": "step"}
SPARSITY_PARAMS = ("final_sparsity", "sparsity")
PLACEHOLDER_STEPS = 1000  # total_steps used to check fractions before any run


def parameters(factory: Callable[..., Any]) -> Tuple[List[str], bool]:
    """The keyword names ``factory`` accepts and whether it takes ``**kwargs``."""
    sig = inspect.signature(factory)
    names = [n for n, p in sig.parameters.items() if n != "self"
             and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    return names, any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())


def program_factory(config: Mapping[str, Any]) -> Tuple[Callable[..., Program], str]:
    """The class a method builds (``WeightSparsity`` or a registered program) and its label."""
    if "program" in config:
        return PROGRAMS.get(config["program"]), f"program {config['program']!r}"
    return WeightSparsity, "the weights program"


def _split(spec: Any, registry: Registry, where: str) -> Tuple[str, Dict[str, Any]]:
    if isinstance(spec, str):
        return spec, {}
    if isinstance(spec, Mapping):
        if "name" not in spec:
            raise ValueError(f"{where}: a {registry.kind} mapping needs a 'name' key, got keys {sorted(spec)}")
        return spec["name"], {k: v for k, v in spec.items() if k != "name"}
    raise ValueError(f"{where}: a {registry.kind} is a registered name or {{name: ..., ...}}, got {spec!r}")


def _check_args(factory: Callable[..., Any], args: Mapping[str, Any], extra: Sequence[str], what: str) -> List[str]:
    names, var_kw = parameters(factory)
    if var_kw:
        return []
    valid = sorted(set(names) | set(extra))
    return [f"{what}: " + unknown_key(k, valid, "parameter") for k in args if k not in valid]


def check_schedule(spec: Any, where: str) -> List[str]:
    """Unknown schedule names/parameters, a missing sparsity parameter, a sparsity set by hand."""
    try:
        name, args = _split(spec, SCHEDULES, where)
        factory = SCHEDULES.get(name)
    except (KeyError, ValueError) as err:
        return [f"{where}: {err}"]
    names, _ = parameters(factory)
    extra = [f for f, target in FRACTIONS.items() if target in names]
    problems = _check_args(factory, args, extra, f"{where} {name!r}")
    given = [p for p in SPARSITY_PARAMS if p in args]
    if given:
        problems.append(f"{where} {name!r}: {given[0]} comes from the grid's sparsity; remove it")
    if not any(p in names for p in SPARSITY_PARAMS):
        problems.append(f"{where} {name!r} takes no sparsity ({' or '.join(SPARSITY_PARAMS)}), so the grid's "
                        "sparsity cannot be applied; use a schedule that does")
    return problems


def build_schedule(spec: Any, sparsity: float, total_steps: Optional[int], where: str = "schedule") -> Any:
    """The schedule of ``spec`` ending at ``sparsity``; fractions become steps of ``total_steps``."""
    name, args = _split(spec, SCHEDULES, where)
    factory = SCHEDULES.get(name)
    names, _ = parameters(factory)
    for frac, target in FRACTIONS.items():
        if frac in args:
            if total_steps is None:
                raise ValueError(f"{where} uses {frac}: pass total_steps= (the run's optimizer steps) when building it")
            args[target] = int(round(float(args.pop(frac)) * total_steps))
    args[next(p for p in SPARSITY_PARAMS if p in names)] = sparsity
    return factory(**args)


def check_method(name: str, config: Any, sparsities: Sequence[float] = (0.5,)) -> List[str]:
    """Every problem of one method's configuration (empty when it builds at every sparsity)."""
    where = f"method {name!r}"
    if not isinstance(config, Mapping):
        return [f"{where} must be a mapping of parameters, got {config!r}"]
    try:
        factory, label = program_factory(config)
    except (KeyError, ValueError, TypeError) as err:
        return [f"{where}: {err}"]
    args = {k: v for k, v in config.items() if k != "program"}
    problems = _check_args(factory, args, (), f"{where} ({label})")
    if "schedule" not in parameters(factory)[0]:
        problems.append(f"{where}: {label} takes no schedule=, so the grid's sparsity cannot be applied")
    problems += check_schedule(config.get("schedule", "oneshot"), f"{where} schedule")
    for key, registry in COMPONENTS.items():
        if isinstance(config.get(key), Mapping):
            try:
                comp, comp_args = _split(config[key], registry, f"{where} {key}")
                problems += _check_args(registry.get(comp), comp_args, (), f"{where} {key} {comp!r}")
            except (KeyError, ValueError) as err:
                problems.append(f"{where} {key}: {err}")
        elif isinstance(config.get(key), str) and key != "layout" and "program" not in config:
            if config[key] not in registry:
                try:
                    registry.get(config[key])  # loads plugins, then lists the valid names
                except KeyError as err:
                    problems.append(f"{where} {key}: {err}")
    if problems:
        return problems
    for sparsity in sparsities:
        try:
            build_method(config, sparsity, PLACEHOLDER_STEPS)
        except Exception as err:  # noqa: BLE001 - every construction error is a configuration problem
            problems.append(f"{where} at sparsity {sparsity:g}: {type(err).__name__}: {err}")
            break
    return problems


def build_method(config: Mapping[str, Any], sparsity: float, total_steps: Optional[int] = None,
                 defaults: Optional[Mapping[str, Any]] = None) -> Program:
    """The program of a method at ``sparsity``.

    Args:
        config: the method's mapping (see the module docstring).
        sparsity: the grid's sparsity, given to the schedule.
        total_steps: the run's optimizer steps (needed when the schedule uses fractions).
        defaults: arguments used where the method does not set them and the program accepts
            them (a run function's ``exclude=`` for its heads, ``update_every=``...).
    """
    factory, _ = program_factory(config)
    accepted, var_kw = parameters(factory)
    args = {k: v for k, v in (defaults or {}).items() if (var_kw or k in accepted) and k not in config}
    args.update({k: v for k, v in config.items() if k != "program"})
    for key, registry in COMPONENTS.items():
        if isinstance(args.get(key), Mapping):
            comp, comp_args = _split(args[key], registry, key)
            args[key] = registry.build(comp, **comp_args)
    args["schedule"] = build_schedule(config.get("schedule", "oneshot"), sparsity, total_steps)
    return factory(**args)
