"""GrowthToBudget: Taming 3DGS's concave count curve, exact at its boundary steps."""
import pytest

from sparsity_core.schedules import GrowthToBudget


def test_count_is_exact_at_the_boundaries_and_follows_2t_minus_t_squared():
    g = GrowthToBudget(start_step=100, end_step=500, initial_count=1000, budget=5000)
    assert g.count(0) == g.count(100) == 1000
    assert g.count(500) == g.count(10_000) == 5000
    assert g.count(200) == 1000 + int(4000 * (2 * 0.25 - 0.25 ** 2))  # 2750
    assert g.count(200) == 2750 and g.count(300) == 4000  # t = 1/2: 3/4 of the growth
    assert g.value(300) == 0.75 and g.value(100) == 0.0 and g.value(500) == 1.0
    counts = [g.count(s) for s in range(0, 600, 10)]
    assert counts == sorted(counts) and max(counts) == 5000  # monotone, never above the budget
    steps = [g.count(s + 100) - g.count(s) for s in (100, 200, 300, 400)]
    assert steps == sorted(steps, reverse=True)  # concave: growth slows toward the budget


def test_a_budget_below_the_initial_count_shrinks_along_the_same_curve():
    g = GrowthToBudget(start_step=0, end_step=10, initial_count=100, budget=60)
    assert g.count(0) == 100 and g.count(10) == 60 and g.count(5) == 100 - 30


@pytest.mark.parametrize("kwargs", [dict(budget=0), dict(initial_count=-1, budget=5), dict(budget=5, end_step=0),
                                    dict(budget=2.5)])
def test_bad_values_are_refused(kwargs):
    with pytest.raises(ValueError):
        GrowthToBudget(**{"start_step": 0, "end_step": 10, **kwargs})
