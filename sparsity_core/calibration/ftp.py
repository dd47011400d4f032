"""FTP: fine-grained token-wise pruning by learned token routing (Li et al., 2024, "FTP: A
Fine-grained Token-wise Pruner for Large Language Models via Token Routing",
https://arxiv.org/abs/2412.11494), for BERT-style encoders (transformers, ``encoder.layer``)
and timm ViTs (``blocks``).

Every block ``f_l`` gets a small router (:mod:`.ftp_router`) that decides per token whether it
passes through the block or skips it (``h_{l+1,t} = h_{l,t}``, the residual identity). The
model's weights stay frozen; only the routers train, on calibration batches, with

    L = L_distill + λ_sp · Σ_l (ŝ_l − s_l(step))² + λ_g(step) · L_guide

- ``L_distill = Σ‖y − y_dense‖² / Σ‖y_dense‖²``: relative squared error of the routed model's
  output (``last_hidden_state`` / logits; padding excluded) to the dense model's;
- ``ŝ_l``: the fraction of valid tokens skipped by block ``l``'s straight-through gates (so the
  hard decisions meet the target, with the sigmoid's gradient);
- ``L_guide``: binary cross-entropy between the router's keep probability and the static
  router's decision (keep the ``1 − s_l`` tokens of largest hidden-state norm), weight decaying linearly to 0
  (the paper's guide loss toward its static, attention-based router).

Sparsity scheduler: the global token sparsity ``s`` is split over blocks by a search
(:func:`search_allocation`, a small genetic algorithm as in the paper: allocations with mean
``s``, fitness = distillation loss with static routing, crossover + mutation, elitism) and
reached over training by :class:`~sparsity_core.schedules.blockwise.BlockAllocation` over a
cubic ramp (``s_l(step) = a_l · cubic(step)/s``, final at ``ramp · steps``). After training
each router's threshold ``θ_l`` is calibrated block by block on the batches so that the hard
decisions skip exactly ``s_l`` of the calibration tokens (the paper instead fine-tunes the
schedule; ours is a one-pass quantile, as CATS sets its thresholds).

Cost (``TokenRouting.report``): a skipped token saves block ``l``'s per-token work (QKV, output
projection, MLP: the same for every block of a uniform transformer), so the fraction of
block-token computations skipped, ``Σ_l skipped_l / Σ_l valid_l``, is the fraction of those MACs
saved; the attention products shrink faster (``1 − (1 − s_l)²``), so it is a lower bound on the
block FLOPs saved. Routers cost ``~5H + H`` MACs plus ``O(d)`` feature work per token and block.

Assumed where the paper is not followed to the letter: hidden-state features stand in for
attention received (see :mod:`.ftp_router`); the search is over block sparsities only (no
alternation with router training); the first token always passes.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Union

import torch
from torch import nn

from ..observe import Forward
from ..validation import check_int, check_nonnegative, check_positive, check_range, check_sparsity
from .data import calibration_batches, checked_forward
from .ftp_routing import TokenRouting, find_blocks, model_output, relative_error

WHAT = "train_token_router"

__all__ = ["TokenRouting", "find_blocks", "search_allocation", "train_token_router"]


def _project(a: torch.Tensor, mean: float, cap: float) -> torch.Tensor:
    """``a`` moved onto ``{x ∈ [0, cap]^L : mean(x) = mean}`` (shift and clip, repeated)."""
    for _ in range(100):
        a = (a + (mean - a.mean())).clamp(0.0, cap)
        if abs(float(a.mean()) - mean) < 1e-9:
            break
    return a


def search_allocation(fitness: Callable[[List[float]], float], blocks: int, sparsity: float,
                      population: int = 8, generations: int = 4, cap: Optional[float] = None,
                      seed: int = 0) -> Dict[str, Any]:
    """Genetic search of per-block sparsities with mean ``sparsity`` (each in ``[0, cap]``,
    ``cap`` = ``min(0.95, 2·sparsity)`` by default) minimising ``fitness(allocation)``: the
    uniform allocation and ``population − 1`` perturbed ones, then ``generations`` rounds
    keeping the better half and adding children (random convex mix of two parents plus
    Gaussian noise of 0.25·sparsity, projected). Returns ``allocation``, ``fitness``,
    ``uniform_fitness`` and ``evaluations``."""
    check_int(population, "population", 2)
    check_int(generations, "generations", 0)
    cap = min(0.95, 2.0 * sparsity) if cap is None else check_range(cap, "cap", sparsity, 1.0, high_open=True)
    gen = torch.Generator().manual_seed(int(seed))
    noise = 0.25 * sparsity
    pop = [torch.full((blocks,), float(sparsity), dtype=torch.float64)]
    pop += [_project(pop[0] + noise * torch.randn(blocks, generator=gen, dtype=torch.float64), sparsity, cap)
            for _ in range(population - 1)]
    scores = [float(fitness(a.tolist())) for a in pop]
    uniform = scores[0]
    for _ in range(generations):
        order = sorted(range(len(pop)), key=lambda i: scores[i])[: max(1, population // 2)]
        pop, scores = [pop[i] for i in order], [scores[i] for i in order]
        while len(pop) < population:
            i, j = torch.randint(len(order), (2,), generator=gen).tolist()
            w = float(torch.rand((), generator=gen, dtype=torch.float64))
            child = w * pop[i] + (1 - w) * pop[j] + noise * torch.randn(blocks, generator=gen, dtype=torch.float64)
            child = _project(child, sparsity, cap)
            pop.append(child)
            scores.append(float(fitness(child.tolist())))
    best = min(range(len(pop)), key=lambda i: scores[i])
    evaluations = population + generations * (population - max(1, population // 2))
    return {"allocation": pop[best].tolist(), "fitness": scores[best], "uniform_fitness": uniform,
            "evaluations": evaluations}


def _allocation(spec, names: Sequence[str], sparsity: float) -> Union[str, List[float]]:
    if isinstance(spec, str):
        if spec not in ("search", "uniform"):
            raise ValueError(f"{WHAT}: allocation must be 'search', 'uniform' or one sparsity per block, got {spec!r}")
        return spec
    if isinstance(spec, dict) and sorted(spec) != sorted(names):
        raise ValueError(f"{WHAT}: allocation names {sorted(spec)} are not the blocks {list(names)}")
    values = [spec[n] for n in names] if isinstance(spec, dict) else list(spec)
    if len(values) != len(names):
        raise ValueError(f"{WHAT}: allocation has {len(values)} values for {len(names)} blocks ({list(names)})")
    values = [check_sparsity(v, "allocated block sparsity") for v in values]
    if abs(sum(values) / len(values) - sparsity) > 1e-6:
        raise ValueError(f"{WHAT}: the allocation's mean {sum(values) / len(values):.6g} is not the sparsity {sparsity}")
    return values


def train_token_router(model: nn.Module, batches: Iterable, sparsity: float, steps: int = 100, *,
                       forward: Optional[Forward] = None, allocation: Union[str, Sequence[float]] = "search",
                       ramp: float = 0.5, lr: float = 3e-2, sparsity_weight: float = 5.0,
                       guide_weight: float = 0.5, hidden: int = 16, keep_first: int = 1,
                       search_batches: int = 2, population: int = 8, generations: int = 4,
                       seed: int = 0) -> TokenRouting:
    """Install FTP routers on ``model``'s blocks and train them on ``batches`` (frozen model
    weights; ``steps`` Adam steps, one batch each, cycling) to skip ``sparsity`` of the
    block-token computations (module docstring for the loss, scheduler and thresholds).
    ``allocation``: ``"search"``, ``"uniform"`` or one sparsity per block (mean ``sparsity``).
    Returns the installed :class:`TokenRouting` (``report()`` measured on ``batches``;
    ``uninstall()`` restores the blocks). Bad input raises ``ValueError`` before any change;
    a failure while training uninstalls the routers and restores the model's flags."""
    from ..schedules.blockwise import BlockAllocation
    from ..schedules.ramps import Cubic

    sparsity = check_sparsity(sparsity)
    check_int(steps, "steps", 0)
    ramp = check_range(ramp, "ramp", 0.0, 1.0)
    check_positive(lr, "lr")
    check_nonnegative(sparsity_weight, "sparsity_weight")
    check_nonnegative(guide_weight, "guide_weight")
    check_int(hidden, "hidden", 1)
    check_int(keep_first, "keep_first", 1)
    check_int(search_batches, "search_batches", 1)
    check_int(population, "population", 2)
    check_int(generations, "generations", 0)
    check_int(seed, "seed", 0)
    names, _ = find_blocks(model, WHAT)
    spec = _allocation(allocation, names, sparsity)
    batches = calibration_batches(batches, WHAT)
    batches = list(batches)
    fwd = checked_forward(forward, WHAT)
    rng = torch.get_rng_state()
    torch.manual_seed(seed)  # the relaxation's noise; the caller's CPU generator state is restored
    was_training = model.training
    flags = {p: p.requires_grad for p in model.parameters()}
    routing = TokenRouting.install(model, hidden=hidden, keep_first=keep_first)
    try:
        model.eval()
        for p in flags:
            p.requires_grad_(False)
        with torch.no_grad(), routing.mode("off"):
            dense = [model_output(fwd(model, b)) for b in batches]
        masks = [routing.token_mask(b) for b in batches]

        def fitness(alloc: List[float]) -> float:
            routing.set_targets(alloc)
            with torch.no_grad(), routing.mode("static"):
                return sum(float(relative_error(model_output(fwd(model, b)), d, m))
                           for b, d, m in zip(batches[:search_batches], dense, masks))

        if spec == "uniform" or sparsity == 0.0:
            alloc, routing.search = [sparsity] * len(names), None
        elif spec == "search":
            routing.search = search_allocation(fitness, len(names), sparsity, population, generations, seed=seed)
            alloc = routing.search["allocation"]
        else:
            alloc, routing.search = list(spec), None
        end = max(1, round(ramp * steps))
        base = Cubic(start_step=0, end_step=end, initial=0.0, final_sparsity=sparsity) if sparsity > 0 else None
        routing.schedule = BlockAllocation(base=base, allocation=dict(zip(names, alloc))) if base else None
        params = routing.router_parameters()
        opt = torch.optim.Adam(params, lr=lr)
        for step in range(steps if sparsity > 0 else 0):
            targets = routing.schedule.group_values(step + 1)
            routing.set_targets([targets[n] for n in names])
            i = step % len(batches)
            with routing.mode("learned", relaxed=True):
                out = model_output(fwd(model, batches[i]))
                distill = relative_error(out, dense[i], masks[i])
                spars, guide = routing.constraint_losses([targets[n] for n in names])
            g = guide_weight * max(0.0, 1.0 - step / max(1, steps))
            loss = distill + sparsity_weight * spars + g * guide
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            routing.history.append({"step": step + 1, "loss": float(loss.detach()), "distill": float(distill.detach()),
                                    "sparsity_loss": float(spars.detach()), "target": sum(targets.values()) / len(names)})
        routing.set_targets(alloc)
        routing.calibrate_thresholds(batches, fwd)
        routing.measure(batches, fwd)
    except BaseException:
        routing.uninstall()
        raise
    finally:
        torch.set_rng_state(rng)
        for p, flag in flags.items():
            p.requires_grad_(flag)
        model.train(was_training)
    return routing
