"""Programs: the units of sparsity work that one host (the Lightning callback, or a plain
training loop) drives through one small protocol.

A program owns some targets and the decisions about them: the core's mask controller over
weights (:class:`~sparsity_core.mask_program.WeightSparsity`), a plugin's channel groups,
a graph's edge masks, a hash grid's entries and its ADMM loop. The host calls, in order::

    attach(host)                 once, at set-up: find targets in host.model, validate, install
                                 hooks or gates (before the optimizers exist); raise before
                                 anything changes
    bind(host)                   the optimizers and the synchronisation exist (fit start)
    start(step)                  training begins (step-0 updates: one-shot, pruning at init)
    before_optimizer_step(opt)   gradients of the step are final
    after_optimizer_step(step)   once per optimizer step (never on accumulation batches)
    set_task(task, step)         a task stream moved on (task-scoped state: masks, statistics,
                                 the schedule clock; see SparsityController.set_task)
    report() -> {key: float}     logged by the host as ``sparsity/<name>/<key>``
    finalize()                   make the sparsity permanent (zeros, physical removal)
    state_dict()/load_state_dict(state)   plain data (tensors, numbers, strings, lists, dicts)
    detach()                     undo attach (another program failed to attach)

Everything a program would otherwise copy lives in the host: pending state on resume,
step tracking across gradient accumulation, the optimizer check (one policy: parameters a
program trains must be in an optimizer, else set-up fails with their names), refusal of
two programs masking the same tensor, rank-zero logging and finalize at the end of fit.

A program's ``name`` is short and stable (it keys its state in a checkpoint and its logged
metrics); two programs under one host need distinct names.

Clocks: the callback counts optimizer steps across fits (a new ``Trainer`` does not restart a
program's schedule) and steps only programs whose ``clock`` is ``"optimizer"``. A program on
another clock (denoising steps of a diffusion pipeline, calibration batches) is attached,
checkpointed, reported and finalized by the callback, and stepped by whoever owns that clock
through the same ``after_optimizer_step(step)`` call (no optimizer needed).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple, TypeVar

import torch
from torch import nn

from .state import NoState
from .sync import LocalSync


@dataclass
class Host:
    """What a program may use from whoever drives it.

    Args:
        model: the module the program works on.
        optimizers: the optimizers of the run (empty until they exist, or for programs that
            run without one: calibration, denoising steps).
        sync: distributed synchronisation (single process by default).
        example_input: a batch the model accepts (tracing, MACs counting), or ``None``.
        datamodule: the run's data module, if any (programs over a fixed graph read it).
        trainer: the Lightning ``Trainer`` when the callback drives the program, else ``None``.
    """

    model: nn.Module
    optimizers: List[torch.optim.Optimizer] = field(default_factory=list)
    sync: LocalSync = field(default_factory=LocalSync)
    example_input: Any = None
    datamodule: Any = None
    trainer: Any = None


class Program(NoState):
    """Base class: every hook is a no-op, so a program implements only what it needs."""

    #: key of the program's state and metrics; subclasses set a default, users may rename
    name: str = "program"
    #: whether the host calls :meth:`finalize` at the end of fit
    finalize_at_end: bool = False
    #: what the program's steps count: ``"optimizer"`` steps (stepped by the callback) or
    #: another clock its owner drives (``"denoising"``, ``"calibration"``, ...)
    clock: str = "optimizer"

    def state_id(self) -> str:
        """A stable identity for checkpoint keys: the name and plain settings, never an address."""
        return self.name

    def attach(self, host: Host) -> None:
        """Find targets in ``host.model`` and set up (raise ``ValueError`` before changing anything)."""

    def bind(self, host: Host) -> None:
        """The host's optimizers and synchronisation are ready (or changed)."""

    def start(self, step: int) -> None:
        """Training starts at optimizer step ``step`` (a resumed run starts where it stopped)."""

    def before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Gradients of this optimizer step are final (unscaled under AMP, reduced under DDP)."""

    def after_optimizer_step(self, step: int) -> None:
        """Called once per optimizer step with the number of steps done."""

    def set_task(self, task: str, step: int) -> None:
        """The task stream moved on to ``task`` at (program) step ``step``; programs with
        task-scoped state switch it here."""

    def report(self) -> Dict[str, float]:
        """Metrics to log (the host prefixes them with ``sparsity/<name>/``)."""
        return {}

    def removed_params(self) -> Optional[Tuple[float, float]]:
        """``(removed, total)`` parameters this program prunes, for the overall sparsity; ``None``
        when it prunes no parameters (edges, data examples)."""
        return None

    def masked_tensors(self) -> Dict[int, str]:
        """``{id(tensor): name}`` of every tensor whose entries this program masks (two
        programs masking one tensor are refused)."""
        return {}

    def trained_parameters(self) -> Dict[str, nn.Parameter]:
        """Parameters the program adds and needs trained (gates, learnable masks)."""
        return {}

    def finalize(self) -> None:
        """Make the sparsity permanent."""

    @property
    def finalized(self) -> bool:
        return False

    def detach(self) -> None:
        """Undo :meth:`attach` (the host's set-up failed elsewhere)."""



T = TypeVar("T")


def attached(value: Optional[T], program: str) -> T:
    """``value`` (what ``attach`` built), or a clear error when the program is not attached."""
    if value is None:
        raise RuntimeError(f"{program} is not attached: it runs inside Trainer.fit (or call attach(host))")
    return value


def build_program(spec: Any) -> Program:
    """A program from an instance, a registered name (``"ugs"``, built with its defaults) or a
    mapping ``{"program": name, **arguments}`` (what a YAML or LightningCLI config holds)."""
    from .registry import PROGRAMS

    if isinstance(spec, Program):
        return spec
    if isinstance(spec, str):
        program = PROGRAMS.build(spec)
    elif isinstance(spec, Mapping):
        if "program" not in spec:
            raise ValueError(f"a program configuration needs a 'program' key naming one of {PROGRAMS.names()}, "
                             f"got keys {sorted(spec)}")
        args = {k: v for k, v in spec.items() if k != "program"}
        program = PROGRAMS.build(spec["program"], **args)
    else:
        raise TypeError(f"a program is a Program, a registered name or a {{'program': name, ...}} mapping, "
                        f"got {type(spec).__name__}")
    if not isinstance(program, Program):
        raise TypeError(f"{spec!r} built a {type(program).__name__}, not a Program")
    return program


def check_program_names(programs: List[Program]) -> None:
    """Programs under one host need distinct, non-empty string names."""
    names = [p.name for p in programs]
    for p in programs:
        if not isinstance(p, Program):
            raise TypeError(f"expected a Program, got {type(p).__name__}")
        if not isinstance(p.name, str) or not p.name or "/" in p.name:
            raise ValueError(f"a program's name must be a non-empty string without '/', got {p.name!r}")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"programs under one callback need distinct names; {dup} appear more than once "
                         "(pass name=... to tell them apart)")


def check_disjoint(owners: List[Tuple[str, Program]]) -> None:
    """Refuse two programs that mask the same tensor; ``owners`` are ``(label, program)``."""
    seen: Dict[int, Tuple[str, str]] = {}
    for label, program in owners:
        for key, tensor_name in program.masked_tensors().items():
            if key in seen and seen[key][0] != label:
                raise ValueError(
                    f"{tensor_name!r} is masked by both {seen[key][0]} and {label}; a weight can be pruned by one "
                    "program only (exclude it from one of them: exclude=[...])")
            seen[key] = (label, tensor_name)


def missing_from_optimizers(params: Dict[str, nn.Parameter], optimizers: List[torch.optim.Optimizer]) -> List[str]:
    """Names in ``params`` that no optimizer holds."""
    owned = {id(p) for opt in optimizers for g in opt.param_groups for p in g["params"]}
    return sorted(name for name, p in params.items() if id(p) not in owned)
