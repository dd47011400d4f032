"""Mask programs: the core controller as a :class:`~sparsity_core.program.Program`.

:class:`MaskProgram` holds the configuration every masking method shares (schedule,
criterion, allocator, enforcement, update interval, budget measure, finalize) and, at
``attach``, asks its subclass for the targets and builds a
:class:`~sparsity_core.controller.SparsityController` over them. Subclasses only say what
the units are (:meth:`MaskProgram.discover`) and, if needed, which allocator fits them
(:meth:`MaskProgram.make_allocator`) and what finalizing means. :class:`WeightSparsity`
is the core's own: the weights of a model, found by :func:`~sparsity_core.discovery.discover_targets`.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple, Union

from .allocators.base import Allocator
from .allocators.budget import MEASURES
from .controller import SparsityController
from .criteria.base import Criterion
from .discovery import Patterns, as_patterns, discover_targets
from .enforcement.base import Enforcement
from .enforcement.regime import RegimePart, build_enforcement
from .layouts import UnitLayout, parse_layout
from .observe import ActivationObserver
from .program import Host, Program, attached
from .registry import ALLOCATORS, CRITERIA, PROGRAMS
from .schedules.base import Schedule
from .schedules.function import as_schedule
from .selection import build_component
from .targets import Target
from .validation import check_int

ScheduleSpec = Union[Schedule, float, Callable[[int], float]]


class MaskProgram(Program):
    """Masks over targets that a subclass discovers, recomputed by the core controller.

    Args:
        schedule: a :class:`Schedule`, a float (one-shot at ``start_at``) or a callable
            ``step -> sparsity``; the sparsity is the fraction of ``measure`` removed.
        criterion, allocator, enforcement: a registered name or an instance.
        update_every: recompute masks every this many optimizer steps within the schedule.
        measure: what the sparsity counts: ``"units"``, ``"params"`` or ``"macs"``.
        finalize: make the sparsity permanent at the end of fit.
        name: key of the program's state and metrics.
    """

    name = "masks"
    #: report keys logged every step (``detail`` adds every target's sparsity)
    summary_keys = ("global", "mask_change")

    def __init__(self, schedule: ScheduleSpec = 0.5, criterion: Union[str, Criterion] = "magnitude",
                 allocator: Union[str, Allocator] = "global",
                 enforcement: Union[str, Enforcement, RegimePart] = "hard", update_every: int = 100,
                 measure: str = "units", finalize: bool = False, name: Optional[str] = None,
                 start_at: int = 0) -> None:
        self.schedule = as_schedule(schedule, at_step=start_at)
        self.criterion = build_component(CRITERIA, criterion, Criterion, "criterion")
        self.allocator = build_component(ALLOCATORS, allocator, Allocator, "allocator")
        self.enforcement = build_enforcement(enforcement)
        self.update_every = check_int(update_every, "update_every", minimum=1)
        if measure not in MEASURES:
            raise ValueError(f"measure must be one of {', '.join(MEASURES)}; got {measure!r}")
        self.measure = measure
        self.finalize_at_end = bool(finalize)
        if name is not None:
            self.name = name
        self.controller: Optional[SparsityController] = None
        self.host: Optional[Host] = None

    # -- what subclasses say --------------------------------------------------------------
    def discover(self, host: Host) -> List[Target]:
        raise NotImplementedError

    def make_allocator(self, targets: List[Target]) -> Allocator:
        return self.allocator

    # -- the program protocol -------------------------------------------------------------
    def attach(self, host: Host) -> None:
        if self.controller is not None:
            if self.controller.model is not host.model:
                raise ValueError(f"program {self.name!r} already holds the masks of another model; "
                                 "use one program per model")
            self.host = host
            return
        targets = self.discover(host)
        self.controller = SparsityController(
            targets, schedule=self.schedule, criterion=self.criterion, allocator=self.make_allocator(targets),
            enforcement=self.enforcement, update_every=self.update_every, measure=self.measure, model=host.model)
        allocator = self.controller.allocator
        wants = getattr(allocator, "uses_activations", False) and getattr(allocator, "activations", None) is None
        if self.criterion.uses_activations or wants:  # e.g. wanda, OWL while training: observe the forwards
            observer = ActivationObserver(host.model, targets)
            observer.install()
            self.controller.activations = observer
            if wants:  # the program's allocator reads the statistics since the last update
                allocator.activations = observer
        self.host = host

    def bind(self, host: Host) -> None:
        ctrl = self.require()
        self.host = host
        ctrl.bind_optimizers(host.optimizers)
        ctrl.sync = host.sync
        ctrl.to_devices()

    def start(self, step: int) -> None:
        self.require().update(step)

    def before_optimizer_step(self, optimizer) -> None:
        self.require().before_optimizer_step(optimizer)

    def after_optimizer_step(self, step: int) -> None:
        self.require().after_optimizer_step(step)

    def set_task(self, task: str, step: int) -> None:
        self.require().set_task(task, step)

    def report(self, detail: bool = False) -> Dict[str, float]:
        """``global`` sparsity (and, with ``detail``, every target's), ``mask_change`` after a
        mask update (the fraction of units whose state flipped)."""
        out = self._cached("report", lambda: self.compute_report())
        if detail:
            return dict(out)
        return {k: v for k, v in out.items() if k in self.summary_keys}

    def sparsity_report(self) -> Dict[str, float]:
        """``global`` and every target's sparsity."""
        return self.report(detail=True)

    def compute_report(self) -> Dict[str, float]:
        ctrl = self.require()
        out = ctrl.report()
        if ctrl.history and "changed" in ctrl.history[-1]:
            out["mask_change"] = ctrl.history[-1]["changed"]
        return out

    def removed_params(self) -> Optional[Tuple[float, float]]:
        return self._cached("removed", self._removed_params)

    def _removed_params(self) -> Optional[Tuple[float, float]]:
        """``(removed, total)`` parameters (subclasses with their own cost model override this;
        :meth:`removed_params` caches it until the masks change)."""
        ctrl = self.require()
        targets = [t for t in ctrl.targets if t.param is not None]
        if not targets:
            return None
        total = sum(t.params_per_unit * t.num_units for t in targets)
        removed = total * ctrl.masks.weighted_sparsity(targets, "params") if ctrl.masks else 0.0
        return removed, total

    def _cached(self, what: str, compute):
        """Reports change only with the masks: recompute them after an update, not every step."""
        ctrl = self.require()
        key = (what, len(ctrl.history), ctrl.finalized, id(ctrl.masks))
        cache = self.__dict__.setdefault("_report_cache", {})
        if cache.get(what, (None,))[0] != key:
            cache[what] = (key, compute())
        return cache[what][1]

    def masked_tensors(self) -> Dict[int, str]:
        ctrl = self.controller
        return {} if ctrl is None else {id(t.param): t.name for t in ctrl.targets if t.param is not None}

    def finalize(self) -> None:
        self.require().finalize()

    @property
    def finalized(self) -> bool:
        return self.controller is not None and self.controller.finalized

    def detach(self) -> None:
        observer = self.observer
        if observer is not None:
            observer.remove()
        self.controller = None
        self.host = None

    @property
    def observer(self) -> Optional[ActivationObserver]:
        """The observer of training forwards (criteria that read activations), or ``None``."""
        acts = None if self.controller is None else self.controller.activations
        return acts if isinstance(acts, ActivationObserver) else None

    def state_dict(self) -> Dict[str, Any]:
        state: Dict[str, Any] = {"controller": self.require().state_dict()}
        if self.observer is not None:
            state["activations"] = self.observer.state_dict()
        return state

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if "controller" not in state or (self.observer is not None) != ("activations" in state):
            raise ValueError(f"not a {type(self).__name__} state for this configuration: keys {sorted(state)}")
        self.require().load_state_dict(state["controller"])
        if self.observer is not None:
            self.observer.load_state_dict(state["activations"])

    def require(self) -> SparsityController:
        return attached(self.controller, type(self).__name__)

    @property
    def masks(self):
        return self.require().masks


@PROGRAMS.register("weights")
class WeightSparsity(MaskProgram):
    """Sparsity of a model's weights (the core's program).

    Args (besides :class:`MaskProgram`'s):
        layout: unit layout of every target: ``"element"``, ``"2:4"`` (N:M), ``"channel"``...
        include, exclude: regular expressions searched in module names.
        skip_head: leave the classifier head dense (default); ``False`` prunes it too.
    """

    name = "weights"

    def __init__(self, schedule: ScheduleSpec = 0.5, criterion: Union[str, Criterion] = "magnitude",
                 allocator: Union[str, Allocator] = "global",
                 enforcement: Union[str, Enforcement, RegimePart] = "hard", layout: Union[str, UnitLayout] = "element", include: Patterns = None, exclude: Patterns = None,
                 skip_head: bool = True, update_every: int = 100, measure: str = "units", finalize: bool = False,
                 name: Optional[str] = None) -> None:
        super().__init__(schedule=schedule, criterion=criterion, allocator=allocator, enforcement=enforcement,
                         update_every=update_every, measure=measure, finalize=finalize, name=name)
        self.layout = parse_layout(layout)
        as_patterns(include, "include"), as_patterns(exclude, "exclude")
        self.include, self.exclude = include, exclude
        self.skip_head = bool(skip_head)

    def state_id(self) -> str:
        return (f"{self.name}(layout={self.layout!r}, include={self.include!r}, exclude={self.exclude!r}, "
                f"skip_head={self.skip_head})")

    def discover(self, host: Host) -> List[Target]:
        example = host.example_input if self.measure == "macs" else None
        if self.measure == "macs" and example is None:
            raise ValueError("measure='macs' needs an example input (pl_module.example_input_array) to count MACs")
        return discover_targets(host.model, include=self.include, exclude=self.exclude, layout=self.layout,
                                skip_head=self.skip_head, example_input=example)

    def __repr__(self) -> str:
        return (f"WeightSparsity(schedule={self.schedule!r}, criterion={self.criterion!r}, "
                f"allocator={self.allocator!r}, enforcement={self.enforcement!r}, layout={self.layout!r}, "
                f"include={self.include!r}, exclude={self.exclude!r}, skip_head={self.skip_head}, "
                f"update_every={self.update_every}, measure={self.measure!r}, name={self.name!r})")
