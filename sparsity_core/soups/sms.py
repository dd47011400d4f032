"""Sparse Model Soups: iterative magnitude pruning whose retraining is a soup of retrains.

Zimmer, Spiegel & Pokutta, ICLR 2024, "Sparse Model Soups: A Recipe for Improved Pruning via
Model Averaging". Starting from a trained dense model, phase ``k = 1..P`` of IMP:

1. prune: the core's :class:`~sparsity_core.controller.SparsityController` with the
   :class:`~sparsity_core.schedules.Iterative` schedule (``P`` rounds of one step) prunes the
   model to ``s_k = 1 − (1 − s_f)^(k/P)`` by its criterion (global magnitude by default);
2. retrain ``m`` copies of the pruned model, each under the same mask (a controller with hard
   enforcement holding the phase's masks) and its own configuration (seed, weight decay,
   learning-rate schedule...): ``retrain(model, controller, config)``;
3. average them: a uniform soup, or a greedy soup by held-out score
   (:mod:`~sparsity_core.soups.averaging`); BatchNorm statistics are recalibrated on
   ``calibration`` batches (:func:`~sparsity_core.soups.batchnorm.recalibrate_batchnorm`);
4. the soup is the model the next phase prunes.

The masks are never averaged: every ingredient must come back with the phase's mask
(``ValueError`` otherwise). With one ingredient this is plain IMP (prune, retrain).

    sms = SparseModelSoups(final_sparsity=0.9, phases=3,
                           ingredients=[{"seed": 0}, {"seed": 1, "weight_decay": 1e-4}, {"seed": 2}])
    history = sms.run(model, retrain, evaluate=val_accuracy, calibration=train_batches)

``retrain(model, controller, config)`` gets the ingredient's configuration with the phase
number added (``config["phase"]``) and trains ``model`` in place with any loop that calls
the controller's ``before_optimizer_step(opt)`` and ``after_optimizer_step(step)`` (after
``controller.bind_optimizers([opt])``), as for any :class:`SparsityController`.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Union

from torch import nn

from ..controller import SparsityController
from ..criteria.base import Criterion
from ..discovery import discover_targets
from ..masks import MaskSet
from ..registry import CRITERIA
from ..schedules import Iterative, one_shot
from ..selection import build_component
from ..targets import Target
from ..validation import check_int, check_sparsity
from .averaging import Evaluate, Ingredient, greedy_soup, score_state, uniform_soup
from .batchnorm import recalibrate_batchnorm

Retrain = Callable[[nn.Module, SparsityController, Dict[str, Any]], None]
SOUPS = ("uniform", "greedy")


@dataclass
class SparseModelSoups:
    """IMP with soups of ``len(ingredients)`` retrains per phase (see the module doc).

    Args:
        final_sparsity: sparsity after the last phase (fraction of weights removed).
        phases: number of prune-retrain phases ``P``.
        ingredients: one configuration per retrain (plain dicts handed to ``retrain``).
        soup: ``"uniform"`` or ``"greedy"`` (needs ``evaluate``).
        criterion, allocator: how the pruning step ranks and splits (core names or instances).
        targets: ``targets(model) -> [Target]`` (default: :func:`discover_targets`).
    """

    final_sparsity: float = 0.9
    phases: int = 3
    ingredients: Sequence[Mapping[str, Any]] = ({"seed": 0}, {"seed": 1}, {"seed": 2})
    soup: str = "greedy"
    criterion: Union[str, Criterion] = "magnitude"
    allocator: Any = "global"
    targets: Callable[[nn.Module], List[Target]] = field(default=discover_targets, repr=False)

    def __post_init__(self) -> None:
        self.final_sparsity = check_sparsity(self.final_sparsity, "final_sparsity")
        self.phases = check_int(self.phases, "phases", 1)
        if self.soup not in SOUPS:
            raise ValueError(f"soup must be one of {', '.join(SOUPS)}; got {self.soup!r}")
        if isinstance(self.ingredients, Mapping) or not self.ingredients or \
                not all(isinstance(c, Mapping) for c in self.ingredients):
            raise ValueError(f"ingredients must be a non-empty list of configuration dicts, got {self.ingredients!r}")
        self.ingredients = [dict(c) for c in self.ingredients]
        self.criterion = build_component(CRITERIA, self.criterion, Criterion, "criterion")
        if self.criterion.observes != "never":
            raise ValueError(f"SparseModelSoups prunes between retrains, from the weights alone; criterion "
                             f"{self.criterion!r} observes {self.criterion.observes!r} (use e.g. 'magnitude')")
        self.schedule = Iterative(final_sparsity=self.final_sparsity, rounds=self.phases, steps_per_round=1)
        self.controller: Optional[SparsityController] = None
        #: the ingredients of the last phase run (their states, masks, configurations, scores)
        self.last_ingredients: List[Ingredient] = []

    def sparsity_of_phase(self, phase: int) -> float:
        """``s_k = 1 − (1 − s_f)^(k/P)``: the core's iterative schedule after ``k`` rounds."""
        return self.schedule.value(phase)

    def run(self, model: nn.Module, retrain: Retrain, evaluate: Optional[Evaluate] = None,
            calibration: Optional[Iterable] = None) -> List[Dict[str, Any]]:
        """Run every phase on ``model`` (changed in place: it ends as the last soup).

        ``evaluate(model) -> float`` scores on held-out data (required by the greedy soup;
        otherwise only reported); ``calibration`` batches recalibrate BatchNorm after averaging.
        Returns one record per phase: sparsity, ingredient scores, chosen ingredients, soup score.
        """
        if not callable(retrain):
            raise ValueError(f"retrain must be callable retrain(model, controller, config), got {retrain!r}")
        if self.soup == "greedy" and evaluate is None:
            raise ValueError("the greedy soup needs evaluate(model) -> held-out score")
        calibration = None if calibration is None else list(calibration)
        self.controller = SparsityController(self.targets(model), self.schedule, criterion=self.criterion,
                                             allocator=self.allocator, enforcement="hard", model=model)
        history = []
        for phase in range(1, self.phases + 1):
            self.controller.update(phase)  # prune the previous soup to s_k
            history.append(self._phase(model, phase, retrain, evaluate, calibration))
        return history

    def _phase(self, model: nn.Module, phase: int, retrain: Retrain, evaluate: Optional[Evaluate],
               calibration: Optional[list]) -> Dict[str, Any]:
        sparsity = self.sparsity_of_phase(phase)
        start = copy.deepcopy(model.state_dict())
        ingredients = [self._retrain(model, start, phase, sparsity, config, retrain) for config in self.ingredients]
        self.last_ingredients = ingredients

        def prepare(m: nn.Module) -> None:
            if calibration:
                recalibrate_batchnorm(m, calibration)

        if self.soup == "greedy":
            _, chosen, score = greedy_soup(model, ingredients, evaluate, prepare)
        else:
            if evaluate is not None:
                for ing in ingredients:
                    ing.score = score_state(model, ing.state, evaluate)
            chosen = list(range(len(ingredients)))
            model.load_state_dict(uniform_soup(ingredients))
            if len(ingredients) > 1:
                prepare(model)
            score = None if evaluate is None else float(evaluate(model))
        self.controller.enforcement.apply_masks(self.controller, None)  # the soup keeps the phase's zeros
        return {"phase": phase, "sparsity": sparsity, "measured_sparsity": self.controller.sparsity("units"),
                "ingredient_scores": [ing.score for ing in ingredients], "chosen": chosen, "soup_score": score}

    def _retrain(self, model: nn.Module, start: Dict[str, Any], phase: int, sparsity: float, config: Dict[str, Any],
                 retrain: Retrain) -> Ingredient:
        """Retrain a copy of the pruned model under the phase's masks; the copy's controller
        holds them (hard enforcement; it never recomputes them), and its masks are what the
        ingredient reports."""
        student = copy.deepcopy(model)
        student.load_state_dict(start)
        ctrl = SparsityController(self.targets(student), one_shot(sparsity), enforcement="hard", model=student)
        ctrl.replace_masks(MaskSet(self.controller.masks.state_dict()), step=0, target_sparsity=sparsity, event="soup")
        ctrl.last_update_step, ctrl.current_sparsity = 0, sparsity
        retrain(student, ctrl, {**config, "phase": phase})
        ctrl.enforcement.after_optimizer_step(ctrl)  # pruned weights are zero whatever the loop did last
        state = {k: v.detach().clone() for k, v in student.state_dict().items()}
        return Ingredient(state=state, masks=ctrl.masks.state_dict(), config=dict(config))
