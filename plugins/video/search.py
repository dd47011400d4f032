"""Offline per-head pattern search, a program on the denoising clock (no optimizer).

Sparse-vDiT (Chen et al., 2025, arXiv:2506.03065) searches, per layer and head, the cheapest
pattern whose output stays close to dense attention; per-head sensitivity (HeSS-style, as
issue 14 calls it) spreads one global attention budget over the heads. Here,
while a calibration denoising loop runs the dense model, every self-attention call of layer
``l`` is observed and each candidate pattern ``p`` is run on the same q/k/v; per head ``h``

    e[l,h,p] = (Σ_calls ‖O_p − O‖² / Σ_calls ‖O‖²)^½   (over calibration calls after the dense steps),
    share[l,h] = ‖O_h‖² / Σ_h' ‖O_h'‖²   (the head's share of its layer's output energy).

The plan is chosen by :mod:`.allocation` from ``e``, ``share`` and a cost per pattern
measured on this machine (:mod:`.cost`): without a global budget, the cheapest pattern within
``error_budget`` per head (dense if none; heads with ``share < negligible`` take the cheapest
pattern); with ``sparsity`` (fraction of the dense attention cost to remove over all heads),
``allocator="knapsack"`` solves the multiple-choice knapsack over heads with the core's
knapsack DP, and any core allocator name (``"global"``, ...) ranks the heads, as
parameter-free core targets (one per layer, a unit per head, :func:`head_targets`), by
sensitivity and keeps the most sensitive dense. The first ``dense_fraction`` of the
calibration steps is not calibrated on and is stored as the plan's ``dense_steps``.
With ``tile`` (STA's 3D tiles, Zhang et al., 2025, arXiv:2502.04507; :mod:`.tiling`) the
candidates are scored, costed and stored with their block masks over the tokens in tiled
order (``e`` is unchanged by the reordering of the output rows). Drive it like any program: ``attach(Host(transformer))``, run the denoising loop calling
``after_optimizer_step(step)`` after each step, then ``finalize()`` returns the plan.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from sparsity_core.program import Host, Program, attached
from sparsity_core.registry import ALLOCATORS, PROGRAMS
from sparsity_core.targets import Target
from sparsity_core.validation import check_int, check_range

from .allocation import knapsack, ranked_dense, within_budget
from .cost import AttentionCost, measure_costs
from .kernel import block_sparse_attention
from .layout import TokenLayout
from .models import attention_names, num_heads
from .patterns import Pattern, block_mask
from .plan import AttentionPlan
from .processors import SparseAttention, install
from .tiling import Tile, check_tile, to_tiled


def default_candidates(layout: TokenLayout) -> List[str]:
    """Sparse-vDiT's shapes and their unions with a sink stripe, at windows of a quarter and an
    eighth of the frame."""
    r = max(1, min(layout.height, layout.width) // 4)
    r2 = max(1, r // 2)
    base = ["diagonal", f"diagonal(h={r},w={r})", "diagonal(t=1)", f"multidiagonal(h={r},w={r})",
            f"multidiagonal(h={r2},w={r2})", "stripe"]
    return list(dict.fromkeys(base + [f"{b}+stripe" for b in base[:5]]))


def head_targets(model: torch.nn.Module) -> List[Target]:
    """A parameter-free core target per self-attention layer, one unit per head."""
    return [Target(f"{name}.heads", shape=(num_heads(model),), module_name=name) for name in attention_names(model)]


@PROGRAMS.register("pattern_search")
class PatternSearch(Program):
    """Search a per-head :class:`~.plan.AttentionPlan` on calibration denoising steps.

    Args:
        block_size: tokens per attention block.
        error_budget: largest relative L2 error of a head's output, in ``(0, 1]``.
        sparsity: fraction of dense attention cost to remove across all heads (``None``:
            per-head error budget only).
        candidates: pattern specs (default :func:`default_candidates` of the layout).
        dense_fraction: first fraction of denoising steps kept dense.
        negligible: heads with a smaller share of their layer's output energy take the cheapest pattern.
        measure: measure the cost model on this machine (else block densities).
        allocator: ``"knapsack"`` or a core allocator name (see the module).
        transformer: name of the transformer inside the host's model (``""``: the model itself;
            e.g. ``"transformer"`` when a LightningModule holds it).
        tile: ``(t, h, w)`` STA tile the plan's blocks are taken over (``None``: frame-major).
    """

    name = "pattern_search"
    clock = "denoising"

    def __init__(self, block_size: int = 128, error_budget: float = 0.05, sparsity: Optional[float] = None,
                 candidates: Optional[Sequence[str]] = None, dense_fraction: float = 0.0,
                 negligible: float = 0.0, measure: bool = True, allocator: str = "knapsack",
                 transformer: str = "", tile: "Optional[Tile]" = None) -> None:
        check_int(block_size, "block_size", minimum=1)
        check_range(error_budget, "error_budget", 0.0, 1.0, low_open=True)
        candidates = None if candidates is None or isinstance(candidates, str) else list(candidates)
        if candidates is not None and not candidates:
            raise ValueError("candidates must name at least one attention pattern, or be None for the defaults")
        if sparsity is not None:
            check_range(sparsity, "sparsity", 0.0, 1.0, high_open=True)
        check_range(dense_fraction, "dense_fraction", 0.0, 1.0, high_open=True)
        check_range(negligible, "negligible", 0.0, 1.0)
        self.candidates = None if candidates is None else [str(Pattern.parse(c)) for c in candidates]
        self.allocator = None if allocator == "knapsack" else ALLOCATORS.build(allocator, min_keep_units=0)
        self.block_size, self.error_budget, self.sparsity = block_size, error_budget, sparsity
        self.dense_fraction, self.negligible, self.measure = dense_fraction, negligible, measure
        if not isinstance(transformer, str):
            raise ValueError(f"transformer must be a submodule name (a string), got {transformer!r}")
        self.transformer = transformer
        self.tile = check_tile(tile)
        self.session: Optional[SparseAttention] = None
        self.err: Optional[Tensor] = None  # [steps, layers, heads, candidates] squared error sums
        self.ref: Optional[Tensor] = None  # [steps, layers, heads] squared dense output sums
        self.steps = 0
        self.head_dim, self.heads = 64, 1
        self.plan: Optional[AttentionPlan] = None
        self.tolerance = error_budget
        self.cost: Optional[AttentionCost] = None

    # -- program protocol ------------------------------------------------------------
    def attach(self, host: Host) -> None:
        try:
            model = host.model.get_submodule(self.transformer)
        except AttributeError as err:
            raise ValueError(f"pattern_search: the host's model has no submodule {self.transformer!r}") from err
        self.targets = head_targets(model)
        self.session = install(model, block_size=self.block_size)
        self.session.observer = self._observe
        self.model = model

    def after_optimizer_step(self, step: int) -> None:
        """A calibration denoising step finished (``step`` steps done)."""
        self.steps = int(step)

    def detach(self) -> None:
        if self.session is not None:
            self.session.uninstall()
            self.session = None

    _STATE = ("err", "ref", "steps", "candidates", "head_dim", "heads")

    def state_dict(self) -> Dict[str, object]:
        """Plain data: the error sums per step (tensors), step count, candidates, head shape."""
        return {key: getattr(self, key) for key in self._STATE}

    def load_state_dict(self, state: Dict[str, object]) -> None:
        if set(state) != set(self._STATE):
            raise ValueError(f"pattern_search state needs keys {sorted(self._STATE)}; got {sorted(state)}")
        for key in ("err", "ref"):
            if state[key] is not None and not isinstance(state[key], Tensor):
                raise ValueError(f"pattern_search state {key!r} must be a tensor or None")
        for key in self._STATE:
            setattr(self, key, state[key])

    def report(self) -> Dict[str, float]:
        return {} if self.plan is None else {"density": self.plan.mean_density(), "steps": float(self.steps)}

    # -- observation -----------------------------------------------------------------
    def _dense_steps(self, total: int) -> int:
        return int(math.ceil(self.dense_fraction * total - 1e-9))

    def _observe(self, layer: int, q: Tensor, k: Tensor, v: Tensor, scale: Optional[float]) -> Tensor:
        """Run dense attention (returned: calibration follows the dense trajectory) and every
        candidate on the same q/k/v; errors are kept per denoising step."""
        dense = F.scaled_dot_product_attention(q, k, v, scale=scale)
        session = attached(self.session, self.name)
        layout = session.call_layout or session.layout
        if self.candidates is None:
            self.candidates = default_candidates(session.layout)
        step, (n, h) = max(session.step, 0), (len(self.targets), q.shape[1])
        self.head_dim, self.heads = q.shape[-1], q.shape[1]
        if self.err is None:
            self.err = torch.zeros(0, n, h, len(self.candidates), dtype=torch.float64)
            self.ref = torch.zeros(0, n, h, dtype=torch.float64)
        if step >= self.err.shape[0]:
            grow = step + 1 - self.err.shape[0]
            self.err = torch.cat([self.err, self.err.new_zeros(grow, *self.err.shape[1:])])
            self.ref = torch.cat([self.ref, self.ref.new_zeros(grow, *self.ref.shape[1:])])
        with torch.no_grad():
            self.ref[step, layer] += dense.double().pow(2).sum((0, 2, 3))
            qt, kt, vt, want = q, k, v, dense
            if self.tile is not None:  # score in tiled order: the errors are sums over rows
                qt, kt, vt, want = (to_tiled(x, layout, self.tile) for x in (q, k, v, dense))
            for j, p in enumerate(self.candidates):
                out = block_sparse_attention(qt, kt, vt, block_mask(p, layout, self.block_size, self.tile),
                                             self.block_size, scale)
                self.err[step, layer, :, j] += (out - want).double().pow(2).sum((0, 2, 3))
        return dense

    # -- the plan ----------------------------------------------------------------------
    def finalize(self) -> AttentionPlan:
        """Build the plan from the observations, uninstall the observers and return it."""
        session = attached(self.session, self.name)
        if self.err is None or session.layout is None:
            raise RuntimeError("pattern_search observed no attention call: run calibration denoising steps first")
        layout, total = session.layout, self.err.shape[0]
        first = min(self._dense_steps(total), total - 1)  # steps run dense are not calibrated on
        err, ref = self.err[first:].sum(0), self.ref[first:].sum(0)
        self.cost = measure_costs(self.candidates, layout, self.block_size, head_dim=self.head_dim,
                                  heads=self.heads, measure=self.measure, tile=self.tile)
        rel = (err / ref.clamp_min(1e-30)[..., None]).sqrt()
        share = ref / ref.sum(1, keepdim=True).clamp_min(1e-30)
        costs = torch.tensor([self.cost(p) for p in self.candidates], dtype=torch.float64)
        self.tolerance = self.error_budget
        if self.sparsity is None:
            choice = within_budget(rel, share, costs, self.error_budget, self.negligible)
        elif self.allocator is None:
            choice, self.tolerance = knapsack(rel, share, costs, self.sparsity, self.error_budget)
        else:
            choice, self.tolerance = ranked_dense(rel, share, costs, self.sparsity, self.error_budget,
                                                  self.allocator, self.targets, self.negligible)
        full = [self.cost.densities[p] >= 1.0 for p in self.candidates]  # covers every block: dense
        names = [["dense" if c < 0 or full[c] else self.candidates[c] for c in row] for row in choice.tolist()]
        self.plan = AttentionPlan(type(self.model).__name__, layout, names, block_size=self.block_size,
                                  dense_steps=self._dense_steps(total), tile=self.tile)
        self.detach()
        return self.plan
