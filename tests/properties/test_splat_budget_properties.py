"""Properties of the 3D Gaussian Splatting budgeted strategy (``plugins/splat/budgeted.py``)
on random small scenes, driven without a renderer (gsplat's rasterizer needs CUDA, see
``shared/notes/gsplat_cpu.md``): ``info`` is built by hand as the strategy reads it, and
the strategy's own CPU-side bookkeeping and gsplat's ``strategy.ops`` (prune, clone, split)
decide the counts.

- the Gaussian count never exceeds the budget after any step, in both modes (taming,
  turbo), with score-sampled pruning, opacity resets and pauses, whatever the gradients;
- a refinement never grows past the growth curve: the count after it is at most
  ``max(count(step), count before)``; the scene never empties;
- per-Gaussian statistics and optimizer moments stay aligned with the parameters;
- ``prune_to_budget`` leaves exactly ``min(n, budget)`` Gaussians.
"""
from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from . import prop_settings

pytest.importorskip("gsplat", reason="the splat extra (gsplat) is not installed")
from sparsity_plugins.splat.budgeted import BudgetedStrategy, prune_to_budget  # noqa: E402

STATS = ("grad2d", "count", "hits", "blend", "loss_hits", "depth_inv")


def scene(n, gen, opacity_spread, scale_spread):
    logit = torch.randn(n, generator=gen) * opacity_spread  # some far below prune_opa when spread is large
    params = torch.nn.ParameterDict({
        "means": torch.randn(n, 3, generator=gen),
        "scales": -3.0 + scale_spread * torch.randn(n, 3, generator=gen),  # small (cloned) and large (split)
        "quats": torch.randn(n, 4, generator=gen),
        "opacities": logit,
        "colors": torch.rand(n, 3, generator=gen),
    })
    optimizers = {k: torch.optim.Adam([p], lr=1e-3) for k, p in params.items()}
    return params, optimizers


def fake_step(strategy, params, optimizers, state, step, gen, grad_level, hidden, loss):
    """One step with a hand-made ``info``: random per-Gaussian image-plane gradients (about
    ``grad_level`` after gsplat's normalisation), a random fraction ``hidden`` not visible."""
    n = len(params["means"])
    means2d = (params["means"][:, :2] * 1.0).unsqueeze(0)
    radii = torch.full((1, n, 2), 3)
    radii[0, torch.rand(n, generator=gen) < hidden] = 0
    info = {"means2d": means2d, "radii": radii, "width": 20, "height": 20, "n_cameras": 1,
            "depths": params["means"][:, 2].detach().abs().unsqueeze(0) + 1.0,
            "hits": torch.rand(1, n, generator=gen), "loss_hits": torch.rand(1, n, generator=gen)}
    strategy.step_pre_backward(params, optimizers, state, step, info)
    push = grad_level * 0.1 * torch.rand(n, 1, generator=gen) * 2
    target = means2d.detach() + push.unsqueeze(0)
    objective = 0.5 * ((means2d - target) ** 2).sum() + sum((p ** 2).sum() * 0 for p in params.values())
    for opt in optimizers.values():
        opt.zero_grad()
    objective.backward()
    for opt in optimizers.values():
        opt.step()
    strategy.step_post_backward(params, optimizers, state, step, info, loss=loss)


@st.composite
def configs(draw):
    start = draw(st.integers(0, 6))
    every = draw(st.integers(1, 4))
    stop = start + draw(st.integers(1, 30)) + every
    n0 = draw(st.integers(1, 40))
    return {
        "n0": n0,
        "strategy": dict(
            budget=n0 + draw(st.integers(0, 80)), refine_start_iter=start, refine_stop_iter=stop, refine_every=every,
            reset_every=draw(st.sampled_from([5, 7, 10_000])), pause_refine_after_reset=draw(st.integers(0, 2)),
            grow_grad2d=draw(st.sampled_from([0.0, 1e-4, 0.2])), grow_scale3d=draw(st.sampled_from([0.01, 0.1])),
            prune_opa=draw(st.sampled_from([0.005, 0.2])), prune_scale3d=draw(st.sampled_from([0.1, 10.0])),
            prune_fraction=draw(st.sampled_from([0.0, 0.0, 0.1, 0.4])), mode=draw(st.sampled_from(["taming", "turbo"])),
            turbo_fast=draw(st.sampled_from([1.0, 2.0, 5.0])), turbo_slow=draw(st.sampled_from([0.5, 1.0]))),
        "opacity_spread": draw(st.sampled_from([0.0, 2.0, 6.0])),
        "scale_spread": draw(st.sampled_from([0.0, 1.5])),
        "grad_level": draw(st.sampled_from([0.1, 1.0])),
        "hidden": draw(st.sampled_from([0.0, 0.3])),
        "losses": draw(st.sampled_from(["flat", "falling", "none"])),
        "seed": draw(st.integers(0, 2 ** 16)),
    }


@prop_settings(40)
@given(cfg=configs())
def test_the_count_never_exceeds_the_budget_after_any_step(cfg):
    torch.manual_seed(cfg["seed"])  # gsplat's split and the multinomial draws use the global generator
    gen = torch.Generator().manual_seed(cfg["seed"])
    s = BudgetedStrategy(**cfg["strategy"])
    params, opts = scene(cfg["n0"], gen, cfg["opacity_spread"], cfg["scale_spread"])
    s.check_sanity(params, opts)
    state = s.initialize_state(scene_scale=1.0)
    budget = s.budget
    for step in range(s.refine_stop_iter + 3):
        before = len(params["means"])
        loss = {"flat": 1.0, "falling": 10.0 / (step + 1), "none": None}[cfg["losses"]]
        fake_step(s, params, opts, state, step, gen, cfg["grad_level"], cfg["hidden"], loss)
        n = len(params["means"])
        assert 1 <= n <= budget, (step, n, budget)
        if s.refines_at(step) and s.mode == "taming":
            assert n <= max(state["schedule"].count(step), before), (step, n, before)
        if not s.refines_at(step):
            assert n == before, step  # only refinement steps change the count
        for name, p in params.items():
            assert len(p) == n
            st_ = opts[name].state[p]
            assert opts[name].param_groups[0]["params"][0] is p
            assert st_["exp_avg"].shape == p.shape and st_["exp_avg_sq"].shape == p.shape
        for key in STATS:
            if state[key] is not None:
                assert state[key].shape == (n,), key


@prop_settings(40)
@given(n=st.integers(1, 60), budget=st.integers(1, 80), seed=st.integers(0, 999), trained=st.booleans())
def test_prune_to_budget_leaves_min_n_budget(n, budget, seed, trained):
    gen = torch.Generator().manual_seed(seed)
    params, opts = scene(n, gen, 3.0, 1.0)
    for p in params.values():  # one optimizer step, so that there are moments to move along
        p.grad = torch.randn(p.shape, generator=gen)
    for opt in opts.values():
        opt.step()
    state = BudgetedStrategy(budget=max(budget, n)).initialize_state()
    if trained:  # with training statistics the priors include them
        for key in STATS:
            state[key] = torch.rand(n, generator=gen)
    removed = prune_to_budget(params, opts, state, budget)
    assert removed == max(0, n - budget)
    assert len(params["means"]) == min(n, budget)
    for name, p in params.items():
        assert opts[name].param_groups[0]["params"][0] is p
        assert opts[name].state[p]["exp_avg"].shape == p.shape, name
    if trained:
        assert all(state[k].shape == (min(n, budget),) for k in STATS)
    assert bool(torch.isfinite(params["means"].detach()).all())
