"""``"cts"``: Concrete Ticket Search as a program of the Lightning callback (or a plain loop).

At training start (step 0, the initialization), the program learns mask logits with
:func:`~sparsity_core.tickets.search.concrete_ticket_search` on the training batches, then
its controller prunes once: criterion :class:`~sparsity_core.tickets.concrete.ConcreteScores`
(the learned logits), the ``global`` allocator at exactly ``sparsity``, hard enforcement for
the rest of training (the ticket is trained from the initialization, weights untouched by
the search). The logits are the criterion's state, so a resumed run neither searches again
nor changes the mask.

    SparsityCallback(programs=[{"program": "cts", "sparsity": 0.95, "steps": 300}])
"""
from __future__ import annotations

from typing import Any, Iterable, Optional, Tuple

from ..discovery import Patterns
from ..mask_program import WeightSparsity
from ..registry import PROGRAMS
from ..schedules import one_shot
from ..validation import check_int, check_positive, check_range, check_sparsity
from .concrete import ConcreteScores, check_stretch
from .gradbalance import GradBalance
from .search import OBJECTIVES, concrete_ticket_search


@PROGRAMS.register("cts")
class ConcreteTicketSearch(WeightSparsity):
    """Prune the weights at initialization to ``sparsity`` with a mask found by CTS.

    Args (besides :class:`~sparsity_core.mask_program.WeightSparsity`'s layout, include,
    exclude, skip_head, measure, finalize, name):
        sparsity: fraction of the weights removed.
        steps, lr, temperature, objective, init_density, stretch, seed: the search's settings
            (:func:`~sparsity_core.tickets.search.concrete_ticket_search`).
        gain, tolerance: :class:`~sparsity_core.tickets.gradbalance.GradBalance`'s settings.
        batches: batches to search on; default: the trainer's training dataloader.
    """

    name = "cts"

    def __init__(self, sparsity: float = 0.9, steps: int = 200, lr: float = 0.1, temperature: float = 2 / 3,
                 objective: str = "reverse_kl", init_density: Optional[float] = 0.5,
                 stretch: Optional[Tuple[float, float]] = None, gain: float = 2.0, tolerance: float = 0.05,
                 seed: int = 0, batches: Optional[Iterable] = None, layout: Any = "element", include: Patterns = None,
                 exclude: Patterns = None, skip_head: bool = True, measure: str = "units", finalize: bool = False,
                 name: Optional[str] = None) -> None:
        self.sparsity = check_sparsity(sparsity)
        self.steps = check_int(steps, "steps", 1)
        self.lr, self.temperature = check_positive(lr, "lr"), check_positive(temperature, "temperature")
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}; got {objective!r}")
        if measure not in ("units", "params"):
            raise ValueError(f"CTS counts its density in 'units' or 'params'; got measure={measure!r}")
        if init_density is not None:
            init_density = check_range(init_density, "init_density", 0, 1, low_open=True, high_open=True)
        self.objective, self.init_density, self.stretch = objective, init_density, check_stretch(stretch)
        self.balance = GradBalance(gain=gain, tolerance=tolerance)
        self.seed = check_int(seed, "seed")
        self.batches = batches
        super().__init__(schedule=one_shot(self.sparsity), criterion=ConcreteScores(), allocator="global",
                         enforcement="hard", layout=layout, include=include, exclude=exclude, skip_head=skip_head,
                         measure=measure, finalize=finalize, name=name)

    def start(self, step: int) -> None:
        ctrl = self.require()
        if not self.criterion.logits and ctrl.is_update_step(step):  # a fresh run: search, then prune
            found = concrete_ticket_search(
                self.host.model, ctrl.targets, self._batches(), self.sparsity, steps=self.steps, lr=self.lr,
                temperature=self.temperature, objective=self.objective, balance=self.balance,
                init_density=self.init_density, stretch=self.stretch, measure=self.measure, seed=self.seed)
            self.criterion.logits = found.logits
        super().start(step)

    def _batches(self) -> Iterable:
        if self.batches is not None:
            return self.batches
        trainer = getattr(self.host, "trainer", None)
        loader = getattr(trainer, "train_dataloader", None) if trainer is not None else None
        if loader is None and getattr(self.host, "datamodule", None) is not None:
            loader = self.host.datamodule.train_dataloader()
        if loader is None:
            raise ValueError("the 'cts' program needs batches=... or a trainer/datamodule with a training dataloader")
        return loader

    def state_id(self) -> str:
        return f"{super().state_id()}[cts sparsity={self.sparsity}, objective={self.objective}]"

    def __repr__(self) -> str:
        return (f"ConcreteTicketSearch(sparsity={self.sparsity}, steps={self.steps}, lr={self.lr}, "
                f"temperature={self.temperature}, objective={self.objective!r}, layout={self.layout!r}, "
                f"name={self.name!r})")
