"""Layer-wise allocators of issue 17 (OWL, ECoFLaP, knapsack, softmax, mirror descent, the
searches): exact small cases, the budget and floor contract, bad input."""
import itertools

import pytest
import torch
from torch import nn

from sparsity_core.allocators import (ECoFLaP, GlobalRank, Knapsack, MirrorDescent, OWL, RandomSearch, Search, Softmax,
                                      multiple_choice_knapsack)
from sparsity_core.allocators.budget import Budget, kept_count
from sparsity_core.allocators.knapsack import InfeasibleBudget
from sparsity_core.allocators.mirror import project_capped_simplex
from sparsity_core.allocators.ratios import fit_ratios, spans
from sparsity_core.observe import observe
from sparsity_core.oneshot import one_shot_prune
from sparsity_core.registry import ALLOCATORS
from sparsity_core.targets import Target

NEW = ("owl", "ecoflap", "knapsack", "softmax", "mirror_descent", "search", "random_search")


def weight_targets(shapes=((8, 6), (4, 10), (12, 3), (5, 5)), seed=0, params=None):
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i, shape in enumerate(shapes):
        p = nn.Parameter(torch.randn(shape, generator=gen))
        out.append(Target(f"t{i}", param=p, params_per_unit=None if params is None else params[i]))
    return out


def abs_scores(targets):
    return {t.name: t.param.detach().abs().reshape(-1) for t in targets}


def quadratic_probe(targets):
    """A loss whose gradient is large on the first target and small on the others."""
    ref = {t.name: t.param.detach().clone() + 0.5 for t in targets}
    weight = {t.name: 10.0 if i == 0 else 0.1 for i, t in enumerate(targets)}
    return lambda: sum(weight[t.name] * float(((t.param - ref[t.name]) ** 2).sum()) for t in targets)


def pruned_energy(targets, scores):
    """An evaluation: the squared scores the masks prune (lower is better)."""
    def evaluate(masks):
        return sum(float((scores[t.name].reshape(-1)[~masks[t.name].reshape(-1)] ** 2).sum()) for t in targets)
    return evaluate


def build(name, targets, scores, **kwargs):
    if name == "ecoflap":
        kwargs.setdefault("probe", quadratic_probe(targets))
    if name in ("search", "random_search"):
        kwargs.setdefault("evaluate", pruned_energy(targets, scores))
    if name == "search":
        kwargs.setdefault("max_evals", 30)
    if name == "random_search":
        kwargs.setdefault("evaluations", 30)
    return ALLOCATORS.build(name, **kwargs)


# -- the contract, for every allocator -------------------------------------------------------
def test_registry_builds_each_by_name():
    for name in NEW + ("rocket", "tyr", "unipruning"):
        assert name in ALLOCATORS
        ALLOCATORS.build(name)  # defaults only: no probe needed to build


@pytest.mark.parametrize("name", NEW)
@pytest.mark.parametrize("sparsity", [0.3, 0.6, 0.85])
def test_kept_units_equal_the_budget_under_the_rounding_rule(name, sparsity):
    ts = weight_targets()
    scores = abs_scores(ts)
    keep = build(name, ts, scores, min_keep_units=0).allocate(ts, scores, Budget(sparsity=sparsity))
    total = sum(t.num_units for t in ts)
    assert sum(keep.values()) == kept_count(total, sparsity)
    assert all(0 <= keep[t.name] <= t.num_units for t in ts)


@pytest.mark.parametrize("name", NEW)
def test_budget_in_params_is_a_ceiling_spent_to_the_last_unit(name):
    ts = weight_targets(params=[1.0, 3.0, 2.0, 5.0])
    scores = abs_scores(ts)
    budget = Budget(sparsity=0.6, measure="params")
    keep = build(name, ts, scores, min_keep_units=0).allocate(ts, scores, budget)
    dense = sum(t.params_per_unit * t.num_units for t in ts)
    spent = sum(t.params_per_unit * keep[t.name] for t in ts)
    assert spent <= 0.4 * dense + 1e-9
    assert spent > 0.4 * dense - max(t.params_per_unit for t in ts)


@pytest.mark.parametrize("name", NEW)
def test_floors_held(name):
    ts = weight_targets()
    scores = abs_scores(ts)
    scores["t0"] = scores["t0"] * 1e-6  # every allocator would like to empty t0
    alloc = build(name, ts, scores, min_keep_fraction=0.3)
    keep = alloc.allocate(ts, scores, Budget(sparsity=0.65))
    for t in ts:
        assert keep[t.name] >= alloc.floor(t) == -(-3 * t.num_units // 10)
    assert sum(keep.values()) == kept_count(sum(t.num_units for t in ts), 0.65)


@pytest.mark.parametrize("name", NEW)
def test_budget_below_the_floors_names_both_numbers(name):
    ts = weight_targets()
    scores = abs_scores(ts)
    alloc = build(name, ts, scores, min_keep_fraction=0.5)
    floors = sum(alloc.floor(t) for t in ts)  # 24 + 20 + 18 + 13 of 149 units
    with pytest.raises(ValueError, match=rf"floors keep {floors} units but the budget allows 14\.9"):
        alloc.allocate(ts, scores, Budget(sparsity=0.9))


def test_invalid_hyper_parameters_name_the_argument():
    cases = [(OWL, {"lam": 1.5}, "lam"), (OWL, {"m": 0}, "m"), (OWL, {"block_pattern": "("}, "block_pattern"),
             (ECoFLaP, {"samples": 0}, "samples"), (ECoFLaP, {"eps": -1.0}, "eps"),
             (ECoFLaP, {"importance": "hessian"}, "importance"), (ECoFLaP, {"probe": 3}, "probe"),
             (Knapsack, {"levels": [0.5, 1.0]}, "level"), (Knapsack, {"resolution": 0}, "resolution"),
             (Knapsack, {"errors": 3}, "errors"), (Softmax, {"temperature": 0.0}, "temperature"),
             (Softmax, {"importance": "norm"}, "importance"), (MirrorDescent, {"steps": -1}, "steps"),
             (MirrorDescent, {"lr": 0.0}, "lr"), (MirrorDescent, {"normalize": 1}, "normalize"),
             (Search, {"step": 0.0}, "step"), (Search, {"step": 0.1, "min_step": 0.2}, "min_step"),
             (Search, {"max_evals": 0}, "max_evals"), (RandomSearch, {"evaluations": 0}, "evaluations"),
             (RandomSearch, {"spread": 2.0}, "spread"), (Search, {"min_keep_fraction": 2.0}, "min_keep_fraction")]
    for cls, kwargs, word in cases:
        with pytest.raises(ValueError, match=word):
            cls(**kwargs)


# -- knapsack ---------------------------------------------------------------------------------
def brute_force(costs, errors, capacity):
    best = None
    for combo in itertools.product(*[range(len(c)) for c in costs]):
        cost = sum(costs[g][i] for g, i in enumerate(combo))
        err = sum(errors[g][i] for g, i in enumerate(combo))
        if cost <= capacity and (best is None or err < best[0]):
            best = (err, combo)
    return best


@pytest.mark.parametrize("seed", range(12))
def test_knapsack_dp_equals_brute_force_on_4_layers_x_3_levels(seed):
    gen = torch.Generator().manual_seed(seed)
    costs = torch.randint(1, 30, (4, 3), generator=gen).tolist()
    errors = torch.rand(4, 3, generator=gen).mul(10).tolist()
    for capacity in (sum(min(c) for c in costs), 25, 40, 55, 80, 200):
        expected = brute_force(costs, errors, capacity)
        if expected is None:
            with pytest.raises(InfeasibleBudget):
                multiple_choice_knapsack(costs, errors, capacity)
            continue
        picks, total = multiple_choice_knapsack(costs, errors, capacity)
        assert total == pytest.approx(expected[0])
        assert sum(costs[g][i] for g, i in enumerate(picks)) <= capacity


def test_knapsack_dp_with_rounded_costs_stays_feasible():
    gen = torch.Generator().manual_seed(1)
    costs = (torch.rand(6, 5, generator=gen) * 10).tolist()
    errors = torch.rand(6, 5, generator=gen).tolist()
    picks, total = multiple_choice_knapsack(costs, errors, 25.0, resolution=50)
    assert sum(costs[g][i] for g, i in enumerate(picks)) <= 25.0
    assert total >= brute_force(costs, errors, 25.0)[0] - 1e-12


def test_knapsack_allocator_picks_the_brute_force_levels():
    ts = weight_targets(shapes=((10,), (10,), (10,), (10,)))
    scores = abs_scores(ts)
    levels = (0.2, 0.5, 0.8)
    gen = torch.Generator().manual_seed(3)
    errors = {t.name: sorted(torch.rand(3, generator=gen).tolist()) for t in ts}  # more sparsity, more error
    alloc = Knapsack(levels=levels, errors=errors, fill=False, min_keep_units=0)
    keep = alloc.allocate(ts, scores, Budget(sparsity=0.5))  # 20 units of 40
    costs = [[kept_count(10, s) for s in levels] for _ in ts]
    err, combo = brute_force(costs, [errors[t.name] for t in ts], 20)
    assert [keep[t.name] for t in ts] == [costs[g][i] for g, i in enumerate(combo)]
    assert alloc.last_error == pytest.approx(err)


def test_knapsack_without_a_fitting_combination_is_infeasible():
    ts = weight_targets()
    scores = abs_scores(ts)
    with pytest.raises(InfeasibleBudget, match=r"cheapest levels keep 74 but the budget allows 29\.8"):
        Knapsack(levels=(0.0, 0.5), min_keep_units=0).allocate(ts, scores, Budget(sparsity=0.8))


def test_knapsack_nan_reconstruction_error_is_an_error_and_the_model_is_untouched():
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    targets = [Target(f"{i}.weight", param=model[i].weight, module_name=str(i)) for i in (0, 1)]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    errors = {"0.weight": [0.0, float("nan")], "1.weight": [0.0, 1.0]}
    with pytest.raises(ValueError, match="NaN"):
        one_shot_prune(model, targets, None, 0.5, allocator=Knapsack(levels=(0.0, 0.5), errors=errors))
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_knapsack_gram_error_is_the_exact_output_reconstruction_error():
    torch.manual_seed(0)
    layer = nn.Linear(5, 3, bias=False)
    target = Target("weight", param=layer.weight, module_name="")
    x = torch.randn(64, 5) @ torch.randn(5, 5)  # correlated features
    acts = observe(layer, [target], [x], gram=True)
    scores = abs_scores([target])["weight"]
    alloc = Knapsack(activations=acts)
    errs = alloc.level_errors(target, [15, 8, 0], None, scores)
    order = torch.argsort(scores, descending=True)
    for k, e in zip([15, 8, 0], errs):
        w = layer.weight.detach().double().reshape(-1).clone()
        keep = torch.zeros(15, dtype=torch.bool)
        keep[order[:k]] = True
        w_hat = torch.where(keep, w, torch.zeros_like(w)).reshape(3, 5)
        exact = ((x.double() @ (layer.weight.detach().double() - w_hat).T) ** 2).sum()
        assert e == pytest.approx(float(exact), rel=1e-9, abs=1e-9)


# -- softmax ----------------------------------------------------------------------------------
def test_softmax_ratios_sum_to_the_budget_and_follow_the_softmax():
    ts = weight_targets(params=[1.0, 3.0, 2.0, 5.0])
    scores = abs_scores(ts)
    importance = {"t0": 0.0, "t1": 1.0, "t2": -1.0, "t3": 0.5}
    alloc = Softmax(temperature=2.0, importance=importance, min_keep_units=0)
    budget = Budget(sparsity=0.7, measure="params")
    floors = {t.name: 0 for t in ts}
    sp = spans(ts, "params", floors)
    keep_cost = 0.3 * float(sp.full.sum())
    r = alloc.ratios(ts, scores, keep_cost, "params", floors)
    assert float((sp.full * r).sum()) == pytest.approx(keep_cost, rel=1e-12)
    p = torch.softmax(torch.tensor([0.0, 1.0, -1.0, 0.5], dtype=torch.float64) / 2.0, 0)
    assert (r / p).tolist() == pytest.approx([float(r[0] / p[0])] * 4)  # nothing clipped: r ∝ p
    keep = alloc.allocate(ts, scores, budget)
    spent = sum(t.params_per_unit * keep[t.name] for t in ts)
    assert keep_cost - 5.0 < spent <= keep_cost


def test_softmax_redistributes_what_clipping_at_one_leaves():
    ts = weight_targets()
    scores = abs_scores(ts)
    alloc = Softmax(temperature=0.1, importance={"t0": 3.0, "t1": 0.0, "t2": 0.1, "t3": 0.0}, min_keep_units=0)
    floors = {t.name: 0 for t in ts}
    sp = spans(ts, "units", floors)
    keep_cost = 0.5 * float(sp.full.sum())
    r = alloc.ratios(ts, scores, keep_cost, "units", floors)
    assert float(r[0]) == 1.0  # t0 dense; its excess went to the others
    assert float((sp.full * r).sum()) == pytest.approx(keep_cost)
    keep = alloc.allocate(ts, scores, Budget(sparsity=0.5))
    assert keep["t0"] == 48 and sum(keep.values()) == kept_count(149, 0.5)


# -- mirror descent ---------------------------------------------------------------------------
def test_mirror_descent_iterates_stay_on_the_simplex():
    ts = weight_targets(shapes=((20, 10), (5, 8), (30, 2), (7, 7), (3, 3)))
    scores = abs_scores(ts)
    scores["t1"] = scores["t1"] * 50  # an important layer pulls budget
    alloc = MirrorDescent(steps=40, lr=1.0, normalize=False, min_keep_fraction=0.1)
    keep = alloc.allocate(ts, scores, Budget(sparsity=0.7))
    assert len(alloc.iterates) == 41
    floors = {t.name: alloc.floor(t) for t in ts}
    sp = spans(ts, "units", floors)
    extra = 0.3 * float(sp.full.sum()) - float(sp.floor.sum())
    caps = (sp.full - sp.floor) / extra
    for a in alloc.iterates:
        assert float(a.sum()) == pytest.approx(1.0, abs=1e-12)
        assert bool((a >= 0).all()) and bool((a <= caps + 1e-12).all())
    assert alloc.iterates[-1][1] > 3 * alloc.iterates[0][1]  # the important layer pulled budget
    # the fixed point equalises the marginal saliencies: global ranking of the scores
    ranked = GlobalRank(min_keep_fraction=0.1).allocate(ts, scores, Budget(sparsity=0.7))
    assert all(abs(keep[n] - ranked[n]) <= 1 for n in keep)


def test_capped_simplex_projection():
    a = project_capped_simplex(torch.tensor([4.0, 1.0, 1.0], dtype=torch.float64),
                               torch.tensor([0.5, 1.0, 1.0], dtype=torch.float64))
    assert a.tolist() == pytest.approx([0.5, 0.25, 0.25])


def test_mirror_descent_weights_untouched():
    ts = weight_targets()
    before = [t.param.detach().clone() for t in ts]
    MirrorDescent().allocate(ts, abs_scores(ts), Budget(sparsity=0.5))
    assert all(torch.equal(t.param.detach(), b) for t, b in zip(ts, before))


# -- OWL --------------------------------------------------------------------------------------
def test_owl_ratios_average_to_the_target_in_the_budget_quantity():
    ts = weight_targets(shapes=((20, 10), (5, 8), (30, 2), (7, 7)), params=[1.0, 4.0, 2.0, 3.0])
    scores = abs_scores(ts)
    scores["t1"] = scores["t1"].clone()
    scores["t1"][:4] *= 40  # outliers in t1
    scores["t3"] = torch.ones_like(scores["t3"])  # none in t3
    owl = OWL(lam=0.1, m=3.0, min_keep_units=0)
    for measure in ("units", "params"):
        floors = {t.name: 0 for t in ts}
        sp = spans(ts, measure, floors)
        keep_cost = 0.4 * float(sp.full.sum())
        s = owl.sparsities(ts, scores, keep_cost, measure, floors)
        weighted = sum(float(sp.full[i]) * s[t.name] for i, t in enumerate(ts)) / float(sp.full.sum())
        assert weighted == pytest.approx(0.6, abs=1e-12)
        values = [s[t.name] for t in ts]
        assert max(values) - min(values) == pytest.approx(0.2)  # 2λ between most and fewest outliers
        assert s["t1"] == min(values) and s["t3"] == max(values)


def test_owl_from_activations_equals_owl_from_wanda_scores():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4))
    targets = [Target(f"{i}.weight", param=model[i].weight, module_name=str(i)) for i in (0, 2)]
    batches = [torch.randn(16, 6) * torch.tensor([1, 1, 30, 1, 1, 1.0])]
    acts = observe(model, targets, batches)
    from sparsity_core.criteria import ScoreContext, Wanda
    scores = {t.name: Wanda().score(t, ScoreContext(activations=acts)) for t in targets}
    owl_scores, owl_acts = OWL(m=2.0), OWL(m=2.0, activations=acts)
    assert owl_scores.outlier_ratios(targets, scores).tolist() == pytest.approx(
        owl_acts.outlier_ratios(targets, {t.name: torch.ones(t.num_units) for t in targets}).tolist())


def test_owl_by_name_in_one_shot_prune_with_wanda():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4))
    targets = [Target(f"{i}.weight", param=model[i].weight, module_name=str(i)) for i in (0, 2)]
    result = one_shot_prune(model, targets, [torch.randn(16, 6)], 0.5, criterion="wanda", allocator="owl")
    assert sum(int(result.masks[t.name].sum()) for t in targets) == kept_count(80, 0.5)


def test_owl_blocks_share_one_ratio():
    ts = [Target(f"blocks.{b}.{n}", param=nn.Parameter(torch.ones(4, 5))) for b in (0, 1) for n in ("a", "b")]
    scores = {t.name: torch.ones(20) for t in ts}
    scores["blocks.0.a"] = scores["blocks.0.a"].clone()
    scores["blocks.0.a"][0] = 100.0
    owl = OWL(m=3.0, block_pattern=r"blocks\.(\d+)\.")
    d = owl.outlier_ratios(ts, scores).tolist()
    assert d == pytest.approx([1 / 40, 1 / 40, 0.0, 0.0])


# -- ECoFLaP ----------------------------------------------------------------------------------
def test_ecoflap_restores_weights_and_keeps_more_where_the_loss_is_sensitive():
    ts = weight_targets(shapes=((6, 6), (6, 6), (6, 6)))
    before = [t.param.detach().clone() for t in ts]
    alloc = ECoFLaP(probe=quadratic_probe(ts), samples=200, max_deviation=None, min_keep_units=0)
    keep = alloc.allocate(ts, abs_scores(ts), Budget(sparsity=0.5))
    assert all(torch.equal(t.param.detach(), b) for t, b in zip(ts, before))
    assert keep["t0"] > keep["t1"] and keep["t0"] > keep["t2"]
    assert sum(keep.values()) == kept_count(108, 0.5)


def test_ecoflap_caps_layer_sparsity_at_target_plus_max_deviation():
    ts = weight_targets(shapes=((6, 6), (6, 6), (6, 6)))
    keep = ECoFLaP(probe=quadratic_probe(ts), max_deviation=0.1, min_keep_units=0).allocate(
        ts, abs_scores(ts), Budget(sparsity=0.5))
    assert min(keep.values()) >= 36 * 0.4 - 1e-9


def test_ecoflap_needs_a_probe_and_restores_weights_when_it_fails():
    ts = weight_targets()
    with pytest.raises(ValueError, match="needs probe="):
        ECoFLaP().allocate(ts, abs_scores(ts), Budget(sparsity=0.5))
    before = [t.param.detach().clone() for t in ts]
    with pytest.raises(ValueError, match="nan"):
        ECoFLaP(probe=lambda: float("nan")).allocate(ts, abs_scores(ts), Budget(sparsity=0.5))
    assert all(torch.equal(t.param.detach(), b) for t, b in zip(ts, before))


# -- the searches -----------------------------------------------------------------------------
def test_search_improves_on_uniform_and_beats_random_search_at_equal_evaluations():
    ts = weight_targets(shapes=((20, 10), (5, 8), (30, 2), (7, 7)))
    scores = abs_scores(ts)
    scores["t1"] = scores["t1"] * 10
    evaluate = pruned_energy(ts, scores)
    search = Search(evaluate=evaluate, max_evals=40, min_keep_units=0)
    keep = search.allocate(ts, scores, Budget(sparsity=0.7))
    assert search.evaluations <= 40 and search.history == sorted(search.history, reverse=True)
    assert search.history[-1] < search.history[0]  # better than the uniform start
    rand = RandomSearch(evaluate=evaluate, evaluations=search.evaluations, min_keep_units=0)
    rand.allocate(ts, scores, Budget(sparsity=0.7))
    assert rand.evaluations <= search.evaluations
    assert search.history[-1] <= rand.history[-1]
    masks = {t.name: t.layout.select(scores[t.name], keep[t.name], t.shape) for t in ts}
    assert evaluate(masks) == search.history[-1]


def test_search_with_a_probe_masks_weights_temporarily():
    ts = weight_targets()
    before = [t.param.detach().clone() for t in ts]
    seen = []
    probe = lambda: seen.append(sum(int((t.param == 0).sum()) for t in ts)) or float(seen[-1])  # noqa: E731
    Search(probe=probe, max_evals=5, min_keep_units=0).allocate(ts, abs_scores(ts), Budget(sparsity=0.5))
    assert seen and all(z == 149 - kept_count(149, 0.5) for z in seen)
    assert all(torch.equal(t.param.detach(), b) for t, b in zip(ts, before))


def test_searches_need_an_evaluation():
    ts = weight_targets()
    for cls in (Search, RandomSearch):
        with pytest.raises(ValueError, match="needs evaluate="):
            cls().allocate(ts, abs_scores(ts), Budget(sparsity=0.5))


def test_fit_ratios_shift_and_scale_meet_the_budget():
    ts = weight_targets()
    sp = spans(ts, "units", {t.name: 2 for t in ts})
    for mode, base in (("shift", torch.tensor([0.3, -0.2, 0.0, 0.9])), ("scale", torch.tensor([1.0, 5.0, 0.2, 2.0]))):
        for keep_cost in (10.0, 50.0, 100.0, 140.0):
            r = fit_ratios(base, sp, keep_cost, mode)
            assert float((sp.full * r).sum()) == pytest.approx(keep_cost)
            assert bool((r >= sp.lo - 1e-12).all()) and bool((r <= 1 + 1e-12).all())


@pytest.mark.parametrize("name", ["owl", "knapsack", "softmax", "mirror_descent"])
def test_controller_builds_and_runs_the_allocator_by_name(name):
    from sparsity_core import SparsityController

    model = nn.Sequential(nn.Linear(8, 6), nn.Linear(6, 4))
    targets = [Target(f"{i}.weight", param=model[i].weight, module_name=str(i)) for i in (0, 1)]
    controller = SparsityController(targets, 0.5, criterion="magnitude", allocator=name, update_every=1)
    assert controller.update(1, force=True)
    assert sum(int(m.sum()) for m in controller.masks.values()) == kept_count(72, 0.5)


def test_loss_probe_and_masked_evaluator_restore_the_model():
    from sparsity_core.allocators import loss_probe, masked_evaluator

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3))
    model.train()
    target = Target("0.weight", param=model[0].weight, module_name="0")
    batches = [(torch.randn(8, 4), torch.randint(0, 3, (8,)))]
    probe = loss_probe(model, batches, lambda m, b: nn.functional.cross_entropy(m(b[0]), b[1]))
    before = model[0].weight.detach().clone()
    dense = probe()
    assert model.training
    pruned = masked_evaluator([target], probe)({"0.weight": torch.zeros(3, 4, dtype=torch.bool)})
    assert torch.equal(model[0].weight.detach(), before) and probe() == dense
    logits = model[0].bias.detach().expand(8, 3)  # every weight zeroed: the bias alone
    assert pruned == pytest.approx(float(nn.functional.cross_entropy(logits, batches[0][1])))
    with pytest.raises(ValueError, match="re-iterable"):
        loss_probe(model, iter(batches), lambda m, b: 0.0)
