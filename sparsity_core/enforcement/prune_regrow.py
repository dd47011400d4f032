"""Dynamic sparse training at a constant budget: prune-and-regrow.

Every ``every`` optimizer steps until ``end_step``, each target drops the fraction α_t of
its active units with the smallest magnitude and regrows as many pruned units with the
largest regrowth score (random: SET, Mocanu et al., 2018; dense gradient: RigL, Evci et al.,
2020; activation correlation: Hebbian). The drop fraction follows a cosine decay
(RigL):  α_t = α/2 · (1 + cos(π t / end_step)). Regrown weights start at zero with zero
optimizer moments; the number of active units never changes.

With ``redistribute=True`` the drop and the regrowth are ranked globally over all targets
(Dynamic Sparse Learning-style redistribution), so the layer-wise distribution may move
while the total stays constant; each target keeps at least one unit.

A regime part: alone it runs on hard masks (pruned weights, gradients and moments are zero
between updates); ``Regime(StraightThrough(), PruneRegrow(...))`` regrows under
straight-through training. New masks are asked for through the controller's
``replace_masks`` (broadcast from rank 0, history); gradient statistics are averaged over
ranks before regrowth, so every DDP rank regrows the same weights.
"""
from __future__ import annotations

import math
from typing import Dict, Optional

import torch

from ..layouts import NM, top_k_mask
from ..masks import MaskSet
from ..registry import ENFORCEMENTS
from .base import weight_targets
from .regime import RegimePart
from .regrowth import REGROWTH, HebbianRecorder

DECAYS = ("cosine", "constant")


@ENFORCEMENTS.register("prune_regrow")
class PruneRegrow(RegimePart):
    name = "prune_regrow"

    def __init__(self, regrow: str = "gradient", every: int = 100, drop_fraction: float = 0.3,
                 end_step: Optional[int] = None, decay: str = "cosine", redistribute: bool = False) -> None:
        if regrow not in REGROWTH:
            raise ValueError(f"regrow must be one of {', '.join(REGROWTH)}; got {regrow!r}")
        if not (isinstance(every, int) and every >= 1):
            raise ValueError(f"every must be an int >= 1, got {every!r}")
        if not 0.0 < drop_fraction < 1.0:
            raise ValueError(f"drop_fraction must be in (0, 1), got {drop_fraction!r}")
        if end_step is not None and not (isinstance(end_step, int) and end_step >= every):
            raise ValueError(f"end_step must be an int >= every ({every}), got {end_step!r}")
        if decay not in DECAYS:
            raise ValueError(f"decay must be one of {', '.join(DECAYS)}; got {decay!r}")
        if decay == "cosine" and end_step is None:
            raise ValueError("a cosine-decayed drop fraction needs end_step")
        self.regrow, self.every, self.drop_fraction = regrow, every, float(drop_fraction)
        self.end_step, self.decay, self.redistribute = end_step, decay, bool(redistribute)
        self._grad_scores: Dict[str, torch.Tensor] = {}
        self._hebbian = HebbianRecorder()

    # -- configuration checks -------------------------------------------------------------
    def attach(self, regime, ctrl) -> None:
        for t in ctrl.targets:
            if t.param is None:
                raise ValueError(f"prune-and-regrow needs weight targets; {t.name!r} has no parameter")
            if isinstance(t.layout, NM):
                raise ValueError(f"prune-and-regrow cannot move units of the fixed N:M pattern of {t.name!r}")
            if self.regrow == "gradient" and not t.param.requires_grad:
                raise ValueError(f"regrowth by gradient needs gradients, but {t.name!r} does not require grad")
        if self.regrow == "hebbian":
            if ctrl.model is None:
                raise ValueError("hebbian regrowth records activations: pass the controller's model=")
            modules = dict(ctrl.model.named_modules())
            for t in ctrl.targets:
                mod = modules.get(t.module_name)
                if mod is None or not hasattr(mod, "weight") or mod.weight is not t.param:
                    raise ValueError(f"hebbian regrowth needs {t.name!r} to be the 'weight' of a Linear/Conv module")
                if not isinstance(mod, (torch.nn.Linear, torch.nn.modules.conv._ConvNd)):
                    raise ValueError(f"hebbian regrowth supports Linear and Conv layers; {t.module_name!r} is "
                                     f"{type(mod).__name__}")
            self._hebbian.attach({t.module_name: modules[t.module_name] for t in ctrl.targets})

    # -- cadence --------------------------------------------------------------------------
    def is_regrow_step(self, step: int) -> bool:
        return step > 0 and step % self.every == 0 and (self.end_step is None or step <= self.end_step)

    def drop_fraction_at(self, step: int) -> float:
        if self.decay == "constant":
            return self.drop_fraction
        return self.drop_fraction / 2.0 * (1.0 + math.cos(math.pi * min(step, self.end_step) / self.end_step))

    def bind(self, regime, ctrl) -> None:
        self._hebbian.armed = self.regrow == "hebbian" and self.is_regrow_step(max(ctrl.step, 0) + 1)

    # -- hooks ----------------------------------------------------------------------------
    @torch.no_grad()
    def observe_gradients(self, regime, ctrl, optimizer) -> None:
        upcoming = max(ctrl.step, 0) + 1
        if self.regrow == "gradient" and self.is_regrow_step(upcoming):
            for t in weight_targets(ctrl, optimizer):  # the dense gradient, before masking
                if t.param.grad is not None:
                    self._grad_scores[t.name] = t.layout.reduce_sum(t.param.grad.abs().float())

    def after_optimizer_step(self, regime, ctrl) -> None:
        step = ctrl.step
        if ctrl.masks and self.is_regrow_step(step) and step != ctrl.last_update_step:
            ctrl.replace_masks(self.prune_and_regrow(ctrl, step), step, event="prune_regrow")
        self._grad_scores.clear()
        self._hebbian.reset()
        self._hebbian.armed = self.regrow == "hebbian" and self.is_regrow_step(step + 1)

    # -- the update -----------------------------------------------------------------------
    def regrowth_scores(self, ctrl) -> Dict[str, torch.Tensor]:
        scores = {}
        for t in ctrl.targets:
            if self.regrow == "random":
                scores[t.name] = torch.rand(t.num_units, generator=ctrl.generator)
            elif self.regrow == "gradient":
                if t.name not in self._grad_scores:
                    raise ValueError(f"no gradient was captured for {t.name!r} on this update step")
                scores[t.name] = self._grad_scores[t.name].reshape(-1).cpu()
            else:
                stat = self._hebbian.take(t.module_name)
                if stat is None:
                    raise ValueError(f"no activations were recorded for {t.module_name!r} on this update step")
                scores[t.name] = t.layout.reduce_sum(stat).reshape(-1).cpu()
        return ctrl.all_reduce(scores) if self.regrow != "random" else scores

    def prune_and_regrow(self, ctrl, step: int) -> MaskSet:
        alpha = self.drop_fraction_at(step)
        grow = self.regrowth_scores(ctrl)
        magnitude = {t.name: t.layout.reduce_sum(ctrl.enforcement.dense_weight(t).abs().float()).reshape(-1).cpu()
                     for t in ctrl.targets}
        masks = {t.name: ctrl.masks[t.name].reshape(-1).cpu() for t in ctrl.targets}
        if self.redistribute:
            new = _global_swap(ctrl.targets, masks, magnitude, grow, alpha)
        else:
            new = {t.name: _swap(masks[t.name], magnitude[t.name], grow[t.name], alpha) for t in ctrl.targets}
        return MaskSet({t.name: new[t.name].reshape(t.mask_shape) for t in ctrl.targets})

    def __repr__(self) -> str:
        return (f"PruneRegrow(regrow={self.regrow!r}, every={self.every}, drop_fraction={self.drop_fraction}, "
                f"end_step={self.end_step}, decay={self.decay!r}, redistribute={self.redistribute})")


@ENFORCEMENTS.register("set")
def sparse_evolutionary_training(**kwargs) -> PruneRegrow:
    """SET: random regrowth (Mocanu et al., 2018)."""
    return PruneRegrow(regrow="random", **kwargs)


@ENFORCEMENTS.register("rigl")
def rigged_lottery(**kwargs) -> PruneRegrow:
    """RigL: regrowth by dense-gradient magnitude (Evci et al., 2020)."""
    return PruneRegrow(regrow="gradient", **kwargs)


@ENFORCEMENTS.register("hebbian")
def hebbian_regrowth(**kwargs) -> PruneRegrow:
    """Regrowth by input/output activation correlation."""
    return PruneRegrow(regrow="hebbian", **kwargs)


def _swap(mask: torch.Tensor, magnitude: torch.Tensor, grow: torch.Tensor, alpha: float) -> torch.Tensor:
    """Drop ⌊α·active⌋ smallest active units, regrow as many best-scoring inactive ones."""
    active = int(mask.sum())
    n = min(int(alpha * active), int((~mask).sum()), max(active - 1, 0))
    if n == 0:
        return mask.clone()
    keep_scores = torch.where(mask, magnitude, torch.full_like(magnitude, float("inf")))
    dropped = top_k_mask(-keep_scores, n)  # the n smallest among active
    after_drop = mask & ~dropped
    grow_scores = torch.where(after_drop, torch.full_like(grow, float("-inf")), grow)
    grown = top_k_mask(grow_scores, n)  # just-dropped units are candidates too, as in RigL
    return after_drop | grown


def _global_swap(targets, masks, magnitude, grow, alpha) -> Dict[str, torch.Tensor]:
    names = [t.name for t in targets]
    sizes = [masks[n].numel() for n in names]
    mask = torch.cat([masks[n] for n in names])
    mag = torch.cat([magnitude[n] for n in names])
    grw = torch.cat([grow[n] for n in names])
    # each target's largest active unit is protected, so no target empties
    protected = torch.zeros_like(mask)
    offset = 0
    for size, name in zip(sizes, names):
        local = torch.where(masks[name], magnitude[name], torch.full_like(magnitude[name], float("-inf")))
        if bool(masks[name].any()):
            protected[offset + int(torch.argmax(local))] = True
        offset += size
    mag = torch.where(protected, torch.full_like(mag, float("inf")), mag)
    new = _swap(mask, mag, grw, alpha)
    return dict(zip(names, torch.split(new, sizes)))
