"""``SparsityCallback``: add sparsity to an existing Lightning ``Trainer`` with one callback.

    trainer = pl.Trainer(callbacks=[SparsityCallback(schedule=Cubic(end_step=2000, final_sparsity=0.9))])
    trainer = pl.Trainer(callbacks=[SparsityCallback(programs=[ChannelPruning(0.5)])])

The callback drives any number of :class:`~sparsity_core.program.Program` objects (the core's
:class:`~sparsity_core.mask_program.WeightSparsity`, built from the keyword arguments, and
the plugins' programs) through one protocol. Hooks (Lightning's order):

- ``setup``: every program attaches to the LightningModule (targets discovered, gates
  installed, configuration checked) before ``configure_optimizers`` and before any weight
  changes; if one fails, those attached before it are detached. Two programs (of this or
  another ``SparsityCallback``) masking the same tensor are refused.
- ``on_fit_start``: programs get the optimizers and the strategy's synchronisation; the
  parameters a program trains (gates, learnable masks) must be in an optimizer (one policy:
  an error naming them).
- ``on_train_start``: step-0 updates (one-shot pruning, pruning at initialization).
- ``on_before_optimizer_step``: gradients are final (unscaled under AMP, reduced under DDP).
- ``on_train_batch_end``: when ``trainer.global_step`` advanced (not on gradient-accumulation
  batches) every program takes its optimizer step; reports are logged on rank zero as
  ``sparsity/<program>/<key>``, and the overall fraction of pruned parameters once, as
  ``sparsity/global``, by the first ``SparsityCallback`` of the trainer.
- ``on_train_end``: programs configured with ``finalize=True`` make their sparsity permanent.

Programs count optimizer steps on the callback's clock, which goes on across fits: a second
``Trainer.fit`` with the same callback continues the schedules instead of restarting them.
``set_task(name)`` moves task-scoped programs to another task of a stream.

``state_dict`` holds every program's state under its name, so a resumed run continues
bit-identically; the state key is built from the programs' names and stable settings (never
from object addresses), and resuming from a checkpoint that holds no state for this callback
fails loudly instead of silently starting over.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import pytorch_lightning as pl

from ..allocators.base import Allocator
from ..controller import SparsityController
from ..criteria.base import Criterion
from ..discovery import Patterns
from ..enforcement.base import Enforcement
from ..enforcement.regime import RegimePart
from ..layouts import UnitLayout
from ..mask_program import MaskProgram, WeightSparsity
from ..program import (
    Host,
    Program,
    build_program,
    check_disjoint,
    check_program_names,
    missing_from_optimizers,
)
from ..schedules.base import Schedule
from .sync import StrategySync

log = logging.getLogger(__name__)

_WEIGHT_DEFAULTS = dict(criterion="magnitude", allocator="global", enforcement="hard", layout="element", include=None,
                        exclude=None, skip_head=True, update_every=100, measure="units", finalize=False)


class SparsityCallback(pl.Callback):
    """Prune, sparse-train and finalize a LightningModule.

    Args:
        schedule: sparsity of the model's weights: a :class:`Schedule` (``Cubic``, ``Linear``,
            ``Iterative``, ...), a float (one-shot at step 0) or a callable ``step -> sparsity``.
            Default: 0.5 when no ``programs`` are given; with ``programs`` and no schedule
            the weights are left alone.
        criterion: ``"magnitude"``, ``"l2"``, ``"random"``, ``"taylor"``, ``"movement"`` or a
            :class:`Criterion`.
        allocator: ``"global"``, ``"uniform"``, ``"erk"``, ``"lamp"`` or an :class:`Allocator`.
        enforcement: ``"hard"``, ``"ste"``, ``"sr_ste"``, ... or an :class:`Enforcement`.
        layout: unit layout of every weight: ``"element"``, ``"2:4"`` (N:M), ``"channel"``...
        include, exclude: regular expressions searched in module names.
        skip_head: leave the classifier head dense (default); ``False`` prunes it too.
        update_every: recompute masks every this many optimizer steps within the schedule.
        measure: what the sparsity counts: ``"units"``, ``"params"`` or ``"macs"`` (MACs are
            measured with ``pl_module.example_input_array``).
        finalize: make the weight sparsity permanent at the end of training.
        programs: further programs (plugins: ``ChannelPruning``, ``UGS``, ``GTSP``, ...), as
            instances, registered names (``"ugs"``) or ``{"program": "ugs", "rounds": 3}``.
        name: name of the weight program (its checkpoint entry and ``sparsity/<name>/...``
            metrics); two callbacks on one trainer need distinct names.
        log_per_target: also log ``sparsity/<program>/<target>`` for every target.
    """

    def __init__(
        self,
        schedule: Union[Schedule, float, Callable[[int], float], None] = None,
        criterion: Union[str, Criterion] = "magnitude",
        allocator: Union[str, Allocator] = "global",
        enforcement: Union[str, Enforcement, RegimePart] = "hard",
        layout: Union[str, UnitLayout] = "element",
        include: Patterns = None,
        exclude: Patterns = None,
        skip_head: bool = True,
        update_every: int = 100,
        measure: str = "units",
        finalize: bool = False,
        programs: Sequence[Union[Program, str, Dict[str, Any]]] = (),
        name: str = "weights",
        log_per_target: bool = True,
    ) -> None:
        super().__init__()
        programs = [build_program(p) for p in programs]
        weight_args = dict(criterion=criterion, allocator=allocator, enforcement=enforcement, layout=layout,
                           include=include, exclude=exclude, skip_head=skip_head, update_every=update_every,
                           measure=measure, finalize=finalize)
        if schedule is None and programs:
            changed = sorted(k for k, v in weight_args.items() if v is not _WEIGHT_DEFAULTS[k]
                             and v != _WEIGHT_DEFAULTS[k])
            if changed:
                raise ValueError(f"{', '.join(changed)} configure the weights, but no weight schedule was given; "
                                 "pass schedule=... too, or set these on the program")
        else:
            programs.insert(0, WeightSparsity(0.5 if schedule is None else schedule, name=name, **weight_args))
        check_program_names(programs)
        self.programs: List[Program] = programs
        self.log_per_target = bool(log_per_target)
        self.host: Optional[Host] = None
        self._pending: Dict[str, Dict[str, Any]] = {}
        self._seen_step = -1  # the trainer's global_step last seen (accumulation batches do not advance it)
        self.clock = 0  # optimizer steps the programs have taken, across fits

    @property
    def state_key(self) -> str:
        return self._generate_state_key(programs=tuple(p.state_id() for p in self.programs))

    # -- convenience for the common single-weight-program case ----------------------------
    @property
    def weights(self) -> Optional[WeightSparsity]:
        return next((p for p in self.programs if isinstance(p, WeightSparsity)), None)

    @property
    def controller(self) -> Optional[SparsityController]:
        """The controller of the first mask program (``None`` before set-up)."""
        first = next((p for p in self.programs if isinstance(p, MaskProgram)), None)
        return None if first is None else first.controller

    # -- set-up ---------------------------------------------------------------------------
    def setup(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", stage: str) -> None:
        if stage != "fit":
            return
        if self.host is not None and self.host.model is not pl_module:
            raise ValueError("this SparsityCallback already holds the masks of another LightningModule; "
                             "use one callback per model")
        host = Host(model=pl_module, example_input=pl_module.example_input_array,
                    datamodule=getattr(trainer, "datamodule", None), trainer=trainer)
        attached: List[Program] = []
        try:
            for program in self.programs:
                program.attach(host)
                attached.append(program)
            self._check_other_callbacks(trainer)
            for program in self.programs:
                if program.name in self._pending:
                    program.load_state_dict(self._pending[program.name])
        except Exception:
            if self.host is None:  # a first set-up: leave the model as it was
                for program in reversed(attached):
                    program.detach()
            raise
        self._pending = {}
        self.host = host

    def _check_other_callbacks(self, trainer: "pl.Trainer") -> None:
        others = [cb for cb in getattr(trainer, "callbacks", []) if isinstance(cb, SparsityCallback) and cb is not self]
        taken = {p.name for cb in others for p in cb.programs}
        clash = sorted(taken & {p.name for p in self.programs})
        if clash:
            raise ValueError(f"programs named {clash} run in two SparsityCallbacks of this trainer: their metrics and "
                             "checkpoint entries would collide; give them distinct names (name=...)")
        owners = [(f"{type(p).__name__} {p.name!r}", p) for cb in [self] + others for p in cb.programs]
        check_disjoint(owners)

    def on_fit_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        host = self._require()
        host.optimizers = list(trainer.optimizers)
        host.sync = StrategySync(trainer)
        host.trainer = trainer
        for program in self.programs:
            missing = [] if program.finalized else \
                missing_from_optimizers(program.trained_parameters(), host.optimizers)
            if missing:
                if trainer.global_step == 0:  # nothing trained yet: leave the model as it was
                    for p in reversed(self.programs):
                        p.detach()
                    self.host = None
                raise ValueError(
                    f"{type(program).__name__} trains {missing} but no optimizer holds them; build the optimizer "
                    "from self.parameters() in configure_optimizers (the program adds them at setup, before "
                    "configure_optimizers runs)")
        for program in self.programs:
            if not program.finalized:
                program.bind(host)

    def on_train_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        self._require()
        self._seen_step = trainer.global_step  # a new Trainer counts its steps from 0 again; our clock goes on
        for program in self._stepped():
            program.start(self.clock)

    def _stepped(self) -> List[Program]:
        return [p for p in self.programs if p.clock == "optimizer" and not p.finalized]

    def set_task(self, task: str) -> None:
        """Move every program to ``task`` (task-scoped masks, statistics and schedule clocks)."""
        self._require()
        for program in self.programs:
            program.set_task(task, self.clock)

    # -- per optimizer step ---------------------------------------------------------------
    def on_before_optimizer_step(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", optimizer: Any) -> None:
        self._require()
        for program in self._stepped():
            program.before_optimizer_step(optimizer)

    def on_train_batch_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step
        if step <= self._seen_step:  # a gradient-accumulation batch: no optimizer step happened
            return
        self.clock += step - self._seen_step
        self._seen_step = step
        self._require()
        for program in self._stepped():
            program.after_optimizer_step(self.clock)
        self._log(trainer, pl_module)

    def on_train_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        if self.host is None:
            return
        for program in self.programs:
            if program.finalize_at_end and not program.finalized:
                program.finalize()

    # -- reporting ------------------------------------------------------------------------
    def sparsity_report(self) -> Dict[str, float]:
        """``global`` (fraction of pruned parameters over every program) and each program's
        report under ``<program>/<key>``."""
        self._require()
        out = {"global": overall_sparsity(self.programs)}
        for program in self.programs:
            for key, value in report_of(program, self.log_per_target).items():
                out[f"{program.name}/{key}"] = value
        return out

    def _log(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        callbacks = [cb for cb in getattr(trainer, "callbacks", []) if isinstance(cb, SparsityCallback)]
        if callbacks and callbacks[0] is self:  # the overall figure, logged once per trainer
            programs = [p for cb in callbacks if cb.host is not None for p in cb.programs]
            pl_module.log("sparsity/global", overall_sparsity(programs), on_step=True, on_epoch=False,
                          rank_zero_only=True)
        for program in self.programs:
            for key, value in report_of(program, self.log_per_target).items():
                pl_module.log(f"sparsity/{program.name}/{key}", float(value), on_step=True, on_epoch=False,
                              rank_zero_only=True)

    # -- state ----------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        if self.host is None:
            return {"programs": dict(self._pending)} if self._pending else {}
        return {"programs": {p.name: p.state_dict() for p in self.programs}, "seen_step": self._seen_step,
                "clock": self.clock}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        if not state_dict:
            return
        if "programs" not in state_dict:
            raise ValueError(f"not a SparsityCallback state: keys {sorted(state_dict)}")
        states = state_dict["programs"]
        names = {p.name for p in self.programs}
        if set(states) != names:
            raise ValueError(f"the checkpoint holds state for programs {sorted(states)}, this callback runs "
                             f"{sorted(names)}")
        if self.host is None:
            self._pending = {k: dict(v) for k, v in states.items()}
        else:
            for program in self.programs:
                program.load_state_dict(states[program.name])
        self._seen_step = int(state_dict.get("seen_step", -1))
        self.clock = int(state_dict.get("clock", max(self._seen_step, 0)))

    def on_load_checkpoint(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule",
                           checkpoint: Dict[str, Any]) -> None:
        saved = checkpoint.get("callbacks", {})
        if self.state_key not in saved:
            found = sorted(k for k in saved if "SparsityCallback" in k)
            raise ValueError(
                f"resuming, but the checkpoint holds no state for {self.state_key}; found sparsity states "
                f"{found or 'none'}. Its masks would silently start over: configure the callback's programs as "
                "in the run that wrote the checkpoint, or load only the weights "
                "(LightningModule.load_from_checkpoint) to start sparsity afresh")

    def _require(self) -> Host:
        if self.host is None:
            raise RuntimeError("SparsityCallback is not set up: it runs inside Trainer.fit")
        return self.host

    def __repr__(self) -> str:
        return f"SparsityCallback(programs={self.programs!r})"


def report_of(program: Program, detail: bool) -> Dict[str, float]:
    if isinstance(program, MaskProgram):
        return program.report(detail=detail)
    return program.report()


def overall_sparsity(programs: Sequence[Program]) -> float:
    """Fraction of parameters pruned over every program that prunes parameters."""
    removed = total = 0.0
    for program in programs:
        counts = program.removed_params()
        if counts is not None:
            removed += counts[0]
            total += counts[1]
    return removed / total if total else 0.0
