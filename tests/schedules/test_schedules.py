import pickle

import pytest

from sparsity_core.schedules import Constant, Cosine, Cubic, Exponential, Iterative, Linear, one_shot
from sparsity_core.registry import SCHEDULES


def test_cubic_boundaries_and_midpoint():
    s = Cubic(start_step=10, end_step=110, initial=0.0, final_sparsity=0.8)
    assert s.value(0) == 0.0 and s.value(10) == 0.0
    assert s.value(60) == pytest.approx(0.8 + (0.0 - 0.8) * 0.5 ** 3)  # 0.7
    assert s.value(110) == 0.8 and s.value(10_000) == 0.8


def test_linear_cosine_exponential_boundaries():
    lin = Linear(start_step=0, end_step=4, initial=0.2, final_sparsity=0.6)
    assert [lin.value(i) for i in range(6)] == pytest.approx([0.2, 0.3, 0.4, 0.5, 0.6, 0.6])
    cos = Cosine(start_step=0, end_step=2, final_sparsity=0.5)
    assert [cos.value(i) for i in range(3)] == pytest.approx([0.0, 0.25, 0.5])
    exp = Exponential(start_step=0, end_step=2, initial=0.0, final_sparsity=0.75)
    assert [exp.value(i) for i in range(3)] == pytest.approx([0.0, 0.5, 0.75])  # density 1, 1/2, 1/4


def test_update_steps_include_end():
    s = Cubic(start_step=0, end_step=250, final_sparsity=0.9)
    steps = [t for t in range(0, 400) if s.is_update_step(t, 100)]
    assert steps == [0, 100, 200, 250]


def test_constant_and_one_shot():
    c = Constant(sparsity=0.5, start_step=3)
    assert [c.value(i) for i in (0, 2, 3, 100)] == [0.0, 0.0, 0.5, 0.5]
    o = one_shot(0.7, step=5)
    assert [t for t in range(20) if o.is_update_step(t, 1)] == [5]
    assert SCHEDULES.build("oneshot", sparsity=0.7, step=5) == o


def test_iterative_rounds():
    it = Iterative(final_sparsity=0.75, rounds=2, steps_per_round=10, rewind_step=2)
    assert it.end_step == 20
    assert [it.value(t) for t in (0, 9, 10, 19, 20, 99)] == pytest.approx([0, 0, 0.5, 0.5, 0.75, 0.75])
    assert [t for t in range(40) if it.is_update_step(t, 3)] == [10, 20]


@pytest.mark.parametrize("kwargs,msg", [
    (dict(final_sparsity=1.0, end_step=10), r"\[0, 1\)"),
    (dict(final_sparsity=-0.1, end_step=10), r"\[0, 1\)"),
    (dict(final_sparsity=0.5, start_step=5, end_step=5), "end_step > start_step"),
    (dict(final_sparsity=0.5, start_step=10, end_step=5), "must be >= start_step"),
    (dict(final_sparsity=0.5, start_step=-1, end_step=5), "int >= 0"),
])
def test_ramp_validation(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        Cubic(**kwargs)


def test_iterative_validation():
    with pytest.raises(ValueError, match="rounds"):
        Iterative(rounds=0)
    with pytest.raises(ValueError, match="rewind_step"):
        Iterative(rounds=2, steps_per_round=10, rewind_step=10)


def test_schedules_pickle():
    for s in (Cubic(end_step=10), Constant(sparsity=0.3), Iterative()):
        assert pickle.loads(pickle.dumps(s)) == s


def test_schedules_take_keywords_only():
    # Constant(0.5) would otherwise silently mean start_step=0.5
    with pytest.raises(TypeError):
        Constant(0.5)
