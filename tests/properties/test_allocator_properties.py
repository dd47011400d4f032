"""Properties of every allocator registered in the core (``sparsity_core/allocators/``), over
random targets (element, channel and N:M layouts; unit costs in units, params and MACs),
scores (with and without ties), budgets, floors and seeds:

- kept counts are integers in ``[0, n_t]``, at least each target's floor, and exactly the
  layout's count for N:M targets;
- the budget is met with the rounding each allocator documents: the suite's rule
  ``⌊(1 − s)·total⌋`` in units and a ceiling spent to within one unit's cost in params /
  MACs for the allocators that spend it exactly; ``round(d·n_t)`` per target for
  ``uniform``; at most half a unit per target off for ``erk``;
- a budget the floors cannot meet raises ``ValueError`` (and only then);
- ``round_to`` gives multiples of it (or the whole target), floors still held;
- the result is deterministic: the same inputs give the same counts, on the same instance
  and on a fresh one;
- ``grouped``: every group meets its own sub-budget.
"""
from __future__ import annotations

import math
from typing import Dict, List

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st
from torch import nn

import sparsity_core.allocators  # noqa: F401  (registers the core allocators)
from sparsity_core.allocators import Allocator, Budget, Grouped
from sparsity_core.allocators.budget import kept_count, unit_cost
from sparsity_core.layouts import NM, Channels, Elements
from sparsity_core.registry import ALLOCATORS
from sparsity_core.targets import Target

from . import prop_settings

MEASURES = ("units", "params", "macs")

# One name per allocator class of the core (aliases such as rocket/knapsack build the same class).
_CORE = {}
for _name in ALLOCATORS.names():
    _cls = ALLOCATORS.get(_name)
    if getattr(_cls, "__module__", "").startswith("sparsity_core.allocators."):
        _CORE.setdefault(_cls, _name)
CORE_NAMES = sorted(_CORE.values())
FLAT = [n for n in CORE_NAMES if n != "grouped"]  # grouped needs a budget tree: tested on its own

#: how each allocator meets its budget (see the module docstring)
ROUNDING = {"uniform": "per_target_round", "erk": "half_unit_per_target"}
EXACT = [n for n in FLAT if n not in ROUNDING]


def test_every_core_allocator_is_covered():
    """A new core allocator must get a rounding class here (and a builder below if needed)."""
    assert set(CORE_NAMES) == set(EXACT) | set(ROUNDING) | {"grouped"}
    for name in ALLOCATORS.names():
        cls = ALLOCATORS.get(name)
        if getattr(cls, "__module__", "").startswith("sparsity_core.allocators."):
            assert _CORE[cls] in CORE_NAMES


# -- building problems -------------------------------------------------------------------------
@st.composite
def target_specs(draw, allow_fixed: bool = True):
    kinds = ["element1d", "element2d", "channel"] + (["nm"] if allow_fixed else [])
    kind = draw(st.sampled_from(kinds))
    nm = None
    if kind == "element1d":
        shape = (draw(st.integers(1, 40)),)
    elif kind == "nm":
        m = draw(st.sampled_from([4, 8]))
        shape = (draw(st.integers(1, 5)), m * draw(st.integers(1, 3)))
        nm = (draw(st.integers(1, m - 1)), m)
    else:
        shape = (draw(st.integers(1, 10)), draw(st.integers(1, 8)))
    return {"kind": kind, "shape": shape, "nm": nm,
            "params_per_unit": draw(st.one_of(st.none(), st.integers(1, 6).map(float))),
            "macs_per_unit": float(draw(st.integers(1, 60)))}


@st.composite
def problems(draw, allow_fixed: bool = True, max_targets: int = 4):
    specs = draw(st.lists(target_specs(allow_fixed), min_size=1, max_size=max_targets))
    return {
        "specs": specs,
        "measure": draw(st.sampled_from(MEASURES)),
        # (sparsities in (0, 1e-9] have their own test below: the tolerances disagree there)
        "sparsity": draw(st.one_of(st.sampled_from([0.0, 0.5, 0.9]),
                                   st.floats(0.0, 0.97).filter(lambda s: s == 0.0 or s > 2e-9))),
        # an absolute budget (kept cost in the measure) instead of the sparsity, now and then
        "keep": draw(st.one_of(st.none(), st.none(), st.integers(0, 300))),
        "min_keep_fraction": draw(st.sampled_from([0.0, 0.0, 0.1, 0.3])),
        "min_keep_units": draw(st.integers(0, 2)),
        "ties": draw(st.booleans()),
        "seed": draw(st.integers(0, 2 ** 16)),
    }


def make_targets(problem) -> List[Target]:
    gen = torch.Generator().manual_seed(problem["seed"])
    out = []
    for i, spec in enumerate(problem["specs"]):
        layout = {"element1d": Elements(), "element2d": Elements(), "channel": Channels()}.get(spec["kind"])
        if layout is None:
            layout = NM(*spec["nm"])
        param = nn.Parameter(torch.randn(spec["shape"], generator=gen))
        out.append(Target(f"t{i}", layout=layout, param=param, params_per_unit=spec["params_per_unit"],
                          macs_per_unit=spec["macs_per_unit"]))
    return out


def make_scores(targets, problem) -> Dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(problem["seed"] + 1)
    scores = {}
    for t in targets:
        if problem["ties"]:  # few distinct values: ties everywhere, zeros included
            scores[t.name] = torch.randint(0, 3, (t.num_units,), generator=gen).double()
        else:
            scores[t.name] = t.layout.reduce_sum(t.param.detach().abs()).double()
    return scores


def pruned_energy(targets, scores):
    """An evaluation for the searches: the squared scores the masks prune (lower is better)."""
    def evaluate(masks):
        return sum(float((scores[name].reshape(-1)[~mask.reshape(-1)] ** 2).sum()) for name, mask in masks.items())
    return evaluate


def quadratic_probe(targets):
    ref = {t.name: t.param.detach().clone() + 0.5 for t in targets}
    weight = {t.name: 1.0 + 3.0 * i for i, t in enumerate(targets)}
    return lambda: sum(weight[t.name] * float(((t.param - ref[t.name]) ** 2).sum()) for t in targets)


def build(name: str, targets, scores, **floors) -> Allocator:
    kwargs = dict(floors)
    if name == "ecoflap":
        kwargs.update(probe=quadratic_probe(targets), samples=2)
    elif name == "search":
        kwargs.update(evaluate=pruned_energy(targets, scores), max_evals=12)
    elif name == "random_search":
        kwargs.update(evaluate=pruned_energy(targets, scores), evaluations=8)
    elif name == "mirror_descent":
        kwargs.update(steps=25)
    return ALLOCATORS.build(name, **kwargs)


def floors_of(problem) -> dict:
    return {"min_keep_fraction": problem["min_keep_fraction"], "min_keep_units": problem["min_keep_units"]}


def costs(targets, measure):
    return {t.name: unit_cost(t, measure) for t in targets}


def make_budget(problem) -> Budget:
    if problem["keep"] is not None:
        return Budget(keep=float(problem["keep"]), measure=problem["measure"])
    return Budget(sparsity=problem["sparsity"], measure=problem["measure"])


def is_feasible(alloc: Allocator, targets, budget: Budget) -> bool:
    """Whether the fixed (N:M) counts plus the floors fit the budget (exactly, or clearly on
    one side of the allocators' tolerance; a case inside the tolerance is left out)."""
    c = costs(targets, budget.measure)
    total = sum(c[t.name] * t.num_units for t in targets)
    keep_cost = budget.keep_cost(total)
    need = 0.0
    for t in targets:
        fixed = t.layout.fixed_keep(t.shape)
        need += c[t.name] * (fixed if fixed is not None else alloc.floor(t))
    slack = keep_cost - need
    if slack == 0:  # the floors spend the budget exactly: feasible
        return True
    assume(abs(slack) > 1e-6 * max(1.0, keep_cost))
    return slack > 0


def check_contract(alloc, targets, keep, budget):
    """Bounds, floors and N:M counts (what every allocator promises)."""
    assert set(keep) == {t.name for t in targets}
    for t in targets:
        k = keep[t.name]
        assert isinstance(k, int), (t.name, type(k))
        assert 0 <= k <= t.num_units, (t.describe(), k)
        fixed = t.layout.fixed_keep(t.shape)
        if fixed is not None:
            assert k == fixed, (t.describe(), k, fixed)
        else:
            assert k >= alloc.floor(t), (t.describe(), k, alloc.floor(t))


def check_budget(name, targets, keep, budget, problem):
    measure = budget.measure
    c = costs(targets, measure)
    total = sum(c[t.name] * t.num_units for t in targets)
    keep_cost = budget.keep_cost(total)
    spent = sum(c[t.name] * keep[t.name] for t in targets)
    tol = 1e-6 * max(1.0, keep_cost)
    free = [t for t in targets if t.layout.fixed_keep(t.shape) is None]
    fixed_cost = sum(c[t.name] * t.layout.fixed_keep(t.shape) for t in targets if t not in free)
    # what can be kept at most: N:M targets keep their fixed count whatever the budget
    capacity = fixed_cost + sum(c[t.name] * t.num_units for t in free)
    reachable = min(keep_cost, capacity)
    rule = ROUNDING.get(name, "exact")
    if rule == "exact":
        if measure == "units":
            rule_count = (kept_count(int(total), budget.sparsity) if budget.sparsity is not None
                          else math.floor(keep_cost + 1e-9))
            assert spent == min(rule_count, capacity), (spent, keep_cost)
        else:
            assert spent <= keep_cost + tol, (spent, keep_cost)
            open_ = [t for t in free if keep[t.name] < t.num_units]
            if open_:  # what is left unspent is less than one unit of some target that is not full
                assert spent > keep_cost - max(c[t.name] for t in open_) - tol, (spent, keep_cost, keep)
    elif rule == "half_unit_per_target":
        assert abs(spent - reachable) <= sum(c[t.name] for t in free) / 2 + tol, (spent, keep_cost, keep)
    elif rule == "per_target_round":
        free_total = sum(c[t.name] * t.num_units for t in free)
        density = (keep_cost - fixed_cost) / free_total if free_total else 1.0
        for t in free:
            floor = min(t.num_units, max(problem["min_keep_units"],
                                          math.ceil(problem["min_keep_fraction"] * t.num_units - 1e-9)))
            assert keep[t.name] == min(t.num_units, max(floor, int(round(density * t.num_units)))), t.describe()


# -- the properties ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", FLAT)
@prop_settings(70)
@given(problem=problems())
def test_counts_bounds_floors_budget_and_determinism(name, problem):
    targets = make_targets(problem)
    scores = make_scores(targets, problem)
    budget = make_budget(problem)
    alloc = build(name, targets, scores, **floors_of(problem))
    if budget.keep is not None and name == "greedy_knapsack":  # documented: it needs a sparsity budget
        with pytest.raises(ValueError, match="needs a sparsity budget"):
            alloc.allocate(targets, scores, budget)
        return
    if not is_feasible(alloc, targets, budget):
        with pytest.raises(ValueError):
            alloc.allocate(targets, scores, budget)
        return
    keep = alloc.allocate(targets, scores, budget)
    check_contract(alloc, targets, keep, budget)
    check_budget(name, targets, keep, budget, problem)
    # deterministic: the same instance again, and a fresh one
    assert alloc.allocate(targets, scores, budget) == keep
    assert build(name, targets, scores, **floors_of(problem)).allocate(targets, scores, budget) == keep


@pytest.mark.parametrize("name", [n for n in FLAT if n != "greedy_knapsack"])  # no round_to there
@prop_settings(25)
@given(problem=problems(), round_to=st.integers(2, 8), min_keep_units=st.integers(0, 12),
       min_keep_fraction=st.sampled_from([0.0, 0.3, 0.5]))
def test_round_to_gives_multiples_and_keeps_the_floors(name, problem, round_to, min_keep_units, min_keep_fraction):
    targets = make_targets(problem)
    scores = make_scores(targets, problem)
    budget = make_budget(problem)
    alloc = build(name, targets, scores, round_to=round_to, min_keep_units=min_keep_units,
                  min_keep_fraction=min_keep_fraction)
    assume(is_feasible(alloc, targets, budget))
    keep = alloc.allocate(targets, scores, budget)
    check_contract(alloc, targets, keep, budget)
    for t in targets:
        if t.layout.fixed_keep(t.shape) is None and t.num_units >= round_to:
            assert keep[t.name] % round_to == 0 or keep[t.name] == t.num_units, (t.describe(), keep[t.name])


@prop_settings(25)
@given(problem=problems(allow_fixed=False, max_targets=5), groups=st.lists(st.floats(0.0, 0.95), min_size=2,
                                                                           max_size=2),
       inner=st.sampled_from(["global", "lamp", "softmax", "owl"]))
def test_grouped_meets_every_sub_budget(problem, groups, inner):
    targets = make_targets(problem)
    scores = make_scores(targets, problem)
    names = {"even": r"t[02468]$", "odd": r"t[13579]$"}
    budget = Budget(sparsity=problem["sparsity"], measure="units", groups={"even": groups[0], "odd": groups[1]})
    alloc = Grouped(names, inner=ALLOCATORS.build(inner, min_keep_units=0))
    keep = alloc.allocate(targets, scores, budget)
    assert alloc.allocate(targets, scores, budget) == keep
    for g, s in zip(("even", "odd"), groups):
        members = [t for t in targets if int(t.name[1:]) % 2 == (0 if g == "even" else 1)]
        if not members:
            continue
        assert sum(keep[t.name] for t in members) == kept_count(sum(t.num_units for t in members), s), g
        for t in members:
            assert 0 <= keep[t.name] <= t.num_units


# The suite's rounding rule ``kept_count`` and the allocators absorb float error with the same
# tolerance (relative to the kept amount), so they agree even at sparsities below it.
@pytest.mark.parametrize("name", ["global", "softmax", "knapsack"])
@prop_settings(10)
@given(n=st.integers(10, 5000), sparsity=st.floats(2e-10, 9e-10))
def test_tiny_sparsities_follow_the_rounding_rule(name, n, sparsity):
    target = Target("a", param=nn.Parameter(torch.linspace(0.1, 1.0, n)))
    scores = {"a": target.param.detach().abs()}
    keep = build(name, [target], scores, min_keep_units=0).allocate([target], scores, Budget(sparsity=sparsity))
    assert keep["a"] == kept_count(n, sparsity)
