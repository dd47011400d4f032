"""BudgetedStrategy on synthetic scenes (no renderer needed: ``info`` is built by hand):
the budget holds at every step, counts follow the growth curve, optimizer moments stay
aligned through clone/split/prune, our opacity reset fires, scores, bad input."""
import math

import pytest
import torch

pytest.importorskip("gsplat", reason="the splat extra (gsplat) is not installed")
from sparsity_plugins.splat.budgeted import BudgetedStrategy, prune_to_budget  # noqa: E402
from sparsity_plugins.splat.scores import importance, median_normalized  # noqa: E402


def scene(n, seed=0, opacity=0.5, log_scale=-3.0):
    g = torch.Generator().manual_seed(seed)
    params = torch.nn.ParameterDict({
        "means": torch.randn(n, 3, generator=g),
        "scales": torch.full((n, 3), log_scale) + 0.1 * torch.randn(n, 3, generator=g),
        "quats": torch.randn(n, 4, generator=g),
        "opacities": torch.full((n,), math.log(opacity / (1 - opacity))),
        "colors": torch.rand(n, 3, generator=g),
    })
    optimizers = {k: torch.optim.Adam([p], lr=1e-3) for k, p in params.items()}
    return params, optimizers


def fake_step(strategy, params, optimizers, state, step, grad_scale=1.0, loss=None):
    """One training step with a hand-made ``info``: every Gaussian visible, image-plane
    gradient norm = ``grad_scale`` / (width/2) per Gaussian before gsplat's normalisation."""
    n = len(params["means"])
    means2d = (params["means"][:, :2] * 1.0).unsqueeze(0)  # [1, N, 2], depends on the parameters
    info = {"means2d": means2d, "radii": torch.full((1, n, 2), 3), "width": 20, "height": 20, "n_cameras": 1,
            "depths": params["means"][:, 2].detach().abs().unsqueeze(0) + 1.0}
    strategy.step_pre_backward(params, optimizers, state, step, info)
    target = (means2d.detach() + grad_scale * 0.1)  # d/dm2d of 0.5·|m2d − target|² = −grad_scale·0.1 per axis
    l = 0.5 * ((means2d - target) ** 2).sum() + sum((p ** 2).sum() * 0 for p in params.values())
    for opt in optimizers.values():
        opt.zero_grad()
    l.backward()
    for opt in optimizers.values():
        opt.step()
    strategy.step_post_backward(params, optimizers, state, step, info, loss=loss)


def test_the_count_follows_the_growth_curve_and_never_exceeds_the_budget():
    params, opts = scene(50)
    s = BudgetedStrategy(budget=200, refine_start_iter=10, refine_stop_iter=110, refine_every=10, reset_every=10_000,
                         grow_grad2d=1e-4)
    s.check_sanity(params, opts)
    state = s.initialize_state()
    counts = []
    for step in range(150):
        fake_step(s, params, opts, state, step)
        counts.append(len(params["means"]))
        assert counts[-1] <= 200, step
        for name, p in params.items():  # optimizer moments stay aligned with the parameters
            assert opts[name].param_groups[0]["params"][0] is p
            st = opts[name].state[p]
            assert st["exp_avg"].shape == p.shape and st["exp_avg_sq"].shape == p.shape
        assert all(state[k].shape == (counts[-1],) for k in ("grad2d", "count", "hits", "depth_inv"))
    sched = state["schedule"]
    for step in range(20, 110, 10):  # every Gaussian is a candidate: the count is the curve's value
        assert counts[step] == sched.count(step), step
    assert counts[90] == sched.count(90) == 50 + math.floor(150 * (2 * 8 / 9 - (8 / 9) ** 2) + 1e-9)
    assert s.last_refine_step == sched.end_step == 100  # the curve ends on the last refinement (step 100)
    assert counts[100] == counts[-1] == 200  # ... so that refinement reaches the budget exactly


@pytest.mark.parametrize("mode, reset_every, pause, last", [("taming", 10_000, 0, 24), ("turbo", 10_000, 0, 24),
                                                           ("taming", 12, 3, 20)])
def test_the_last_refinement_before_refine_stop_iter_reaches_the_budget_exactly(mode, reset_every, pause, last):
    # Refinements at 8, 12, ..., 24 (every 4 after start 4, before stop 26); with a pause of 3
    # steps after each opacity reset (every 12), steps 12 and 24 do not refine: the last is 20.
    # Turbo at speed 1 advances one interval (4 of the span 4..24) per refinement: the same curve.
    params, opts = scene(30)
    s = BudgetedStrategy(budget=120, refine_start_iter=4, refine_stop_iter=26, refine_every=4, grow_grad2d=1e-4,
                         reset_every=reset_every, pause_refine_after_reset=pause, mode=mode, turbo_fast=1.0,
                         turbo_slow=1.0)
    state = s.initialize_state()
    counts = []
    for step in range(32):
        fake_step(s, params, opts, state, step, loss=1.0)
        counts.append(len(params["means"]))
    assert max(counts) == counts[last] == counts[-1] == 120  # never above, exactly the budget from the last refinement
    assert counts[last - 1] < 120  # reached by that refinement, not before
    assert state["schedule"].end_step == s.last_refine_step == last


def test_target_count_reads_the_core_schedule_in_both_modes():
    from sparsity_core.schedules.growth import GrowthToBudget

    class Fixed(GrowthToBudget):
        def count(self, step):
            self.asked = step
            return 77

    for mode in ("taming", "turbo"):
        s = BudgetedStrategy(budget=100, refine_start_iter=0, refine_stop_iter=50, refine_every=10, mode=mode,
                             turbo_fast=1.0, turbo_slow=1.0)
        state = s.initialize_state()
        state["schedule"] = Fixed(start_step=0, end_step=40, initial_count=10, budget=100)
        assert s.target_count(state, 20) == 77
        # turbo reads the curve at the step of its progress: one interval of 10 over the span 0..40
        assert state["schedule"].asked == (20 if mode == "taming" else 10.0)
    s = BudgetedStrategy(budget=50, refine_start_iter=0, refine_stop_iter=50, refine_every=10)
    assert s.target_count(state, 20) == 50  # never above the budget, whatever the schedule says


def test_clone_and_split_each_add_one_gaussian_and_fill_the_allowance_exactly():
    params, opts = scene(40, log_scale=-3.0)
    with torch.no_grad():
        params["scales"][:20] = 0.0  # large: split; the other 20 are small: cloned
    s = BudgetedStrategy(budget=100, refine_start_iter=0, refine_stop_iter=101, refine_every=10, grow_grad2d=1e-4)
    state = s.initialize_state(scene_scale=1.0)  # last refinement at 100: the curve spans steps 0..100
    torch.manual_seed(0)
    for step in range(11):
        fake_step(s, params, opts, state, step)
    # 40 candidates, allowance count(10) − 40 = ⌊60 · 0.19⌋ = 11: exactly 11 chosen, each adding one
    assert len(params["means"]) == state["schedule"].count(10) == 51
    halves = (params["scales"].detach() - math.log(1 / 1.6)).abs().max(dim=-1).values < 1e-6
    n_split = int(halves.sum()) // 2  # a split leaves two halves at log(scale / 1.6)
    assert n_split >= 1 and int(halves.sum()) % 2 == 0
    assert 40 - n_split + 2 * n_split + (11 - n_split) == 51  # the rest of the allowance went to clones


def test_growth_samples_by_score_when_the_allowance_is_smaller():
    params, opts = scene(2)
    s = BudgetedStrategy(budget=3, refine_start_iter=0, refine_stop_iter=10, refine_every=10, grow_grad2d=0.0)
    state = s.initialize_state()
    fake_step(s, params, opts, state, 0)
    with torch.no_grad():
        params["opacities"][0] = 10.0  # Gaussian 0 scores far higher (opacity prior)
    state["grad2d"][:] = torch.tensor([1.0, 1.0])
    state["count"][:] = 1.0
    torch.manual_seed(0)
    picked = 0
    for _ in range(50):
        p2 = torch.nn.ParameterDict({k: v.detach().clone() for k, v in params.items()})
        o2 = {k: torch.optim.Adam([p], lr=1e-3) for k, p in p2.items()}
        st = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in state.items()}
        s.score_weights = {"opacity": 1.0}
        s._grow(p2, o2, st, step=10)
        assert len(p2["means"]) == 3
        picked += int((p2["opacities"] == 10.0).sum() == 2)  # Gaussian 0 was split (it is large) into two
    # scores: σ(10) ≈ 1 and σ(0) = 0.5 over their lower median 0.5 → 2 : 1, so p(Gaussian 0) = 2/3
    assert 25 <= picked <= 42


def test_prune_moves_optimizer_moments_with_their_gaussians():
    params, opts = scene(6, opacity=0.5)
    s = BudgetedStrategy(budget=10, refine_start_iter=0, refine_stop_iter=100, prune_opa=0.1)
    state = s.initialize_state()
    fake_step(s, params, opts, state, 0)
    with torch.no_grad():
        params["opacities"][[1, 4]] = -10.0  # σ ≈ 0: pruned
        for name, p in params.items():
            opts[name].state[p]["exp_avg"].copy_(torch.arange(6.0).view(-1, *[1] * (p.dim() - 1)).expand_as(p))
    assert s._prune(params, opts, state, step=1) == 2
    assert len(params["means"]) == 4
    for name, p in params.items():
        assert opts[name].state[p]["exp_avg"].reshape(4, -1)[:, 0].tolist() == [0.0, 2.0, 3.0, 5.0]


def test_our_opacity_reset_fires_at_reset_every():
    params, opts = scene(10, opacity=0.9)
    s = BudgetedStrategy(budget=10, refine_start_iter=1000, refine_stop_iter=2000, reset_every=5, prune_opa=0.01)
    state = s.initialize_state()
    for step in range(5):
        fake_step(s, params, opts, state, step)
    assert torch.sigmoid(params["opacities"]).min() > 0.5
    fake_step(s, params, opts, state, 5)
    assert torch.sigmoid(params["opacities"]).max() <= 0.02 + 1e-6
    assert opts["opacities"].state[params["opacities"]]["exp_avg"].abs().max() == 0


def test_turbo_grows_faster_on_a_loss_plateau():
    def grown(losses):
        params, opts = scene(20)
        s = BudgetedStrategy(budget=500, refine_start_iter=0, refine_stop_iter=200, refine_every=10, mode="turbo",
                             grow_grad2d=1e-4)
        state = s.initialize_state()
        for step, loss in enumerate(losses):
            fake_step(s, params, opts, state, step, loss=loss)
        return len(params["means"])

    plateau = grown([1.0] * 61)
    falling = grown([1.0 * 0.9 ** i for i in range(61)])
    assert plateau > falling


def test_budget_below_the_initial_count_is_an_error_until_pruned_by_score():
    params, opts = scene(8)
    with torch.no_grad():
        params["opacities"][:] = torch.linspace(-3, 3, 8)  # Gaussian 7 the most opaque
        params["scales"][:] = -3.0
    s = BudgetedStrategy(budget=5, refine_start_iter=0, refine_stop_iter=100)
    state = s.initialize_state()
    info = {"means2d": torch.zeros(1, 8, 2, requires_grad=True)}
    with pytest.raises(ValueError, match="above the budget 5"):
        s.step_pre_backward(params, opts, state, 0, info)
    kept_before = params["opacities"].detach().clone()
    assert prune_to_budget(params, opts, state, 5, s) == 3
    assert torch.equal(params["opacities"].detach(), kept_before[3:])  # the 5 most opaque remain, in order
    s.step_pre_backward(params, opts, state, 0, {"means2d": torch.zeros(1, 5, 2, requires_grad=True)})


def test_scores_are_median_normalised_weighted_sums():
    assert median_normalized(torch.tensor([0.0, 2.0, 4.0, 8.0])).tolist() == [0.0, 0.5, 1.0, 2.0]
    s = importance({"grad": torch.tensor([1.0, 3.0]), "opacity": torch.tensor([2.0, 2.0])},
                   {"grad": 2.0, "opacity": 1.0, "loss": 5.0}, eps=0.0)
    assert s.tolist() == [2.0 * 1.0 + 1.0, 2.0 * 3.0 + 1.0]  # median of [1, 3] is 1 (lower median)
    with pytest.raises(ValueError, match="NaN"):
        importance({"grad": torch.tensor([float("nan")])}, {"grad": 1.0})


@pytest.mark.parametrize("kwargs, match", [
    (dict(budget=0), "budget"), (dict(prune_fraction=1.0), "prune_fraction"), (dict(mode="fast"), "mode"),
    (dict(score_weights={"sharpness": 1.0}), "unknown score prior"), (dict(refine_start_iter=5, refine_stop_iter=5),
                                                                       "refine_start_iter"),
])
def test_bad_configuration_is_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BudgetedStrategy(**kwargs)


def test_check_sanity_refuses_nan_and_multi_group_optimizers():
    params, opts = scene(4)
    s = BudgetedStrategy(budget=10)
    with torch.no_grad():
        params["means"][0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        s.check_sanity(params, opts)
    params, opts = scene(4)
    opts["means"] = torch.optim.Adam([{"params": [params["means"]]}, {"params": [torch.nn.Parameter(torch.ones(1))]}])
    with pytest.raises(ValueError, match="param groups"):
        s.check_sanity(params, opts)
    params, opts = scene(4)
    del opts["colors"]
    with pytest.raises(ValueError, match="same keys"):
        s.check_sanity(params, opts)
