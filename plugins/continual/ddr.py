"""SparCL's dynamic data removal, DDR (Wang et al., NeurIPS 2022), as a core mask program over
a parameter-free target: the current task's training examples, ``Target("examples",
shape=(n,))``.

Criterion :class:`ForgettingEvents` (Toneva et al., 2019, "An Empirical Study of Example
Forgetting during Deep Neural Network Learning"): at every presentation of example e the
module reports whether it was classified correctly; a forgetting event is a presentation
that is wrong after one that was right. The score of e is its event count plus ½ when its last
presentation was wrong (or it was never presented), so among equally-forgotten examples the
ones not yet learned stay. Higher = keep: the least-forgotten (easiest) examples go first, and
an example forgotten more often than a kept one is never removed (scores are integers plus
at most ½; ties go to the earlier position).

Schedule: the core's ``Iterative`` over each task's own clock, ``rounds`` removals ``every``
steps apart reaching ``fraction`` of the task's examples (1 − (1 − fraction)^(r/R) after round
r). Enforcement ``"masks"``: the program does not touch a tensor; the data module's sampler
reads the mask (:attr:`TaskStream.example_filter`) at the start of each epoch, so removed
examples are no longer drawn. A new task of the stream starts a new task scope (no removal,
counts from zero), the target resized to the task's size.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

import torch

from sparsity_core.criteria.base import Criterion, ScoreContext
from sparsity_core.mask_program import MaskProgram
from sparsity_core.program import Host
from sparsity_core.registry import PROGRAMS
from sparsity_core.schedules.iterative import Iterative
from sparsity_core.targets import Target
from sparsity_core.validation import check_int, check_range

from .stream import stream_task


class ForgettingEvents(Criterion):
    """Forgetting-event counts per example (see the module). The program hands it each
    step's ``(positions, correct)`` as ``pending``; counts last the whole task (``reset``
    after a mask update keeps them; :meth:`clear` starts over)."""

    observes = "step"

    def __init__(self) -> None:
        self.last: Optional[torch.Tensor] = None  # int8: -1 never presented, 0 wrong, 1 right
        self.events: Optional[torch.Tensor] = None
        self.pending: Optional[tuple] = None

    def _ensure(self, n: int) -> None:
        if self.events is None or self.events.numel() != n:
            self.last = torch.full((n,), -1, dtype=torch.int8)
            self.events = torch.zeros(n, dtype=torch.long)

    def observe(self, target: Target, context: ScoreContext) -> None:
        pending, self.pending = self.pending, None
        if pending is None:
            return
        self._ensure(target.num_units)
        pos, correct = pending[0].reshape(-1).long().cpu(), pending[1].reshape(-1).bool().cpu()
        before = self.last[pos]
        self.events.index_add_(0, pos, ((before == 1) & ~correct).long())
        self.last[pos] = correct.to(torch.int8)

    def score(self, target: Target, context: ScoreContext) -> torch.Tensor:
        self._ensure(target.num_units)
        return self.events.float() + 0.5 * (self.last != 1).float()

    def reset(self) -> None:
        """Counts are kept across mask updates (they are the task's history)."""

    def clear(self) -> None:
        self.last = self.events = None
        self.pending = None

    def state_dict(self) -> Dict[str, object]:
        return {} if self.events is None else {"last": self.last.clone(), "events": self.events.clone()}

    def load_state_dict(self, state: Dict[str, object]) -> None:
        if not state:
            self.last = self.events = None
            return
        if set(state) != {"last", "events"} or state["last"].shape != state["events"].shape:
            raise ValueError(f"not a ForgettingEvents state: keys {sorted(state)}")
        self.last, self.events = state["last"].clone().to(torch.int8), state["events"].clone().long()

    def __repr__(self) -> str:
        return "ForgettingEvents()"


@PROGRAMS.register("sparcl_ddr")
class DynamicDataRemoval(MaskProgram):
    """Args: ``fraction`` of each task's examples removed in the end (SparCL: 0.3),
    ``every`` optimizer steps between removals, ``rounds`` removals (SparCL: every 5 epochs
    until epoch 20, i.e. 4). Needs the fit's data module to be a :class:`~.datamodule.TaskStream`
    and the module to set ``presented`` (:class:`~.module.ContinualModule` does)."""

    name = "ddr"

    def __init__(self, fraction: float = 0.3, every: int = 100, rounds: int = 4, name: Optional[str] = None) -> None:
        fraction = check_range(fraction, "fraction of examples removed", 0.0, 1.0, low_open=True, high_open=True)
        every, rounds = check_int(every, "every", 1), check_int(rounds, "rounds", 1)
        super().__init__(schedule=Iterative(final_sparsity=fraction, rounds=rounds, steps_per_round=every),
                         criterion=ForgettingEvents(), allocator="global", enforcement="masks", update_every=every,
                         name=name)
        self.fraction, self.every, self.rounds = fraction, every, rounds
        self.stream: Any = None
        self.target: Optional[Target] = None
        self.task_index = 0

    def state_id(self) -> str:
        return f"{self.name}(fraction={self.fraction}, every={self.every}, rounds={self.rounds})"

    def discover(self, host: Host) -> List[Target]:
        dm = host.datamodule
        if not (hasattr(dm, "train_size") and hasattr(dm, "example_filter")):
            raise ValueError("dynamic data removal changes what the loader yields: the fit needs a TaskStream "
                             f"datamodule, got {type(dm).__name__}")
        if not hasattr(host.model, "presented"):
            raise ValueError(f"dynamic data removal counts forgetting events from the module's `presented` "
                             f"(positions, correct) of each step; {type(host.model).__name__} has none "
                             "(ContinualModule sets it)")
        self.stream, self.task_index = dm, int(dm.task)
        self.target = Target("examples", shape=(dm.train_size(),))
        return [self.target]

    def attach(self, host: Host) -> None:
        super().attach(host)
        self.stream = host.datamodule
        self.stream.example_filter = self.kept

    def kept(self, task: int) -> Optional[torch.Tensor]:
        """The kept-examples mask of ``task`` (``None``: nothing removed)."""
        ctrl = self.controller
        if ctrl is None or task != self.task_index or "examples" not in ctrl.masks:
            return None
        return ctrl.masks["examples"]

    def _follow(self, step: int) -> None:
        task = stream_task(self.host)
        if task is None or task == self.task_index:
            return
        ctrl = self.require()
        self.target.resize(self.stream.train_size(task))
        ctrl.set_task(f"task{task}", step)
        self.criterion.clear()
        self.task_index = task

    def start(self, step: int) -> None:
        self._follow(step)
        super().start(step)

    def set_task(self, task: str, step: int) -> None:
        """The stream moved on within a fit: follow its data module's task."""
        self._follow(step)

    def before_optimizer_step(self, optimizer) -> None:
        self.criterion.pending = getattr(self.require().model, "presented", None)
        super().before_optimizer_step(optimizer)

    def removed_params(self):
        return None  # examples are not parameters

    def compute_report(self) -> Dict[str, float]:
        ctrl = self.require()
        return {"global": ctrl.sparsity("units"), "kept": float(self.target.num_units * (1 - ctrl.sparsity("units")))}

    def state_dict(self) -> Dict[str, Any]:
        return {**super().state_dict(), "task": self.task_index, "size": self.target.num_units}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if "task" not in state or "size" not in state:
            raise ValueError(f"not a DynamicDataRemoval state: keys {sorted(state)}")
        old = self.target.num_units
        self.target.resize(int(state["size"]))
        try:
            super().load_state_dict({k: v for k, v in state.items() if k not in ("task", "size")})
        except Exception:
            self.target.resize(old)
            raise
        self.task_index = int(state["task"])
