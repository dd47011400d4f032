"""ADMM on the saliency grid: drive ``‖σ(G)‖₁`` to a budget ``C`` (HollowNeRF).

Xie et al., 2023, "HollowNeRF: Pruning Hashgrid-Based NeRFs with Trainable Collision
Mitigation" (https://arxiv.org/abs/2308.10122), section 3. The constrained problem

    min_{θ, G} L(θ, G)   s.t.   ‖σ(G)‖₁ ≤ C

is split with an auxiliary ``z`` (the budget set ``S = {z ∈ [0, 1]^n : Σ z ≤ C}``) and a
scaled dual ``u`` (Boyd et al., 2011, "Distributed Optimization and Statistical Learning via
the Alternating Direction Method of Multipliers", §3.1.1):

- (θ, G) step: the optimizer's steps on ``L + ρ/2 ‖σ(G) − z + u‖²`` (the penalty's gradient
  ``ρ (σ(G) − z + u) ⊙ σ(G) ⊙ (1 − σ(G))`` is added to ``G.grad``);
- z step, every ``every`` optimizer steps: ``z ← Π_S(σ(G) + u)``;
- dual ascent: ``u ← u + σ(G) − z``.

The budget is a core schedule of the *sparsity of the saliency mass*: ``C(step) =
(1 − sparsity(step)) · n`` with ``n`` the number of grid vertices, so a ramp (``Linear``,
``Cubic``...) tightens the constraint gradually. Like a gsplat strategy, :class:`SaliencyADMM`
is configuration only; :meth:`SaliencyADMM.initialize_state` returns the plain dict of
tensors (``z``, ``u``) the caller holds (and checkpoints).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Union

import torch
from torch import Tensor

from sparsity_core.schedules.base import Schedule
from sparsity_core.schedules.constant import Constant
from sparsity_core.validation import check_int, check_positive, check_range, check_sparsity

from .hashgrid import SaliencyGrid


@torch.no_grad()
def project_budget(v: Tensor, capacity: float, iters: int = 100) -> Tensor:
    """Euclidean projection of ``v`` onto ``{z ∈ [0, 1]^n : Σ z ≤ capacity}``.

    ``z = clamp(v − τ, 0, 1)`` with ``τ = 0`` if that already fits, else the ``τ > 0`` with
    ``Σ clamp(v − τ, 0, 1) = capacity`` (found by bisection in float64; the sum is monotone in τ).
    """
    n = v.numel()
    capacity = check_range(capacity, "capacity (at most the number of entries)", 0.0, n)
    z = v.clamp(0.0, 1.0)
    if float(z.sum()) <= capacity:
        return z
    v64 = v.double()
    lo, hi = 0.0, float(v64.max())
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        if float((v64 - mid).clamp(0.0, 1.0).sum()) > capacity:
            lo = mid
        else:
            hi = mid
    return (v64 - hi).clamp(0.0, 1.0).to(v.dtype)


@dataclass
class SaliencyADMM:
    """ADMM driving ``‖σ(G)‖₁`` of a :class:`~.hashgrid.SaliencyGrid` to a budget.

    Args:
        sparsity: fraction of the saliency capacity ``n`` removed: a float or a core
            :class:`Schedule` (``C(step) = (1 − sparsity(step))·n``).
        rho: penalty weight ρ. Its scale is relative to the loss: under Adam (per-coordinate
            normalised steps) a cell the loss does not care about (empty space) moves at the
            learning rate in the penalty's direction whatever ρ is, while in cells the loss
            needs, ρ sets how hard the budget pushes against it. For an MSE on colours in
            [0, 1], ρ ≈ 1e-5 lets the loss shape the gate (object on, background off); ρ ≥ 1e-3
            shrinks the gate uniformly and it stops telling salient points apart.
        every: z step and dual ascent every this many optimizer steps.

    Usage in a plain loop::

        admm = SaliencyADMM(sparsity=Linear(start_step=100, end_step=1000, final_sparsity=0.7))
        state = admm.initialize_state(encoding.saliency)
        for step in range(1, steps + 1):
            loss = mse(model(x), y)            # or: loss + admm.penalty(grid, state)
            opt.zero_grad(); loss.backward()
            admm.penalty_grad_(grid, state)    # adds ∂(ρ/2‖σ(G) − z + u‖²)/∂G to G.grad
            opt.step()
            admm.step(grid, state, step)       # z and u every `every` steps
    """

    sparsity: Union[float, Schedule] = 0.5
    rho: float = 1e-5
    every: int = 16

    def __post_init__(self) -> None:
        if not isinstance(self.sparsity, Schedule):
            self.sparsity = Constant(sparsity=check_sparsity(self.sparsity, "saliency sparsity (or a Schedule)"))
        check_positive(self.rho, "rho")
        check_int(self.every, "every", 1)

    def capacity(self, grid: SaliencyGrid, step: int) -> float:
        """``C`` at ``step``."""
        return (1.0 - self.sparsity.value(step)) * grid.logits.numel()

    @torch.no_grad()
    def initialize_state(self, grid: SaliencyGrid) -> Dict[str, Tensor]:
        """``z = σ(G)``, ``u = 0``."""
        z = torch.sigmoid(grid.logits.detach()).clone()
        return {"z": z, "u": torch.zeros_like(z)}

    def _check(self, grid: SaliencyGrid, state: Dict[str, Tensor]) -> None:
        if set(state) != {"z", "u"} or state["z"].shape != grid.logits.shape or state["u"].shape != grid.logits.shape:
            raise ValueError(f"ADMM state must hold 'z' and 'u' of shape {tuple(grid.logits.shape)}, got "
                             f"{ {k: tuple(v.shape) for k, v in state.items()} }")

    def penalty(self, grid: SaliencyGrid, state: Dict[str, Tensor]) -> Tensor:
        """``ρ/2 ‖σ(G) − z + u‖²`` (differentiable in ``G``)."""
        self._check(grid, state)
        z, u = state["z"].to(grid.logits.device), state["u"].to(grid.logits.device)
        return 0.5 * self.rho * (torch.sigmoid(grid.logits) - z + u).pow(2).sum()

    @torch.no_grad()
    def penalty_grad_(self, grid: SaliencyGrid, state: Dict[str, Tensor]) -> None:
        """Add the penalty's gradient to ``G.grad`` (allocated if missing)."""
        self._check(grid, state)
        g = grid.logits
        s = torch.sigmoid(g)
        grad = self.rho * (s - state["z"].to(g.device) + state["u"].to(g.device)) * s * (1.0 - s)
        if g.grad is None:
            g.grad = grad
        else:
            g.grad.add_(grad)

    @torch.no_grad()
    def step(self, grid: SaliencyGrid, state: Dict[str, Tensor], step: int) -> Dict[str, float]:
        """At a multiple of ``every``: ``z ← Π_S(σ(G) + u)``, ``u ← u + σ(G) − z``. Returns the
        mass ``‖σ(G)‖₁``, the capacity ``C`` and the primal residual ``‖σ(G) − z‖₂`` (empty
        when no update is due)."""
        self._check(grid, state)
        if step % self.every:
            return {}
        s = torch.sigmoid(grid.logits.detach()).to(state["z"].device)
        cap = self.capacity(grid, step)
        z = project_budget((s + state["u"]).reshape(-1), cap).view_as(s)
        state["u"].add_(s - z)
        state["z"].copy_(z)
        return {"mass": float(s.sum()), "capacity": cap, "residual": float((s - z).norm())}
