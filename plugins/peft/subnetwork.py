"""Fine-tuning a subnetwork: only the weight entries a mask selects train, the others keep
their pretrained values.

The subnetwork is chosen once, before training, by a core criterion over the model's weight
targets, and allocated by a core allocator (``"global"``: one ranking over every tensor,
default; ``"uniform"``: the same fraction in each):

- ``select="sensitivity"`` (SPT: He et al., 2023, "Sensitivity-Aware Visual
  Parameter-Efficient Fine-Tuning"): ``S = Σ g²`` over calibration batches of the task's loss
  at the pretrained weights (:class:`~sparsity_core.criteria.sensitivity.Sensitivity`); the
  ``trainable`` fraction with the largest ``S`` trains;
- ``select="changed"``: ``|θ_ref − θ|`` against the weights ``reference`` of a previous
  fine-tune (:class:`~sparsity_core.criteria.change.Change`); the entries that moved more than
  ``eps``, or the ``trainable`` fraction that moved most, train (RL fine-tunes touch 5-30% of
  the parameters: Mukherjee et al., 2025);
- any core criterion by name that scores from the weights alone (e.g. ``"magnitude"``).

The mask acts through the core's ``update_mask`` enforcement (gradients masked, frozen entries
restored after every optimizer step), so the weights stay dense and the state-dict keys are the
model's own. The optimizer still holds whole tensors (the memory of full fine-tuning); what
changes is what moves. :func:`~sparsity_core.masks.MaskSet.overlap` compares the subnetworks
chosen with different seeds.

    SparsityCallback(programs=[SubnetworkTuning(trainable=0.05, select="sensitivity", calibration=8)])
    masks = select_subnetwork(model, trainable=0.05, batches=batches, loss_fn=loss_fn)
"""
from __future__ import annotations

import itertools
from typing import Any, Callable, Dict, Iterable, Mapping, Optional, Sequence, Union

import torch
from torch import nn

from sparsity_core.allocators.base import Allocator
from sparsity_core.allocators.budget import Budget
from sparsity_core.criteria import Change, Criterion, GivenScores, ScoreContext, Sensitivity
from sparsity_core.discovery import Patterns, discover_targets
from sparsity_core.mask_program import WeightSparsity
from sparsity_core.masks import MaskSet
from sparsity_core.oneshot import gradient_pass
from sparsity_core.program import Host
from sparsity_core.registry import ALLOCATORS, CRITERIA, PROGRAMS
from sparsity_core.schedules.constant import Constant
from sparsity_core.selection import build_component, score_targets, select_masks
from sparsity_core.targets import Target
from sparsity_core.validation import check_int, check_range

LossFn = Callable[[nn.Module, Any], torch.Tensor]


def check_selection(select: Union[str, Criterion], trainable: Optional[float], eps: Optional[float],
                    reference: Optional[Mapping[str, torch.Tensor]]) -> None:
    """``ValueError`` for a selection that cannot work, before anything runs."""
    if (trainable is None) == (eps is None):
        raise ValueError("give exactly one of trainable= (fraction of entries that train) and eps= (train the "
                         "entries that moved more than eps; select='changed')")
    if trainable is not None:
        check_range(trainable, "trainable", 0.0, 1.0, low_open=True)
    if eps is not None:
        if select != "changed":
            raise ValueError(f"eps= selects by how far entries moved: it needs select='changed', not {select!r}")
        check_range(eps, "eps", 0.0, float("inf"))
    if select == "changed" and not isinstance(reference, Mapping):
        raise ValueError("select='changed' needs reference= (the state dict of the previous fine-tune)")
    if select != "changed" and reference is not None:
        raise ValueError(f"reference= is only read by select='changed', not {select!r}")
    if isinstance(select, str) and select not in ("sensitivity", "changed") and select not in CRITERIA:
        raise ValueError(f"select must be 'sensitivity', 'changed' or a core criterion ({', '.join(CRITERIA.names())}); "
                         f"got {select!r}")


def subnetwork_scores(model: nn.Module, targets: Sequence[Target], select: Union[str, Criterion] = "sensitivity",
                      reference: Optional[Mapping[str, torch.Tensor]] = None, batches: Optional[Iterable] = None,
                      loss_fn: Optional[LossFn] = None) -> Dict[str, torch.Tensor]:
    """Per-unit scores of ``targets`` by ``select`` (higher = train); the weights are not changed."""
    if select == "sensitivity":
        if batches is None or not callable(loss_fn):
            raise ValueError("select='sensitivity' needs calibration batches and loss_fn(model, batch)")
        criterion: Criterion = Sensitivity()
        was_training = model.training
        model.eval()  # no dropout: the sensitivity of the model being tuned
        try:
            gradient_pass(model, targets, criterion, batches, loss_fn)
        finally:
            model.train(was_training)
    elif select == "changed":
        criterion = Change(reference)
    else:
        criterion = build_component(CRITERIA, select, Criterion, "criterion")
        if criterion.observes != "never":
            raise ValueError(f"criterion {criterion!r} observes {criterion.observes!r}; select a subnetwork with "
                             "'sensitivity', 'changed' or a criterion that scores from the weights")
    return score_targets(criterion, targets, ScoreContext())


def trainable_above(scores: Mapping[str, torch.Tensor], eps: float) -> float:
    """Fraction of all units whose score exceeds ``eps``."""
    total = sum(s.numel() for s in scores.values())
    return sum(int((s > eps).sum()) for s in scores.values()) / total if total else 0.0


def select_subnetwork(model: nn.Module, trainable: Optional[float] = None, eps: Optional[float] = None,
                      select: Union[str, Criterion] = "sensitivity",
                      reference: Optional[Mapping[str, torch.Tensor]] = None, batches: Optional[Iterable] = None,
                      loss_fn: Optional[LossFn] = None, allocator: Union[str, Allocator] = "global",
                      include: Patterns = None, exclude: Patterns = None, skip_head: bool = True) -> MaskSet:
    """The subnetwork's masks (``True`` = trains) over the weights of ``model`` (plain-loop API)."""
    check_selection(select, trainable, eps, reference)
    alloc = build_component(ALLOCATORS, allocator, Allocator, "allocator")
    targets = discover_targets(model, include=include, exclude=exclude, skip_head=skip_head)
    scores = subnetwork_scores(model, targets, select, reference, batches, loss_fn)
    fraction = trainable_above(scores, eps) if eps is not None else trainable
    return select_masks(alloc, targets, scores, Budget(sparsity=1.0 - fraction))


def training_step_loss(module: nn.Module, batch: Any) -> torch.Tensor:
    """The loss of a LightningModule's ``training_step`` (a tensor or ``{"loss": ...}``)."""
    out = module.training_step(batch, 0)
    return out["loss"] if isinstance(out, Mapping) else out


@PROGRAMS.register("subnetwork")
class SubnetworkTuning(WeightSparsity):
    """Fine-tune a subnetwork (see the module doc) inside ``SparsityCallback``.

    Args:
        trainable: fraction of the selected weights' entries that train (default 0.05); or
            ``eps`` (with ``select="changed"``): train the entries that moved more than it.
        select: ``"sensitivity"``, ``"changed"`` or a core criterion name / instance.
        reference: ``select="changed"``: the previous fine-tune's state dict (keys as in the
            model the program is attached to, e.g. the LightningModule's).
        calibration: ``select="sensitivity"``: the number of batches of the trainer's train
            dataloader for the gradient pass, or an iterable of batches.
        loss_fn: ``loss_fn(model, batch) -> loss`` for the gradient pass (default: the
            LightningModule's ``training_step`` loss).
        allocator, include, exclude, skip_head, name: as :class:`WeightSparsity`.
    """

    name = "subnetwork"
    summary_keys = ("trainable_fraction",)

    def __init__(self, trainable: Optional[float] = None, eps: Optional[float] = None,
                 select: Union[str, Criterion] = "sensitivity", reference: Optional[Mapping[str, torch.Tensor]] = None,
                 calibration: Union[int, Iterable] = 8, loss_fn: Optional[LossFn] = None,
                 allocator: Union[str, Allocator] = "global", include: Patterns = None, exclude: Patterns = None,
                 skip_head: bool = True, name: Optional[str] = None) -> None:
        if trainable is None and eps is None:
            trainable = 0.05
        check_selection(select, trainable, eps, reference)
        if isinstance(calibration, int):
            check_int(calibration, "calibration", 1)
        if loss_fn is not None and not callable(loss_fn):
            raise ValueError(f"loss_fn must be callable loss_fn(model, batch), got {loss_fn!r}")
        schedule = Constant(start_step=0, end_step=0, sparsity=0.0 if trainable is None else 1.0 - trainable)
        super().__init__(schedule=schedule, criterion=GivenScores(), allocator=allocator, enforcement="update_mask",
                         include=include, exclude=exclude, skip_head=skip_head, name=name)
        self.trainable, self.eps, self.select, self.reference = trainable, eps, select, reference
        self.calibration, self.loss_fn = calibration, loss_fn

    def state_id(self) -> str:
        return f"{super().state_id()} select={self.select!r}"

    def _calibration_batches(self, host: Host) -> Iterable:
        if not isinstance(self.calibration, int):
            return self.calibration
        trainer = host.trainer
        if trainer is None or trainer.train_dataloader is None:
            raise ValueError("calibration=<number of batches> reads the trainer's train dataloader; outside Lightning "
                             "pass calibration=<iterable of batches>")
        move = trainer.strategy.batch_to_device
        return [move(b) for b in itertools.islice(iter(trainer.train_dataloader), self.calibration)]

    def start(self, step: int) -> None:
        ctrl = self.require()
        if ctrl.masks:  # chosen already (a resumed run, a later fit): the subnetwork is fixed
            return
        host = self.host
        batches = self._calibration_batches(host) if self.select == "sensitivity" else None
        loss_fn = self.loss_fn or training_step_loss
        scores = ctrl.all_reduce(subnetwork_scores(host.model, ctrl.targets, self.select, self.reference, batches,
                                                   loss_fn))
        if self.eps is not None:
            self.schedule.sparsity = 1.0 - trainable_above(scores, self.eps)
        self.criterion.set(scores)
        ctrl.update(step, force=True)
        self.criterion.set({})  # the scores served their one update

    def compute_report(self) -> Dict[str, float]:
        return {"trainable_fraction": 1.0 - self.require().report()["global"]}

    def _removed_params(self) -> None:
        return None  # frozen entries keep their values: nothing is removed

    def trained_parameters(self) -> Dict[str, nn.Parameter]:
        ctrl = self.controller
        return {} if ctrl is None else {t.name: t.param for t in ctrl.targets}
