"""Properties of the core schedules (``sparsity_core/schedules/``), over random start/end
steps, initial/final sparsities, rounds, stages and budgets:

- every value is a sparsity in [0, 1);
- monotone: non-decreasing in the step when the schedule goes up (initial ≤ final), and
  non-increasing when a ramp goes down;
- the value is the initial one at and before ``start_step`` and the final one at and after
  ``end_step`` (exactly: the schedules promise these values);
- ``is_update_step`` always holds at ``end_step`` (the final sparsity is reached exactly);
- ``GrowthToBudget.count`` is ``initial_count`` up to the start, ``budget`` from the end,
  monotone in between and never beyond the two;
- ``BlockAllocation``'s group values are monotone, in [0, 1), and reach their allocation.
"""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sparsity_core.registry import SCHEDULES
from sparsity_core.schedules import (BlockAllocation, Constant, Cosine, Cubic, Exponential, GrowthToBudget, Iterative,
                                     Linear, StepwiseNM, one_shot)

from . import prop_settings

sparsities = st.one_of(st.sampled_from([0.0, 0.1, 0.3, 0.5, 0.9, 0.99]), st.floats(0.0, 0.995))
starts = st.integers(0, 500)
spans = st.integers(1, 400)
RAMPS = {"linear": Linear, "cubic": Cubic, "cosine": Cosine, "exponential": Exponential}


@st.composite
def schedules(draw, name):
    """``(schedule, initial, final)`` for the registered schedule ``name``."""
    start = draw(starts)
    if name in RAMPS:
        lo, hi = draw(sparsities), draw(sparsities)
        s = RAMPS[name](start_step=start, end_step=start + draw(spans), initial=lo, final_sparsity=hi)
        return s, lo, hi
    if name == "constant":
        sp = draw(sparsities)
        return Constant(start_step=start, end_step=start + draw(st.integers(0, 50)), sparsity=sp), 0.0, sp
    if name == "oneshot":
        sp = draw(sparsities)
        return one_shot(sp, step=start), 0.0, sp
    if name == "iterative":
        sp = draw(sparsities)
        s = Iterative(start_step=start, final_sparsity=sp, rounds=draw(st.integers(1, 8)),
                      steps_per_round=draw(st.integers(1, 60)))
        return s, 0.0, sp
    if name == "stepwise_nm":
        m = draw(st.sampled_from([4, 8, 16]))
        stages = sorted(draw(st.sets(st.integers(1, m - 1), min_size=1, max_size=4)), reverse=True)
        s = StepwiseNM(start_step=start, m=m, n_stages=tuple(stages), steps_per_stage=draw(st.integers(1, 60)))
        return s, 0.0, 1.0 - stages[-1] / m
    if name == "growth_to_budget":
        s = GrowthToBudget(start_step=start, end_step=start + draw(spans), initial_count=draw(st.integers(0, 500)),
                           budget=draw(st.integers(1, 500)))
        return s, 0.0, 1.0
    raise AssertionError(f"no strategy for schedule {name!r}: add one (and its properties)")


NAMES = SCHEDULES.names()


def probe_steps(s, extra):
    """Steps around the boundaries plus random ones, sorted."""
    key = {0, max(0, s.start_step - 1), s.start_step, s.start_step + 1, max(0, s.end_step - 1), s.end_step,
           s.end_step + 1, s.end_step + 1000}
    return sorted(key | {min(x, s.end_step + 50) for x in extra})


@pytest.mark.parametrize("name", NAMES)
@prop_settings(60)
@given(data=st.data(), extra=st.lists(st.integers(0, 1500), max_size=40))
def test_values_in_range_and_monotone(name, data, extra):
    s, initial, final = data.draw(schedules(name))
    steps = probe_steps(s, extra)
    values = [s.value(t) for t in steps]
    for t, v in zip(steps, values):
        assert 0.0 <= v <= 1.0, (t, v)
        if name != "growth_to_budget":  # a growth fraction may be 1; a sparsity never is
            assert v < 1.0, (t, v)
    pairs = list(zip(values, values[1:]))
    if final >= initial:
        assert all(b >= a for a, b in pairs), list(zip(steps, values))
    else:
        assert all(b <= a for a, b in pairs), list(zip(steps, values))
    # between start and end the value lies between initial and final
    lo, hi = min(initial, final), max(initial, final)
    for t, v in zip(steps, values):
        assert lo - 1e-12 <= v <= hi + 1e-12, (t, v, initial, final)


BOUNDARY_CASES = [(name, side) for name in NAMES for side in ("initial", "final")]


def check_boundary(name, side, data, before, after):
    s, initial, final = data.draw(schedules(name))
    if side == "initial":
        for t in {s.start_step, max(0, s.start_step - before)}:
            if name in RAMPS or t < s.start_step:  # at start_step a constant/iterative/stepwise is already on
                assert s.value(t) == initial, (t, s.value(t), initial)
    else:
        for t in (s.end_step, s.end_step + after):
            assert s.value(t) == final, (t, s.value(t), final)
        assert s.final == final


@pytest.mark.parametrize("name,side", BOUNDARY_CASES)
@prop_settings(40)
@given(data=st.data(), before=st.integers(0, 500), after=st.integers(0, 10_000))
def test_exactly_initial_before_start_and_final_after_end(name, side, data, before, after):
    check_boundary(name, side, data, before, after)


@pytest.mark.parametrize("name", NAMES)
@prop_settings(30)
@given(data=st.data(), every=st.integers(1, 100))
def test_update_at_end_step(name, data, every):
    s, _, _ = data.draw(schedules(name))
    assert s.is_update_step(s.end_step, every)
    if name != "stepwise_nm":  # stepwise N:M re-selects within its last stage on purpose
        assert not s.is_update_step(s.end_step + 1 + data.draw(st.integers(0, 100)), every)


@prop_settings(80)
@given(start=starts, span=spans, initial=st.integers(0, 2000), budget=st.integers(1, 2000),
       extra=st.lists(st.integers(0, 1500), max_size=40))
def test_growth_count_is_monotone_between_the_initial_count_and_the_budget(start, span, initial, budget, extra):
    s = GrowthToBudget(start_step=start, end_step=start + span, initial_count=initial, budget=budget)
    steps = probe_steps(s, extra)
    counts = [s.count(t) for t in steps]
    lo, hi = min(initial, budget), max(initial, budget)
    for t, c in zip(steps, counts):
        assert isinstance(c, int) and lo <= c <= hi, (t, c)
        if t <= start:
            assert c == initial, (t, c)
        if t >= start + span:
            assert c == budget, (t, c)
    pairs = list(zip(counts, counts[1:]))
    assert all(b >= a for a, b in pairs) if budget >= initial else all(b <= a for a, b in pairs)


@prop_settings(40)
@given(data=st.data(), extra=st.lists(st.integers(0, 1500), max_size=30))
def test_block_allocation_groups_are_monotone_and_reach_their_allocation(data, extra):
    base, initial, final = data.draw(schedules(data.draw(st.sampled_from(["linear", "cubic", "cosine", "iterative"]))))
    raw = data.draw(st.lists(st.floats(0.0, 1.0), min_size=1, max_size=5))
    # allocations whose mean is the base's final sparsity, each in [0, 1)
    total = sum(raw)
    if total == 0 or final == 0:
        alloc = [final] * len(raw)
    else:
        alloc = [min(0.999, r / total * final * len(raw)) for r in raw]
    mean = sum(alloc) / len(alloc)
    if abs(mean - final) > 1e-9:  # clipping moved the mean: fall back to equal shares
        alloc = [final] * len(raw)
    s = BlockAllocation(base=base, allocation={f"g{i}": a for i, a in enumerate(alloc)}, tolerance=1e-6)
    steps = probe_steps(s, extra)
    rows = [s.group_values(t) for t in steps]
    for g in rows[0]:
        seq = [r[g] for r in rows]
        assert all(0.0 <= v < 1.0 for v in seq), seq
        if final >= initial:  # the groups follow the base schedule's direction
            assert all(b >= a for a, b in zip(seq, seq[1:])), seq
        else:
            assert all(b <= a for a, b in zip(seq, seq[1:])), seq
    last = s.group_values(s.end_step + 10)
    for i, a in enumerate(alloc):
        assert last[f"g{i}"] == pytest.approx(min(a, 1 - 1e-9), abs=1e-9)
