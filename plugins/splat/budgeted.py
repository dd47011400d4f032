"""``BudgetedStrategy``: Gaussian densification to an exact budget, as a gsplat ``Strategy``.

Taming 3DGS (Mallick et al., 2024, "Taming 3DGS: High-Quality Radiance Fields with Limited
Resources"): instead of densifying every Gaussian whose image-plane gradient is high (3DGS;
Kerbl et al., 2023), the number of Gaussians follows a concave curve from the initial count
``S`` to the budget ``B`` (:class:`sparsity_core.schedules.GrowthToBudget`, read through its
``count(step)``). The curve ends on the last step on which refinement actually happens
(:attr:`BudgetedStrategy.last_refine_step`, before ``refine_stop_iter``): ending it at
``refine_stop_iter`` itself would leave the last refinement short of ``B``. At each
refinement step:

1. prune: Gaussians with σ(opacity) < ``prune_opa`` (and, after the first opacity reset,
   those larger than ``prune_scale3d``·scene scale) go; with ``prune_fraction`` > 0 a further
   fraction is drawn without replacement with probability ∝ 1/score (partial score-sampled
   pruning: room for better-placed Gaussians);
2. grow: the candidates are 3DGS's (mean image-plane gradient > ``grow_grad2d``); the
   allowance is ``count(step) − N``; if there are more candidates than the allowance, it is
   filled by ``multinomial`` sampling over their scores (:mod:`.scores`: gradient, opacity,
   depth, coverage, volume, blend weight, loss-weighted hits, median-normalised). Small
   chosen Gaussians are cloned, large ones split (each adds exactly one Gaussian), so the
   allowance splits between clone and split in proportion to what was chosen;
3. every ``reset_every`` steps the opacities are clamped to ``2·prune_opa`` (our own reset:
   gsplat 1.5.3's condition ``step % reset_every == 0 & step > 0`` is always False, see
   nerfstudio-project/gsplat#776).

The count never exceeds ``B``: growth is capped by the schedule and the schedule by ``B``.

Turbo-GS option (``mode="turbo"``; Lu et al., 2024, "Turbo-GS: Accelerating 3D Gaussian
Fitting for High-Quality Radiance Fields"): growth is convergence-aware: the growth progress
advances by one refinement interval scaled by ``turbo_fast`` while the training loss (passed
as ``loss=`` to :meth:`step_post_backward`) has plateaued (relative improvement of its
moving average below ``plateau_tol`` since the last refinement) and by ``turbo_slow`` while it
still falls; candidates also include Gaussians whose loss-weighted hits (appearance error) are
above ``appearance_quantile`` of all Gaussians, besides the gradient (position error) ones.

All per-Gaussian running statistics live in ``state`` as tensors, so gsplat's
``strategy.ops`` (``duplicate``, ``split``, ``remove``) keep them aligned with the
parameters and the optimizer moments.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Union

import torch
from torch import Tensor

from sparsity_core.ranks import log_rank_zero
from sparsity_core.schedules.growth import GrowthToBudget
from sparsity_core.validation import check_int, check_nonnegative, check_positive, check_range

from ._deps import gsplat
from .scores import DEFAULT_WEIGHTS, check_weights, importance

log = logging.getLogger(__name__)
Strategy = gsplat("strategy").Strategy
_ops = gsplat("strategy.ops")

# Per-Gaussian statistics a renderer may return in ``info`` (shape [C, N]), and the prior each feeds.
INFO_STATS = {"hits": "coverage", "sum_weight": "blend", "loss_hits": "loss"}
# Where the image-plane gradient lives in ``info``: 3DGS rasterization, 2DGS rasterization.
GRADIENT_KEYS = ("means2d", "gradient_2dgs")


@dataclass
class BudgetedStrategy(Strategy):
    """Densify to exactly ``budget`` Gaussians (see the module docstring).

    Same calling convention as gsplat's ``DefaultStrategy``: ``check_sanity(params,
    optimizers)``, ``state = initialize_state(scene_scale)``, then per step
    ``step_pre_backward(params, optimizers, state, step, info)`` before ``loss.backward()``
    and ``step_post_backward(params, optimizers, state, step, info, loss=...)`` after it.
    """

    budget: int = 100_000
    refine_start_iter: int = 500
    refine_stop_iter: int = 15_000
    refine_every: int = 100
    grow_grad2d: float = 0.0002
    grow_scale3d: float = 0.01
    prune_opa: float = 0.005
    prune_scale3d: float = 0.1
    prune_fraction: float = 0.0
    reset_every: int = 3000
    pause_refine_after_reset: int = 0
    score_weights: Dict[str, float] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    mode: str = "taming"
    plateau_tol: float = 0.01
    turbo_fast: float = 2.0
    turbo_slow: float = 0.5
    appearance_quantile: float = 0.9
    absgrad: bool = False
    verbose: bool = False
    key_for_gradient: str = "means2d"

    def __post_init__(self) -> None:
        for name in ("budget", "refine_every", "reset_every"):
            check_int(getattr(self, name), name, 1)
        if not 0 <= self.refine_start_iter < self.refine_stop_iter:
            raise ValueError(f"need 0 <= refine_start_iter < refine_stop_iter, got "
                             f"{self.refine_start_iter}, {self.refine_stop_iter}")
        check_range(self.prune_fraction, "prune_fraction", high_open=True)
        check_range(self.prune_opa, "prune_opa", high_open=True)
        check_int(self.pause_refine_after_reset, "pause_refine_after_reset", 0)
        for name in ("grow_grad2d", "plateau_tol"):
            check_nonnegative(getattr(self, name), name)
        for name in ("grow_scale3d", "prune_scale3d", "turbo_fast", "turbo_slow"):
            check_positive(getattr(self, name), name)
        if self.key_for_gradient not in GRADIENT_KEYS:  # gsplat's two renderers' names
            raise ValueError(f"key_for_gradient must be one of {GRADIENT_KEYS}, got {self.key_for_gradient!r}")
        if self.mode not in ("taming", "turbo"):
            raise ValueError(f"mode must be 'taming' or 'turbo', got {self.mode!r}")
        check_range(self.appearance_quantile, "appearance_quantile", low_open=True, high_open=True)
        self.score_weights = check_weights(self.score_weights)

    def refines_at(self, step: int) -> bool:
        """Whether :meth:`step_post_backward` refines (prunes and grows) at ``step``."""
        return (self.refine_start_iter < step < self.refine_stop_iter and step % self.refine_every == 0
                and step % self.reset_every >= self.pause_refine_after_reset)

    @property
    def last_refine_step(self) -> Optional[int]:
        """The last step on which refinement happens (``None`` if none does): the growth
        curve ends there, so the last refinement grows to exactly ``budget``."""
        step = (self.refine_stop_iter - 1) // self.refine_every * self.refine_every
        while step > self.refine_start_iter:
            if self.refines_at(step):
                return step
            step -= self.refine_every
        return None

    # -- gsplat's interface ---------------------------------------------------------------
    def check_sanity(self, params, optimizers) -> None:
        """gsplat's checks (one param group per optimizer, keys match), raised as
        ``ValueError``, plus: the required parameters exist and are finite."""
        trainable = {n for n, p in params.items() if p.requires_grad}
        if trainable != set(optimizers):
            raise ValueError(f"trainable parameters and optimizers must have the same keys, got {sorted(trainable)} "
                             f"and {sorted(optimizers)}")
        for name, opt in optimizers.items():
            if len(opt.param_groups) != 1:
                raise ValueError(f"optimizer {name!r} has {len(opt.param_groups)} param groups; gsplat strategies "
                                 "need exactly one per parameter")
        for key in ("means", "scales", "quats", "opacities"):
            if key not in params:
                raise ValueError(f"params needs {key!r}; has {sorted(params)}")
        n = len(params["means"])
        for name, p in params.items():
            if len(p) != n:
                raise ValueError(f"params[{name!r}] has {len(p)} rows, means has {n}")
            if not torch.isfinite(p).all():
                raise ValueError(f"params[{name!r}] has NaN/Inf entries")

    def initialize_state(self, scene_scale: float = 1.0) -> Dict[str, Any]:
        scene_scale = check_positive(scene_scale, "scene_scale")
        return {"grad2d": None, "count": None, "hits": None, "blend": None, "loss_hits": None, "depth_inv": None,
                "scene_scale": float(scene_scale), "schedule": None, "progress": 0.0, "loss_ema": None,
                "loss_at_refine": None, "initial_count": None}

    def step_pre_backward(self, params, optimizers, state: Dict[str, Any], step: int, info: Dict[str, Any]) -> None:
        if self.key_for_gradient not in info:
            raise ValueError(f"info has no {self.key_for_gradient!r}: the renderer must return it")
        if state["initial_count"] is None:
            n = len(params["means"])
            if n > self.budget:
                raise ValueError(f"the scene has {n} Gaussians, above the budget {self.budget}: call "
                                 "prune_to_budget(params, optimizers, state, budget) first (scored pruning)")
            state["initial_count"] = n
            # No refinement at all (a window without a multiple of refine_every): the curve is
            # never read, it only needs a valid end.
            end = self.last_refine_step or self.refine_stop_iter
            state["schedule"] = GrowthToBudget(start_step=self.refine_start_iter, end_step=end, initial_count=n,
                                               budget=self.budget)
        info[self.key_for_gradient].retain_grad()

    def step_post_backward(self, params, optimizers, state: Dict[str, Any], step: int, info: Dict[str, Any],
                           packed: bool = False, loss: Optional[Union[float, Tensor]] = None) -> None:
        if loss is not None:
            value = float(loss)
            state["loss_ema"] = value if state["loss_ema"] is None else 0.9 * state["loss_ema"] + 0.1 * value
        if step >= self.refine_stop_iter:
            return
        self._update_state(params, state, info, packed)
        if self.refines_at(step):
            n_pruned = self._prune(params, optimizers, state, step)
            n_dupli, n_split = self._grow(params, optimizers, state, step)
            if self.verbose:
                log_rank_zero(log, logging.INFO, "step %d: pruned %d, cloned %d, split %d; %d of %d Gaussians", step, n_pruned, n_dupli,
                         n_split, len(params["means"]), self.budget)
            for key in ("grad2d", "count", "hits", "blend", "loss_hits", "depth_inv"):
                if state[key] is not None:
                    state[key].zero_()
            state["loss_at_refine"] = state["loss_ema"]
        if step > 0 and step % self.reset_every == 0:
            _ops.reset_opa(params=params, optimizers=optimizers, state=state, value=self.prune_opa * 2.0)

    # -- statistics -----------------------------------------------------------------------
    def _update_state(self, params, state, info, packed: bool) -> None:
        for key in ("width", "height", "n_cameras", "radii", self.key_for_gradient):
            if key not in info:
                raise ValueError(f"info has no {key!r}: the renderer must return it")
        grad = info[self.key_for_gradient].absgrad if self.absgrad else info[self.key_for_gradient].grad
        if grad is None:
            raise ValueError(f"info[{self.key_for_gradient!r}] has no gradient: call step_pre_backward before "
                             "loss.backward()")
        grads = grad.clone()
        grads[..., 0] *= info["width"] / 2.0 * info["n_cameras"]
        grads[..., 1] *= info["height"] / 2.0 * info["n_cameras"]
        n = len(params["means"])
        dev = grads.device
        for key in ("grad2d", "count", "hits", "blend", "loss_hits", "depth_inv"):
            if state[key] is None:
                state[key] = torch.zeros(n, device=dev)
        if packed:
            ids, grads = info["gaussian_ids"], grads
            cam = None
        else:
            visible = (info["radii"] > 0).all(dim=-1)  # [C, N]
            cam, ids = torch.where(visible)
            grads = grads[visible]
        ones = torch.ones_like(ids, dtype=torch.float32)
        state["grad2d"].index_add_(0, ids, grads.norm(dim=-1))
        state["count"].index_add_(0, ids, ones)
        if "depths" in info and cam is not None:
            depth = info["depths"].detach()[cam, ids].clamp_min(1e-6)
            state["depth_inv"].index_add_(0, ids, 1.0 / depth)
        for info_key, prior in INFO_STATS.items():
            stat = info.get(info_key)
            if stat is not None:
                key = {"coverage": "hits", "blend": "blend", "loss": "loss_hits"}[prior]
                state[key] += stat.detach().reshape(-1, n).sum(0).to(dev)

    def priors(self, params, state) -> Dict[str, Tensor]:
        """The score priors available now (see :mod:`.scores`)."""
        count = state["count"].clamp_min(1)
        out = {"grad": state["grad2d"] / count, "opacity": torch.sigmoid(params["opacities"].detach().flatten()),
               "volume": torch.exp(params["scales"].detach()).prod(dim=-1)}
        if state["depth_inv"].any():
            out["depth"] = state["depth_inv"] / count
        for key, prior in (("hits", "coverage"), ("blend", "blend"), ("loss_hits", "loss")):
            if state[key].any():
                out[prior] = state[key]
        return out

    def target_count(self, state: Dict[str, Any], step: int) -> int:
        """The count allowed after refining at ``step``, read from the core schedule
        (``GrowthToBudget.count``), never above ``budget``. Taming: the curve at ``step``.
        Turbo: the curve at the growth progress ``t`` (advanced here by one refinement
        interval × speed), i.e. at the step ``start + t·(end − start)`` of the curve."""
        schedule: GrowthToBudget = state["schedule"]
        if self.mode == "taming":
            return min(self.budget, schedule.count(step))
        span = schedule.end_step - schedule.start_step
        before, now = state["loss_at_refine"], state["loss_ema"]
        plateau = before is not None and now is not None and (before - now) < self.plateau_tol * abs(before)
        speed = self.turbo_fast if plateau else self.turbo_slow
        state["progress"] = min(1.0, state["progress"] + speed * self.refine_every / span)
        return min(self.budget, schedule.count(schedule.start_step + state["progress"] * span))

    # -- refinement -----------------------------------------------------------------------
    @torch.no_grad()
    def _prune(self, params, optimizers, state, step: int) -> int:
        drop = torch.sigmoid(params["opacities"].flatten()) < self.prune_opa
        if step > self.reset_every:
            drop |= torch.exp(params["scales"]).max(dim=-1).values > self.prune_scale3d * state["scene_scale"]
        if self.prune_fraction > 0:
            k = int(self.prune_fraction * int((~drop).sum()))
            if k > 0:
                inv = 1.0 / importance(self.priors(params, state), self.score_weights)
                inv[drop] = 0.0
                drop[torch.multinomial(inv, k, replacement=False)] = True
        if drop.all():  # never empty the scene: keep the best-scored Gaussian
            drop[int(importance(self.priors(params, state), self.score_weights).argmax())] = False
        n = int(drop.sum())
        if n:
            _ops.remove(params=params, optimizers=optimizers, state=state, mask=drop)
        return n

    def candidates(self, params, state) -> Tensor:
        grads = state["grad2d"] / state["count"].clamp_min(1)
        cand = grads > self.grow_grad2d
        if self.mode == "turbo" and state["loss_hits"].any():
            err = state["loss_hits"]
            cand |= err > torch.quantile(err, self.appearance_quantile)
        return cand

    @torch.no_grad()
    def _grow(self, params, optimizers, state, step: int) -> tuple:
        n = len(params["means"])
        allowance = min(self.budget, self.target_count(state, step)) - n
        cand = self.candidates(params, state)
        n_cand = int(cand.sum())
        if allowance <= 0 or n_cand == 0:
            return 0, 0
        chosen = cand.clone()
        if n_cand > allowance:
            score = importance(self.priors(params, state), self.score_weights)[cand]
            pick = torch.multinomial(score, allowance, replacement=False)
            chosen = torch.zeros_like(cand)
            chosen[torch.where(cand)[0][pick]] = True
        small = torch.exp(params["scales"]).max(dim=-1).values <= self.grow_scale3d * state["scene_scale"]
        dupli, split = chosen & small, chosen & ~small
        n_dupli, n_split = int(dupli.sum()), int(split.sum())
        if n_dupli:
            _ops.duplicate(params=params, optimizers=optimizers, state=state, mask=dupli)
        if n_split:
            split = torch.cat([split, torch.zeros(n_dupli, dtype=torch.bool, device=split.device)])
            _ops.split(params=params, optimizers=optimizers, state=state, mask=split)
        return n_dupli, n_split


@torch.no_grad()
def prune_to_budget(params, optimizers, state: Dict[str, Any], budget: int, strategy: Optional[BudgetedStrategy] = None
                    ) -> int:
    """Remove the lowest-scored Gaussians so at most ``budget`` remain (scores from the
    priors available: opacity and volume before any training statistics). Returns how many
    were removed."""
    n = len(params["means"])
    check_int(budget, "budget", 1)
    if n <= budget:
        return 0
    strategy = strategy or BudgetedStrategy(budget=budget)
    if state.get("count") is None:
        priors = {"opacity": torch.sigmoid(params["opacities"].flatten()),
                  "volume": torch.exp(params["scales"]).prod(dim=-1)}
    else:
        priors = strategy.priors(params, state)
    score = importance(priors, strategy.score_weights)
    drop = torch.ones(n, dtype=torch.bool, device=score.device)
    drop[torch.topk(score, budget).indices] = False
    _ops.remove(params=params, optimizers=optimizers, state=state, mask=drop)
    return n - budget


# -- checkpoints: the state as plain data ------------------------------------------------
_STATE_CLASSES = {"GrowthToBudget": GrowthToBudget}  # dataclasses a strategy state may hold
_PLAIN = (bool, int, float, str, type(None))


def state_to_plain(state: Dict[str, Any]) -> Dict[str, Any]:
    """A strategy state (``initialize_state()``'s dict, ours or gsplat's) as plain data a
    checkpoint can hold and ``torch.load(..., weights_only=True)`` can read: tensors
    (detached copies), numbers, strings and ``None`` as they are, a ``GrowthToBudget`` as
    ``{"dataclass": "GrowthToBudget", "fields": {...}}`` (its fields, not a pickled object).
    Anything else raises ``ValueError`` naming the key."""
    if not isinstance(state, dict):
        raise ValueError(f"a strategy state is a dict, got {type(state).__name__}")
    out: Dict[str, Any] = {}
    for key, value in state.items():
        if not isinstance(key, str):
            raise ValueError(f"strategy state keys must be strings, got {key!r}")
        if isinstance(value, Tensor):
            out[key] = value.detach().clone()
        elif isinstance(value, _PLAIN):
            out[key] = value
        elif _STATE_CLASSES.get(type(value).__name__) is type(value):
            out[key] = {"dataclass": type(value).__name__, "fields": dataclasses.asdict(value)}
        else:
            raise ValueError(f"strategy state {key!r} holds a {type(value).__name__}: only tensors, numbers, strings, "
                             f"None and {sorted(_STATE_CLASSES)} can be checkpointed")
    return out


def state_from_plain(plain: Dict[str, Any]) -> Dict[str, Any]:
    """The inverse of :func:`state_to_plain`: a new dict (the input is not changed), the
    dataclasses rebuilt (and so validated) from their fields. Malformed input raises
    ``ValueError`` naming the key."""
    if not isinstance(plain, dict):
        raise ValueError(f"a saved strategy state is a dict, got {type(plain).__name__}")
    out: Dict[str, Any] = {}
    for key, value in plain.items():
        if isinstance(value, (Tensor,) + _PLAIN):
            out[key] = value
            continue
        name = value.get("dataclass") if isinstance(value, dict) else None
        cls = _STATE_CLASSES.get(name) if isinstance(name, str) else None
        if cls is None or not isinstance(value.get("fields"), dict):
            raise ValueError(f"saved strategy state {key!r} is not plain data or a known dataclass "
                             f"({sorted(_STATE_CLASSES)}): {value!r}")
        try:
            out[key] = cls(**value["fields"])
        except (TypeError, ValueError) as err:
            raise ValueError(f"saved strategy state {key!r}: bad {cls.__name__} fields: {err}") from err
    return out
